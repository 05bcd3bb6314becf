"""deploy/install.sh on a fresh host, for every role, twice: the second run changes nothing.

The install writes into a temporary root (--root) but creates the service users for real (they are
the host's), so the files' owners and modes are the ones livekit-server and our services will see.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import skip_or_fail
from tests.deploy.installer import ALL_ROLES, REPO, install, read_env, snapshot
from tests.deploy.test_fetch_models import REAL_STT, REAL_TTS, StandInHub, hub, tiny  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the installer creates users: run as root")

HOST = ["--roles", ALL_ROLES, "--gpus", "2", "--workers", "3", "--loopback"]


def owner(path: Path) -> str:
    return pwd.getpwuid(path.stat().st_uid).pw_name


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_second_install_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "host-1"
    first = install(root, *HOST)
    assert "changed: " in first
    before = snapshot(root)

    second = install(root, *HOST)
    assert second.strip().splitlines()[-1].startswith("0 changed"), second
    assert snapshot(root) == before, "the second run rewrote or touched a file"
    dry = install(root, *HOST, "--dry-run")
    assert dry.strip().splitlines()[-1].startswith("0 to change"), dry

    # A hand-edited generated file is put back, and the dry run says so before.
    env_file = root / "etc/jarvis/jarvis.env"
    env_file.write_text(env_file.read_text() + "EDITED=1\n")
    os.chmod(root / "etc/livekit/keys.yaml", 0o644)
    dry = install(root, *HOST, "--dry-run")
    assert "would change: " + str(env_file) in dry and "keys.yaml (mode 0o644->0o600)" in dry
    assert "EDITED=1" in env_file.read_text(), "a dry run wrote"
    install(root, *HOST)
    assert "EDITED" not in env_file.read_text() and mode(root / "etc/livekit/keys.yaml") == 0o600


def test_secrets_are_private_to_their_service_and_shared_by_every_host(tmp_path: Path) -> None:
    first, second = tmp_path / "host-1", tmp_path / "host-2"
    install(first, *HOST)
    etc, lk = first / "etc/jarvis", first / "etc/livekit"
    # livekit-server refuses a key file others can read; the env files hold the same secret.
    assert (mode(lk / "keys.yaml"), owner(lk / "keys.yaml")) == (0o600, "livekit")
    assert (mode(etc / "jarvis.env"), owner(etc / "jarvis.env")) == (0o600, "jarvis")
    assert (mode(etc / "secrets.env"), owner(etc / "secrets.env")) == (0o600, "root")
    env = read_env(etc / "jarvis.env")
    key, secret = (lk / "keys.yaml").read_text().strip().split(": ")
    assert mode(lk / "livekit.yaml") == 0o644 and secret not in (lk / "livekit.yaml").read_text()
    assert (env["LIVEKIT_API_KEY"], env["LIVEKIT_API_SECRET"]) == (key, secret) and len(secret) >= 32

    # The next host gets the first host's secrets file: one key and secret for the whole cluster.
    install(second, "--roles", "worker,token", "--engine-hosts", "gpu-1:2,gpu-2:1", "--livekit-url",
            "ws://lk.internal:7880", "--secrets", str(etc / "secrets.env"))
    env2 = read_env(second / "etc/jarvis/jarvis.env")
    for name in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "KYUTAI_STT_API_KEY", "KYUTAI_TTS_API_KEY"):
        assert env2[name] == env[name], name
    assert env2["KYUTAI_STT_URLS"] == "ws://gpu-1:8100,ws://gpu-1:8101,ws://gpu-2:8100"
    assert not (second / "etc/livekit").exists(), "a host without the livekit role got LiveKit's files"

    # The model cache and the service's home are the service user's, never root's code directory.
    for d in ("var/cache/jarvis/huggingface", "var/lib/jarvis", "var/lib/jarvis/session-log", "var/log/jarvis"):
        assert owner(first / d) == "jarvis", d
    assert env["HF_HOME"] == str(first / "var/cache/jarvis/huggingface")
    assert env["JARVIS_SESSION_LOG__SPOOL_DIR"] == str(first / "var/lib/jarvis/session-log")


def test_every_instance_has_its_own_ports(tmp_path: Path) -> None:
    root = tmp_path / "host"
    install(root, *HOST)
    host = json.loads((root / "etc/jarvis/host.json").read_text())
    ports = []
    for instance in host["instances"]:
        env: dict[str, str] = {}
        for f in instance["env_files"]:
            if Path(f).exists():
                env |= read_env(Path(f))
        ports += [int(v) for k, v in env.items() if k.endswith("_PORT") and k != "JARVIS_PORT"]
        if instance["name"].startswith("kyutai-"):
            assert env["CUDA_VISIBLE_DEVICES"] == instance["name"].split("@")[1]
    names = [i["name"] for i in host["instances"]]
    assert names == ["livekit", "kyutai-stt@0", "kyutai-tts@0", "kyutai-stt@1", "kyutai-tts@1", "jarvis-token",
                     "jarvis-agent@1", "jarvis-agent@2", "jarvis-agent@3"]
    assert len(ports) == len(set(ports)) == 7, ports  # 4 engines, 3 workers' metrics
    assert 9100 not in ports, "9100 is node_exporter's"
    workers = [i for i in host["instances"] if i["name"].startswith("jarvis-agent@")]
    assert all(w["after"] == ["livekit", "kyutai-stt@0", "kyutai-tts@0", "kyutai-stt@1", "kyutai-tts@1"]
               for w in workers)


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        skip_or_fail("systemd-analyze missing (Debian package systemd)")
    root = tmp_path / "host"
    install(root, *HOST, "--llm", "groq")
    units = root / "etc/systemd/system"
    # Templates are verified as instances, as systemctl would load them.
    checked = tmp_path / "units"
    shutil.copytree(units, checked)
    for template, instance in (("kyutai-stt@.service", "kyutai-stt@0.service"),
                               ("kyutai-tts@.service", "kyutai-tts@1.service"),
                               ("jarvis-agent@.service", "jarvis-agent@2.service")):
        (checked / instance).symlink_to(checked / template)
    names = ["livekit.service", "jarvis-token.service", "kyutai-stt@0.service", "kyutai-tts@1.service",
             "jarvis-agent@2.service", "jarvis.target"]
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *(str(checked / n) for n in names)],
                            capture_output=True, text=True, timeout=60, cwd=checked)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    worker = (units / "jarvis-agent@.service").read_text()
    assert "PROMETHEUS_MULTIPROC_DIR=%t/jarvis-agent-%i" in worker and "RuntimeDirectory=jarvis-agent-%i" in worker
    assert "TimeoutStopSec=3630" in worker, "the worker's stop timeout is livekit-agents' drain (3600 s) + 30 s"
    dropin = (units / "jarvis-agent@.service.d/engines.conf").read_text()
    assert "After=livekit.service kyutai-stt@0.service kyutai-tts@0.service" in dropin
    # The engines read only the model cache the installer filled, under systemd and the plain launcher.
    for kind in ("stt", "tts"):
        assert "Environment=HF_HUB_OFFLINE=1" in (units / f"kyutai-{kind}@.service").read_text(), kind
    host = json.loads((root / "etc/jarvis/host.json").read_text())
    engines = [i for i in host["instances"] if i["name"].startswith("kyutai-")]
    assert len(engines) == 4 and all(i["environment"] == {"HF_HUB_OFFLINE": "1"} for i in engines)
    assert read_env(root / "etc/jarvis/jarvis.env")["HF_HOME"] == str(root / "var/cache/jarvis/huggingface")


def test_the_python_lock_is_what_the_tests_run() -> None:
    """deploy/requirements/runtime.lock pins this environment's versions: regenerate it after a change."""
    lock = REPO / "deploy/requirements/runtime.lock"
    import importlib.metadata as md

    stale = []
    for line in lock.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            try:
                installed = md.version(name)
            except md.PackageNotFoundError:
                installed = None
            if installed != version:
                stale.append(f"{name}: lock {version}, installed {installed}")
    assert not stale, "run `.venv/bin/python deploy/lock.py`: " + "; ".join(stale)
    assert not any(line.startswith(("pytest", "ruff", "mypy")) for line in lock.read_text().splitlines())


def test_a_production_livekit_node_is_clustered_on_redis_with_turn_on_443(tmp_path: Path) -> None:
    root = tmp_path / "lk-1"
    password = tmp_path / "redis-password"
    password.write_text("s3cret-redis-password\n")
    install(root, "--roles", "livekit", "--redis-address", "redis.internal:6379", "--redis-password-file",
            str(password), "--turn-domain", "turn-1.example.fr", "--node-ip", "203.0.113.10")
    config = yaml.safe_load((root / "etc/livekit/livekit.yaml").read_text())
    assert config["redis"] == {"address": "redis.internal:6379", "db": 0}, "every node on the one shared Redis"
    assert config["node_selector"]["kind"] == "sysload"
    assert config["turn"] | {"domain": None} == {"enabled": True, "domain": None, "tls_port": 5349,
                                                 "external_tls": True, "udp_port": 3478}
    assert config["turn"]["domain"] == "turn-1.example.fr"
    assert {"mime": "audio/red"} in config["room"]["enabled_codecs"]
    assert config["prometheus"]["port"] == 6789 and config["rtc"]["node_ip"] == "203.0.113.10"
    # The Redis password reaches livekit-server through its environment, never the world-readable yaml.
    assert "s3cret" not in (root / "etc/livekit/livekit.yaml").read_text()
    livekit_env = root / "etc/livekit/livekit.env"
    assert read_env(livekit_env) == {"REDIS_PASSWORD": "s3cret-redis-password"}
    assert (mode(livekit_env), owner(livekit_env)) == (0o600, "livekit")
    assert "EnvironmentFile=-" + str(livekit_env) in (root / "etc/systemd/system/livekit.service").read_text()


def test_the_tls_proxy_config_is_valid(tmp_path: Path) -> None:
    """deploy/nginx/nginx.conf, filled in as its header says, passes `nginx -t` (self-signed certificates)."""
    if shutil.which("nginx") is None or not Path("/usr/lib/nginx/modules/ngx_stream_module.so").exists():
        skip_or_fail("nginx with its stream module missing (Debian packages nginx, libnginx-mod-stream)")
    names = {"VOICE_DOMAIN": "voice.example.fr", "TURN_DOMAIN": "turn-1.example.fr", "API_DOMAIN": "api.example.fr"}
    certs = tmp_path / "certs"
    for name in names.values():
        (certs / name).mkdir(parents=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        f"/CN={name}", "-keyout", str(certs / name / "privkey.pem"),
                        "-out", str(certs / name / "fullchain.pem")], check=True, capture_output=True)
    text = (REPO / "deploy/nginx/nginx.conf").read_text()
    for key, value in {**names, "CERT_DIR": str(certs)}.items():
        text = text.replace(f"@{key}@", value)
    assert not re.search(r"^[^#]*@[A-Z_]+@", text, re.M), "a field left unfilled"
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    result = subprocess.run(["nginx", "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_the_engines_role_fetches_the_models_ahead_once(hub: StandInHub, tmp_path: Path) -> None:  # noqa: F811
    """The engine host's install fills the model cache from the hub (here the stand-in on loopback), hands
    it to the service user, and a second install downloads nothing and changes nothing."""
    root = tmp_path / "gpu-1"
    args = ["--roles", "engines", "--gpus", "1"]
    first = install(root, *args, env={"HF_ENDPOINT": hub.url}, models=True)
    cache = root / "var/cache/jarvis/huggingface"
    assert "11 files fetched" in first and f"changed: {cache} (models fetched)" in first, first
    assert len(hub.gets) == 11, hub.gets
    for repo in (REAL_STT, REAL_TTS):
        snapshots = cache / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots"
        assert any(snapshots.iterdir()), repo
    assert {owner(path) for path in [cache, *cache.rglob("*")]} == {"jarvis"}, "the engines' cache is theirs"
    before = snapshot(root)

    second = install(root, *args, env={"HF_ENDPOINT": hub.url}, models=True)
    assert "0 files fetched, 11 already present" in second, second
    assert second.strip().splitlines()[-1].startswith("0 changed"), second
    assert len(hub.gets) == 11, "the second install downloaded again"
    assert snapshot(root) == before, "the second run rewrote or touched a file"
