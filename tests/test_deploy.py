"""The deploy files against the project: Heroku's `app.json` (with `requirements.txt` and
`.python-version`, which its Python buildpack reads), the `Dockerfile` and `compose.yaml`.

No Docker engine runs here or in CI, so the image is never built: the Dockerfile is linted by hadolint
and compose.yaml validated against the Compose Specification's schema, both as the README shows the
commands; the rest is checked against the code (the Procfile, the settings, the CLI, the routes), and
the Dockerfile's install is run as far as it goes without an engine (a wheel built from exactly what
`.dockerignore` lets into the build). Heroku Redis's TLS, with its self-signed certificate, is tried on
a real redis-server serving TLS with one.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from redis import Redis
from rq import Worker

from bridge.cli import main as bridge_cli_group
from bridge.settings import Settings
from support import ROOT
from support.processes import SECRET_KEY, Process, free_port, run_bridge, wait_until

VENV_BIN = Path(sys.executable).parent
HADOLINT = "hadolint Dockerfile"
COMPOSE_SCHEMA = "check-jsonschema --builtin-schema vendor.compose-spec compose.yaml"
SETTINGS = set(Settings.variables().values())


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
    return {name.strip(): command.strip() for name, _, command in (line.partition(":") for line in lines if line.strip())}


def app_json() -> dict:
    return json.loads((ROOT / "app.json").read_text(encoding="utf-8"))


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined: (INSTRUCTION, arguments)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def run_as_written(command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """A README command, its program taken from the venv bin/test installs the project's test extras into."""
    program, *args = shlex.split(command)
    return subprocess.run([str(VENV_BIN / program), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# -- the linters, as the README shows them -----------------------------------------------------------

def test_hadolint_passes_the_dockerfile_and_fails_a_worse_one(tmp_path):
    done = run_as_written(HADOLINT)
    assert done.returncode == 0, done.stdout + done.stderr
    worse = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("pip install --no-cache-dir", "pip install")
    (tmp_path / "Dockerfile").write_text(worse.replace("USER 10001", "USER root"), encoding="utf-8")
    done = run_as_written(HADOLINT, cwd=tmp_path)
    assert done.returncode == 1 and "DL3042" in done.stdout and "DL3002" in done.stdout  # pip's cache, root user


def test_compose_file_is_valid_by_the_compose_specification_and_a_broken_one_is_not(tmp_path):
    done = run_as_written(COMPOSE_SCHEMA)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = (ROOT / "compose.yaml").read_text(encoding="utf-8").replace("service_completed_successfully", "service_done")
    (tmp_path / "compose.yaml").write_text(broken, encoding="utf-8")
    assert run_as_written(COMPOSE_SCHEMA, cwd=tmp_path).returncode == 1


# -- Heroku --------------------------------------------------------------------------------------------

def test_app_json_runs_the_procfile_on_the_addons_the_settings_read():
    app = app_json()
    assert app["buildpacks"] == [{"url": "heroku/python"}]
    assert set(app["formation"]) == set(procfile()) - {"release"}  # the release phase is the Procfile's
    assert procfile()["release"] == "bridge db upgrade"
    attached = {addon["plan"].split(":")[0]: f"{addon['as']}_URL" for addon in app["addons"]}
    assert attached == {"heroku-postgresql": "DATABASE_URL", "heroku-redis": "REDIS_URL"}
    assert set(attached.values()) <= SETTINGS
    for name, spec in app["env"].items():
        assert name in SETTINGS, f"app.json sets {name}, which bridge/settings.py does not read"
        assert spec["description"]
        assert "value" in spec or "generator" in spec or spec.get("required") is False, name
    assert app["env"]["SECRET_KEY"] == {**app["env"]["SECRET_KEY"], "generator": "secret"}  # required with Redis
    assert app["env"]["REDIS_TLS_VERIFY"]["value"] == "false"  # Heroku Redis: TLS, self-signed certificate
    for operator_token in ("ADMIN_TOKEN", "METRICS_TOKEN"):  # generated (64 hex digits): dashboard and /metrics on
        assert app["env"][operator_token]["generator"] == "secret"
    # What app.json sets must be a value the settings accept, with the add-ons' URLs in Heroku's forms.
    values = {name: spec["value"] for name, spec in app["env"].items() if "value" in spec}
    generated = {name: "f" * 64 for name, spec in app["env"].items() if spec.get("generator") == "secret"}
    settings = Settings.from_env({**values, **generated, "DATABASE_URL": "postgres://u:p@db.example.com:5432/d",
                                  "REDIS_URL": "rediss://:p@redis.example.com:6380"})
    assert settings.job_runner == "rq" and settings.redis_url.endswith("?ssl_cert_reqs=none")
    assert settings.admin_token and settings.metrics_token


def test_the_python_buildpack_finds_the_project_and_its_python():
    """The buildpack needs requirements.txt (pyproject.toml alone is not detected) and reads the version
    from .python-version; the project is the one requirement, so pyproject.toml stays the one list."""
    requirements = [line for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
                    if line.strip() and not line.startswith("#")]
    assert requirements == ["."]
    version = (ROOT / ".python-version").read_text(encoding="utf-8").strip()
    required = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    assert required == ">=3.11" and tuple(map(int, version.split("."))) >= (3, 11)
    assert ("FROM", f"python:{version}-slim") in dockerfile()  # the image runs the same Python


@pytest.mark.slow
def test_heroku_redis_tls_with_a_self_signed_certificate(tmp_path):
    """A redis-server serving only TLS, with a self-signed certificate as Heroku Redis does: `bridge
    worker` refuses it, naming the failed check, until REDIS_TLS_VERIFY=false; then it runs on it."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    server = Process(["redis-server", "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
                      "--tls-key-file", str(key), "--tls-auth-clients", "no", "--requirepass", "s3cret",
                      "--save", "", "--appendonly", "no", "--dir", str(tmp_path)], {}, tmp_path / "redis.log")
    url = f"rediss://:s3cret@127.0.0.1:{port}/0"
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}", "REDIS_URL": url, "SECRET_KEY": SECRET_KEY}
    try:
        insecure = Redis.from_url(url, ssl_cert_reqs=None)
        wait_until(lambda: _pings(insecure), 10, "redis-server to serve TLS")
        assert run_bridge(env, "db", "upgrade").returncode == 0
        refused = run_bridge(env, "worker", timeout=30)
        assert refused.returncode == 1 and "certificate verify failed" in refused.stderr, refused.stderr
        worker = Process([str(VENV_BIN / "bridge"), "worker"], {**env, "REDIS_TLS_VERIFY": "false"}, tmp_path / "worker.log")
        try:
            wait_until(lambda: Worker.all(connection=insecure) or worker.popen.poll() is not None, 30,
                       "bridge worker to register on the TLS Redis")
            assert worker.popen.poll() is None, worker.output()
        finally:
            worker.stop()
        insecure.close()
    finally:
        server.stop()


def _pings(client: Redis) -> bool:
    try:
        return client.ping()
    except Exception:  # noqa: BLE001 - not serving yet
        return False


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis.example.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# -- the container image and compose.yaml --------------------------------------------------------------

def test_the_dockerfile_runs_bridge_web_as_a_user_on_port_and_probes_liveness():
    instructions = dockerfile()
    kinds = [kind for kind, _ in instructions]
    assert json.loads(dict(instructions)["CMD"]) == ["bridge", "web"]
    assert kinds.index("USER") > kinds.index("RUN")  # installs as root, then runs as the user
    assert dict(instructions)["USER"] not in ("0", "root")
    env = dict(re.findall(r"(\w+)=(\S+)", dict(instructions)["ENV"]))
    assert set(env) - {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_DISABLE_PIP_VERSION_CHECK"} <= SETTINGS
    assert dict(instructions)["EXPOSE"] == env["PORT"]
    healthcheck = dict(instructions)["HEALTHCHECK"]
    assert "/livez" in healthcheck and "os.environ.get('PORT'" in healthcheck
    from bridge.web import create_app
    assert "/livez" in {rule.rule for rule in create_app({"TESTING": True}).url_map.iter_rules()}


def test_compose_runs_the_procfile_after_its_services_are_ready():
    services = compose()["services"]
    bridge = {name: service for name, service in services.items() if service.get("image") == "bridge:local"}
    assert {name: " ".join(service["command"]) for name, service in bridge.items()} == procfile()
    assert {name for name, command in procfile().items()} == set(bridge)
    commands = set(bridge_cli_group.commands)
    assert {service["command"][1] for service in bridge.values()} <= commands
    assert bridge["release"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("web", "worker"):
        assert bridge[name]["depends_on"] == {"release": {"condition": "service_completed_successfully"},
                                              "redis": {"condition": "service_healthy"}}
    for service in bridge.values():
        assert set(service["environment"]) <= SETTINGS
        assert service["environment"]["DATABASE_URL"].split("@")[1].split(":")[0] == "postgres"
        assert service["environment"]["REDIS_URL"].split("//")[1].split(":")[0] == "redis"
    port = bridge["web"]["environment"]["PORT"]
    assert bridge["web"]["ports"] == [f"{port}:{port}"]
    assert all("healthcheck" in services[name] for name in ("postgres", "redis"))
    assert bridge["worker"]["healthcheck"] == {"disable": True}  # the image's probe is the web's


@pytest.mark.slow
def test_what_dockerignore_lets_in_builds_the_whole_package(tmp_path):
    """The Dockerfile's `pip install /src`, as far as it goes without an engine: the build context
    `.dockerignore` admits builds the same wheel as the checkout."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"  # everything is left out, then what is named is let in
    context = tmp_path / "context"
    for rule in rules[1:]:
        if rule.startswith("!"):
            source = ROOT / rule[1:].rstrip("/")
            target = context / source.relative_to(ROOT)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    checkout = tmp_path / "checkout"  # a copy: a build leaves build/ and *.egg-info behind
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "*.egg-info"))
    wheels = []
    for source in (context, checkout):
        out = tmp_path / f"dist-{len(wheels)}"
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                               "--wheel-dir", str(out), str(source)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        wheels.append(sorted(zipfile.ZipFile(next(out.glob("*.whl"))).namelist()))
    assert wheels[0] == wheels[1]
