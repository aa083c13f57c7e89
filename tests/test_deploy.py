"""The Heroku deploy files against the project: `app.json`, with `requirements.txt` and
`.python-version`, which Heroku's Python buildpack reads. Heroku Redis's TLS, with its self-signed
certificate, is tried on a real redis-server serving TLS with one.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
from redis import Redis
from rq import Worker

from bridge.settings import Settings
from support import ROOT
from support.processes import SECRET_KEY, Process, free_port, run_bridge, wait_until

VENV_BIN = Path(sys.executable).parent
SETTINGS = set(Settings.variables().values())


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
    return {name.strip(): command.strip() for name, _, command in (line.partition(":") for line in lines if line.strip())}


def app_json() -> dict:
    return json.loads((ROOT / "app.json").read_text(encoding="utf-8"))


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
    # What app.json sets must be a value the settings accept, with the add-ons' URLs in Heroku's forms.
    values = {name: spec["value"] for name, spec in app["env"].items() if "value" in spec}
    settings = Settings.from_env({**values, "SECRET_KEY": "x" * 64, "DATABASE_URL": "postgres://u:p@db.example.com:5432/d",
                                  "REDIS_URL": "rediss://:p@redis.example.com:6380"})
    assert settings.job_runner == "rq" and settings.redis_url.endswith("?ssl_cert_reqs=none")


def test_the_python_buildpack_finds_the_project_and_its_python():
    """The buildpack needs requirements.txt (pyproject.toml alone is not detected) and reads the version
    from .python-version; the project is the one requirement, so pyproject.toml stays the one list."""
    requirements = [line for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
                    if line.strip() and not line.startswith("#")]
    assert requirements == ["."]
    version = (ROOT / ".python-version").read_text(encoding="utf-8").strip()
    required = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    assert required == ">=3.11" and tuple(map(int, version.split("."))) >= (3, 11)


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
