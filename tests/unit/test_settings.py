"""Settings: development generates its secret once; production refuses placeholders and embedded services."""

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.activity_names import CREATE_STRIPE_CUSTOMER, CREATE_TENANT, DELETE_STRIPE_CUSTOMER
from models.errors import CIRCUIT_OPEN
from models.retry_policies import SagaRetryPolicies
from prognet.settings import Settings

EXTERNAL = dict(
    database_url="postgresql+asyncpg://app@db/prognet",
    redis_url="redis://cache:6379/0",
    temporal_address="temporal:7233",
    smtp_host="smtp.internal",
    stripe_secret_key="sk_live_" + "k" * 40,
    stripe_webhook_secret="whsec_" + "w" * 32,
    payload_keys="k1:" + "A" * 43 + "=",
)


def test_development_generates_the_secret_into_the_data_dir_once(tmp_path: Path):
    first = Settings(data_dir=tmp_path, secret_key=None)
    key = first.derived_key("jwt")
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0  # readable by the owner only
    assert Settings(data_dir=tmp_path, secret_key=None).derived_key("jwt") == key  # reused, not regenerated
    assert first.derived_key("tokens") != key  # one key per purpose


@pytest.mark.parametrize("secret", [None, "changethis", "short-but-random-1234"])
def test_production_refuses_a_missing_placeholder_or_short_secret(secret):
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(environment="production", secret_key=secret, **EXTERNAL)


def test_production_refuses_embedded_services():
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings(environment="production", secret_key="x" * 48, **{**EXTERNAL, "database_url": None})


def test_production_refuses_the_sandbox_stripe_key():
    with pytest.raises(ValidationError, match="STRIPE_SECRET_KEY"):
        Settings(environment="production", secret_key="x" * 48, **{**EXTERNAL, "stripe_secret_key": None})


def test_production_refuses_the_public_dev_webhook_secret():
    with pytest.raises(ValidationError, match="STRIPE_WEBHOOK_SECRET"):
        Settings(environment="production", secret_key="x" * 48, **{**EXTERNAL, "stripe_webhook_secret": None})


def test_production_with_real_secret_and_services_starts():
    settings = Settings(environment="production", secret_key="x" * 48, **EXTERNAL)
    assert settings.temporal_target == "temporal:7233"


def test_env_names_match_the_readme(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PROGNET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REGISTRATION_VERIFICATION_TIMEOUT", "PT2H")
    monkeypatch.setenv("SMTP_PORT", "2525")
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert settings.registration_verification_timeout.total_seconds() == 7200
    assert settings.smtp_port == 2525


def test_trusted_proxies_are_cidrs():
    settings = Settings(environment="development", trusted_proxies="10.0.0.0/8, fd00::/8")
    assert [str(n) for n in settings.trusted_proxy_networks] == ["10.0.0.0/8", "fd00::/8"]
    assert Settings(environment="development").trusted_proxy_networks == []
    with pytest.raises(ValueError, match="not-an-address"):
        Settings(environment="development", trusted_proxies="10.0.0.0/8,not-an-address")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("secret_key", "change-me-" + "x" * 40),
        ("stripe_secret_key", "sk_test_change-me"),
        ("stripe_webhook_secret", "whsec_change-me"),
        ("smtp_password", "change-me"),
        ("alertmanager_token", "change-me-alertmanager-token"),
    ],
)
def test_production_refuses_the_example_env_placeholders(name, value):
    values = {**EXTERNAL, "secret_key": "x" * 48, name: value}
    with pytest.raises(ValidationError, match=f"{name.upper()} is still the placeholder"):
        Settings(environment="production", **values)


def test_an_empty_smtp_login_in_an_env_file_means_none(monkeypatch):
    monkeypatch.setenv("SMTP_USERNAME", "")
    monkeypatch.setenv("SMTP_PASSWORD", "")
    settings = Settings()
    assert settings.smtp_username is None and settings.smtp_password is None


def test_retry_settings_default_to_the_policies_a_saga_without_them_uses(monkeypatch):
    for name in ("RETRY_DATABASE", "RETRY_STRIPE", "RETRY_COMPENSATION_DATABASE", "RETRY_COMPENSATION_STRIPE"):
        monkeypatch.delenv(name, raising=False)
    recorded = SagaRetryPolicies.model_validate(Settings().saga_retry_policies())
    assert recorded == SagaRetryPolicies()
    assert recorded.for_step(CREATE_STRIPE_CUSTOMER).maximum_attempts == 0  # a step waits for its service
    assert recorded.for_compensation(DELETE_STRIPE_CUSTOMER).maximum_attempts == 5


def test_a_retry_setting_is_json_or_one_field_per_variable(monkeypatch):
    monkeypatch.setenv("RETRY_STRIPE", '{"initial_interval_seconds": 2, "maximum_attempts": 10}')
    monkeypatch.setenv("RETRY_COMPENSATION_STRIPE__MAXIMUM_ATTEMPTS", "3")
    policies = SagaRetryPolicies.model_validate(Settings().saga_retry_policies())
    step = policies.for_step(CREATE_STRIPE_CUSTOMER)
    assert (step.initial_interval, step.maximum_attempts) == (timedelta(seconds=2), 10)
    assert step.non_retryable_error_types == [CIRCUIT_OPEN]  # an open circuit is waited out, not retried
    undo = policies.for_compensation(DELETE_STRIPE_CUSTOMER)
    # the other fields keep the compensation's defaults, not a forward step's
    assert (undo.maximum_attempts, undo.maximum_interval) == (3, timedelta(seconds=30))
    assert policies.for_step(CREATE_TENANT).maximum_attempts == 0  # the database's setting is untouched


@pytest.mark.parametrize(
    "value", ['{"maximum_attempts": -1}', '{"backoff_coefficient": 0.5}', '{"initial_interval_seconds": 90}']
)
def test_a_retry_setting_temporal_would_refuse_is_refused_at_start(monkeypatch, value):
    monkeypatch.setenv("RETRY_DATABASE", value)
    with pytest.raises(ValidationError, match="retry_database"):
        Settings()
