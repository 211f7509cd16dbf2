"""The payload codec's keys: rotation keeps old histories readable, an unknown key fails by name, and the
settings refuse what would lose or leak data."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from prognet.payload_codec import ENCODING, KEY_ID, EncryptionCodec, PayloadDecryptionError, converter_for
from prognet.settings import Settings
from tests.replay.record import REPLAY_CONVERTER, REPLAY_KEY, REPLAY_KEY_ID
from workers.main import ALL_WORKFLOWS

KEY_A, KEY_B = bytes(range(32)), bytes(range(32, 64))
HISTORY = Path(__file__).parents[1] / "replay" / "histories" / "registration-00000000-0000-0000-0000-000000000015.json"


def _keys(**keys: bytes) -> str:
    return ",".join(f"{key_id}:{base64.b64encode(key).decode()}" for key_id, key in keys.items())


async def test_after_a_rotation_new_payloads_use_the_new_key_and_old_ones_still_decrypt():
    before = converter_for(EncryptionCodec({"a": KEY_A}, "a"))
    old = await before.encode(["ada@example.com"])
    assert old[0].metadata["encoding"] == ENCODING and old[0].metadata[KEY_ID] == b"a"
    assert b"ada@example.com" not in old[0].data

    after = converter_for(EncryptionCodec({"b": KEY_B, "a": KEY_A}, "b"))
    assert await after.decode(old, [str]) == ["ada@example.com"]
    new = await after.encode(["ada@example.com"])
    assert new[0].metadata[KEY_ID] == b"b"
    with pytest.raises(PayloadDecryptionError, match="key id 'b'"):
        await before.decode(new, [str])


async def test_a_recorded_history_replays_after_a_new_key_became_current():
    history = WorkflowHistory.from_json(HISTORY.stem, HISTORY.read_text())
    rotated = converter_for(EncryptionCodec({"next": KEY_B, REPLAY_KEY_ID: REPLAY_KEY}, "next"))
    result = await Replayer(workflows=ALL_WORKFLOWS, data_converter=rotated).replay_workflow(history)
    assert result.replay_failure is None


async def test_a_payload_of_a_key_no_longer_configured_fails_naming_that_key():
    old = await REPLAY_CONVERTER.encode(["secret"])
    dropped = converter_for(EncryptionCodec({"next": KEY_B}, "next"))
    with pytest.raises(PayloadDecryptionError) as refused:
        await dropped.decode(old, [str])
    assert f"key id '{REPLAY_KEY_ID}'" in str(refused.value) and "PAYLOAD_KEYS has: next" in str(refused.value)

    # same id, other key material (a regenerated dev secret, a mistyped key): refused, not garbage
    impostor = converter_for(EncryptionCodec({REPLAY_KEY_ID: KEY_A}, REPLAY_KEY_ID))
    with pytest.raises(PayloadDecryptionError, match="does not decrypt"):
        await impostor.decode(old, [str])


def test_settings_parse_the_keyring_and_the_current_key(tmp_path: Path):
    current, keys = Settings(data_dir=tmp_path, payload_keys=_keys(a=KEY_A, b=KEY_B)).payload_keyring()
    assert current == "a" and keys == {"a": KEY_A, "b": KEY_B}  # the first key by default
    assert Settings(payload_keys=_keys(a=KEY_A, b=KEY_B), payload_key_id="b").payload_keyring()[0] == "b"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"payload_keys": "a:" + base64.b64encode(b"short").decode()}, "must be 32 bytes"),
        ({"payload_keys": "no-colon"}, "is not `id:base64key`"),
        ({"payload_keys": "a:%%%%"}, "not valid base64"),
        ({"payload_keys": _keys(a=KEY_A) + "," + _keys(a=KEY_B)}, "twice"),
        ({"payload_keys": _keys(a=KEY_A), "payload_key_id": "b"}, "PAYLOAD_KEY_ID 'b' is not in PAYLOAD_KEYS"),
    ],
)
def test_settings_refuse_a_bad_keyring_without_echoing_key_material(values, message):
    with pytest.raises(ValidationError, match=message) as refused:
        Settings(**values)
    assert base64.b64encode(KEY_B).decode() not in str(refused.value)
    assert "short" not in str(refused.value) and "c2hvcnQ" not in str(refused.value)


def test_development_derives_a_stable_key_from_the_secret(tmp_path: Path):
    first = Settings(data_dir=tmp_path, secret_key=None).payload_keyring()
    assert Settings(data_dir=tmp_path, secret_key=None).payload_keyring() == first  # the same key on every start
    key_id, keys = first
    assert key_id.startswith("dev-") and len(keys[key_id]) == 32
    assert Settings(secret_key="another-" + "s" * 40).payload_keyring()[0] != key_id  # the id names the key


PRODUCTION = dict(
    environment="production",
    secret_key="x" * 48,
    database_url="postgresql+asyncpg://app@db/prognet",
    redis_url="redis://cache:6379/0",
    temporal_address="temporal:7233",
    smtp_host="smtp.internal",
    stripe_secret_key="sk_live_" + "k" * 40,
    stripe_webhook_secret="whsec_" + "w" * 32,
)


def test_production_needs_explicit_keys_and_never_opens_the_codec_to_the_local_ui():
    with pytest.raises(ValidationError, match="PAYLOAD_KEYS must be set in production"):
        Settings(**PRODUCTION)
    with pytest.raises(ValidationError, match="CODEC_ALLOW_LOCAL_UI is a development setting"):
        Settings(**PRODUCTION, payload_keys=_keys(k1=KEY_A), codec_allow_local_ui=True)
    production = Settings(**PRODUCTION, payload_keys=_keys(k1=KEY_A))
    assert not production.codec_local_ui_allowed and production.codec_origins == []  # none unless configured
    assert Settings(codec_cors_origins="https://temporal.example.com/").codec_origins == [
        "https://temporal.example.com"
    ]
    assert Settings(temporal_ui_port=9999).codec_origins == ["http://127.0.0.1:9999", "http://localhost:9999"]


def test_the_dev_stack_points_the_web_ui_at_the_apis_codec(tmp_path: Path):
    from prognet_dev import EmbeddedStack, stack_settings

    settings = stack_settings(tmp_path / "data")
    stack = EmbeddedStack(settings, app=True, run_migrations=False, log=lambda name, line: None)
    assert stack.temporal is not None
    argv = stack.temporal.argv()
    assert argv[argv.index("--ui-codec-endpoint") + 1] == f"{stack.api_url}/codec"
    # the API learns the UI's port, whose origin it lets call /codec
    assert stack.service_env()["TEMPORAL_UI_PORT"] == str(settings.temporal_ui_port)
    without_api = EmbeddedStack(settings, run_migrations=False, log=lambda name, line: None)
    assert without_api.temporal is not None and "--ui-codec-endpoint" not in without_api.temporal.argv()
