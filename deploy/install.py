#!/usr/bin/env python3
"""Install JARVIS on one Debian host, for the roles it holds; run it again and nothing changes.

    deploy/install.sh --roles livekit,engines,worker,token [options]

Roles (one host may hold several):
  livekit  the LiveKit SFU node (livekit-server, /etc/livekit, user ``livekit``)
  engines  one Kyutai STT and one Kyutai TTS engine per GPU (ports 8100+i and 8200+i)
  worker   N agent workers (metrics on 9300+i, each its own PROMETHEUS_MULTIPROC_DIR)
  token    the token service (127.0.0.1:8080 behind the TLS proxy)

What it writes (all under --root, "/" on a real host):
  /etc/jarvis/secrets.env          the cluster's shared secrets, generated on the first host (0600 root):
                                   copy it to the next hosts and pass --secrets FILE
  /etc/jarvis/jarvis.env           generated settings every JARVIS process reads (0600 jarvis)
  /etc/jarvis/local.env            your own settings (Groq key, database URL, …): created once, never rewritten
  /etc/jarvis/instances/<unit>.env one per instance: its ports, its GPU
  /etc/jarvis/host.json            the instances, for deploy/launch.py (hosts without systemd)
  /etc/livekit/livekit.yaml, keys.yaml (0600 livekit), livekit.env (0600 livekit: REDIS_PASSWORD)
  /etc/systemd/system/*.service    the units, rendered from deploy/systemd/
  /var/lib/jarvis, /var/cache/jarvis/huggingface, /var/log/jarvis   owned by the jarvis user

Python packages come from deploy/requirements/runtime.lock into <app>/.venv; Debian packages per role.
--no-packages skips both (the tests; a host whose venv is already built). --dry-run changes nothing and
prints what would change. Stdlib only: it runs before any virtual environment exists.

The engines role fetches the models ahead into the model cache (`python -m jarvis_local.fetch_models`,
progress bars, verified; a second run downloads nothing) and the engines start with HF_HUB_OFFLINE=1:
they read only that cache. --no-models skips the fetch (a host without the hub: copy a fetched
/var/cache/jarvis/huggingface over); HF_ENDPOINT in the installer's environment selects a mirror.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
ROLES = ("livekit", "engines", "worker", "token")

# Ports: one scheme on every host, so the Prometheus config and the firewall table can name them.
# 9100 is node_exporter's and 9400 dcgm-exporter's: the workers' metrics start at 9301.
PORTS = {
    "livekit": 7880,  # signalling (WebSocket + HTTP API), behind the TLS proxy
    "livekit_rtc_tcp": 7881,  # ICE over TCP
    "livekit_turn_tls": 5349,  # TURN/TLS, plain TCP behind the proxy's 443 (external_tls)
    "livekit_turn_udp": 3478,
    "livekit_prometheus": 6789,
    "token": 8080,
    "stt": 8100,  # + GPU index
    "tts": 8200,  # + GPU index
    "worker_metrics": 9300,  # + worker index (1, 2, …)
}
UDP_RANGE = (50000, 60000)

# Debian packages per role; the LiveKit binary and the Python lock are handled apart.
APT = {
    "common": ["python3.11", "python3.11-venv", "ca-certificates"],
    "livekit": [],
    "engines": [],
    "worker": [],
    "token": ["nginx", "libnginx-mod-stream"],
}

# Stop timeouts (systemd's TimeoutStopSec, the launcher's wait before SIGKILL), from each drain:
# - a worker drains for livekit-agents' drain_timeout (DRAIN_TIMEOUT, 3600 s: its live sessions finish);
# - a LiveKit node waits, with no bound of its own, until its last participant left: the agents'
#   drain bounds it, so it gets a little more than the workers;
# - an engine drains for KYUTAI_*_DRAIN_TIMEOUT_S (30 s).
WORKER_DRAIN_S = 3600
STOP_S = {"worker": WORKER_DRAIN_S + 30, "livekit": WORKER_DRAIN_S + 60, "engine": 40, "token": 15}


# -- recording what changes ---------------------------------------------------------------


@dataclass
class Changes:
    dry_run: bool
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0

    def note(self, what: str) -> None:
        self.changed.append(what)
        print(f"{'would change' if self.dry_run else 'changed'}: {what}")


def _owner_ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def write_file(ch: Changes, path: Path, content: bytes | str, mode: int, owner: str = "root") -> None:
    """Write ``path`` only when its content, mode or owner differ (so a second run touches nothing)."""
    data = content.encode() if isinstance(content, str) else content
    try:
        uid, gid = _owner_ids(owner)
    except KeyError:  # a user a dry run has not created yet
        uid, gid = -1, -1
    reasons = []
    if not path.exists():
        reasons.append("new")
    else:
        st = path.stat()
        if path.read_bytes() != data:
            reasons.append("content")
        if st.st_mode & 0o7777 != mode:
            reasons.append(f"mode {oct(st.st_mode & 0o7777)}->{oct(mode)}")
        if uid >= 0 and (st.st_uid, st.st_gid) != (uid, gid):
            reasons.append("owner")
    if not reasons:
        ch.unchanged += 1
        return
    ch.note(f"{path} ({', '.join(reasons)})")
    if ch.dry_run:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with its final mode and owner before the secret is in it, then moved into place.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        if uid >= 0:
            os.fchown(fd, uid, gid)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_dir(ch: Changes, path: Path, mode: int, owner: str = "root") -> None:
    try:
        uid, gid = _owner_ids(owner)
    except KeyError:
        uid, gid = -1, -1
    if not path.is_dir():
        ch.note(f"{path}/ (new)")
        if ch.dry_run:
            return
        path.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    if st.st_mode & 0o7777 != mode or (uid >= 0 and (st.st_uid, st.st_gid) != (uid, gid)):
        if f"{path}/ (new)" not in ch.changed:
            ch.note(f"{path}/ (mode or owner)")
        if ch.dry_run:
            return
        os.chmod(path, mode)
        if uid >= 0:
            os.chown(path, uid, gid)
    else:
        ch.unchanged += 1


def ensure_user(ch: Changes, name: str, home: str) -> None:
    try:
        pwd.getpwnam(name)
        ch.unchanged += 1
        return
    except KeyError:
        pass
    ch.note(f"user {name} (new system user)")
    if not ch.dry_run:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--home-dir", home, "--no-create-home",
             "--shell", "/usr/sbin/nologin", name],
            check=True,
        )


# -- settings -------------------------------------------------------------------------------


def parse_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile reads them (comments, blank lines, optional quotes)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def render_env(header: str, env: dict[str, str]) -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for key, value in env.items():
        if re.search(r"[\s'\"\\$`]", value):
            if "'" in value:
                raise SystemExit(f"{key}: a value with a single quote cannot go into an environment file")
            value = f"'{value}'"
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def cluster_secrets(args: argparse.Namespace, existing: Path) -> dict[str, str]:
    """One LiveKit key/secret and one engine key for the whole cluster.

    Precedence: --secrets FILE (copied from the first host), then what this host already has, then
    LIVEKIT_API_KEY / LIVEKIT_API_SECRET / JARVIS_ENGINE_KEY from the environment, then new random ones.
    """
    found: dict[str, str] = {}
    if existing.exists():
        found = parse_env(existing.read_text())
    if args.secrets:
        found = {**found, **parse_env(Path(args.secrets).read_text())}
    for key in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "JARVIS_ENGINE_KEY", "REDIS_PASSWORD"):
        if key not in found and os.environ.get(key):
            found[key] = os.environ[key]
    found.setdefault("LIVEKIT_API_KEY", "jarvis")
    found.setdefault("LIVEKIT_API_SECRET", secrets.token_hex(32))
    found.setdefault("JARVIS_ENGINE_KEY", secrets.token_urlsafe(32))
    if args.redis_password_file:
        found["REDIS_PASSWORD"] = Path(args.redis_password_file).read_text().strip()
    if len(found["LIVEKIT_API_SECRET"]) < 32:
        raise SystemExit("LIVEKIT_API_SECRET must be at least 32 characters (livekit-server refuses shorter)")
    return found


def gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def gpu_memory_gib() -> float:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20,
        ).stdout
        return min(float(v) for v in out.split()) / 1024
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0.0


def vllm_settings(gib: float) -> dict[str, str]:
    """An LLM beside both engines on one GPU: vLLM's share leaves the engines about 12 GiB.

    The engines at 32 streams each take about 10 GiB together in bf16 (STT 1B, TTS 1.6B, their
    caches; see docs/ops.md, sizing); vLLM's --gpu-memory-utilization is a share of the whole card.
    """
    if gib >= 70:  # A100/H100 80 GB, H200: a 24B model in FP8 (about 25 GB of weights) and its KV cache
        return {"VLLM_MODEL": "mistralai/Mistral-Small-3.2-24B-Instruct-2506", "VLLM_QUANTIZATION": "fp8",
                "VLLM_GPU_MEMORY_UTILIZATION": "0.55", "VLLM_MAX_MODEL_LEN": "16384",
                "VLLM_TOOL_CALL_PARSER": "mistral"}
    if gib >= 20:  # A10/L4/RTX 4090 24 GB: a 7B model in AWQ 4-bit (about 5.5 GB) and an 8k context
        return {"VLLM_MODEL": "Qwen/Qwen2.5-7B-Instruct-AWQ", "VLLM_QUANTIZATION": "awq_marlin",
                "VLLM_GPU_MEMORY_UTILIZATION": "0.45", "VLLM_MAX_MODEL_LEN": "8192",
                "VLLM_TOOL_CALL_PARSER": "hermes"}
    raise SystemExit(f"a {gib:.0f} GiB GPU has no room for an LLM beside the engines: use --llm groq")


# -- the host's instances ------------------------------------------------------------------


@dataclass
class Paths:
    root: Path
    app: Path
    venv: Path

    def at(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    @property
    def etc(self) -> Path:
        return self.at("/etc/jarvis")

    @property
    def etc_livekit(self) -> Path:
        return self.at("/etc/livekit")

    @property
    def state(self) -> Path:
        return self.at("/var/lib/jarvis")

    @property
    def cache(self) -> Path:
        return self.at("/var/cache/jarvis")

    @property
    def logs(self) -> Path:
        return self.at("/var/log/jarvis")

    @property
    def units(self) -> Path:
        return self.at("/etc/systemd/system")

    @property
    def livekit_binary(self) -> Path:
        return self.at("/usr/local/bin/livekit-server")


def build_instances(args: argparse.Namespace, p: Paths, ports: dict[str, int]) -> list[dict[str, object]]:
    """Every process this host runs: its unit, command, environment files, health URL and ordering."""
    py = str(p.venv / "bin" / "python")
    common = [str(p.etc / "jarvis.env"), str(p.etc / "local.env")]
    out: list[dict[str, object]] = []
    if "livekit" in args.roles:
        out.append({
            "name": "livekit", "unit": "livekit.service", "user": args.livekit_user,
            "argv": [str(p.livekit_binary), "--config", str(p.etc_livekit / "livekit.yaml")],
            "env_files": [str(p.etc_livekit / "livekit.env")],
            "health": f"http://127.0.0.1:{ports['livekit']}/", "after": [], "stop_timeout_s": STOP_S["livekit"],
        })
    engines = []
    if "engines" in args.roles:
        for gpu in range(args.gpus):
            for kind, module in (("stt", "kyutai_stt.server"), ("tts", "kyutai_tts.server")):
                name = f"kyutai-{kind}@{gpu}"
                engines.append(name)
                out.append({
                    "name": name, "unit": f"kyutai-{kind}@{gpu}.service", "user": args.user,
                    "argv": [py, "-m", module], "cwd": str(p.app),
                    "env_files": [*common, str(p.etc / "instances" / f"{name}.env")],
                    "health": f"http://127.0.0.1:{ports[kind] + gpu}/api/health", "after": [],
                    "stop_timeout_s": STOP_S["engine"], "environment": ENGINE_ENVIRONMENT,
                })
    if "token" in args.roles:
        out.append({
            "name": "jarvis-token", "unit": "jarvis-token.service", "user": args.user,
            "argv": [py, "-m", "token_service"], "env_files": common, "cwd": str(p.app),
            "health": f"http://127.0.0.1:{ports['token']}/readyz",
            "after": ["livekit"] if "livekit" in args.roles else [], "stop_timeout_s": STOP_S["token"],
        })
    if "worker" in args.roles:
        for i in range(1, args.workers + 1):
            name = f"jarvis-agent@{i}"
            out.append({
                "name": name, "unit": f"jarvis-agent@{i}.service", "user": args.user,
                "argv": [py, "-m", "agent", "start"], "cwd": str(p.app),
                "env_files": [*common, str(p.etc / "instances" / f"{name}.env")],
                "health": f"http://127.0.0.1:{ports['worker_metrics'] + i}/metrics",
                # Workers start after this host's engines and LiveKit node (remote ones are not waited for).
                "after": [*(["livekit"] if "livekit" in args.roles else []), *engines],
                "stop_timeout_s": STOP_S["worker"],
                # A fresh, empty directory per start: livekit-agents' job processes write their samples there.
                "prometheus_multiproc": True,
            })
    return out


# What the engine units set with Environment= (the launcher applies it the same way, before the env
# files, which may override it): the engines read only the model cache the installer filled, so a hub
# outage or a slow link never stalls a (re)start; HF_HOME (jarvis.env) is that writable cache.
ENGINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1"}


def engine_urls(args: argparse.Namespace, ports: dict[str, int], kind: str) -> str:
    """The engines the workers stream to: --engine-hosts "gpu-1:2,gpu-2:1" (host:GPUs), else this host's."""
    hosts = args.engine_hosts or (f"127.0.0.1:{args.gpus}" if "engines" in args.roles else "")
    if not hosts:
        raise SystemExit("a worker host without the engines role needs --engine-hosts host:gpus,…")
    urls = []
    for item in hosts.split(","):
        host, _, count = item.strip().partition(":")
        urls += [f"ws://{host}:{ports[kind] + gpu}" for gpu in range(int(count or 1))]
    return ",".join(urls)


def jarvis_env(args: argparse.Namespace, p: Paths, ports: dict[str, int], sec: dict[str, str]) -> dict[str, str]:
    livekit_url = args.livekit_url or f"ws://127.0.0.1:{ports['livekit']}"
    env = {
        "LIVEKIT_URL": livekit_url,
        "LIVEKIT_API_KEY": sec["LIVEKIT_API_KEY"],
        "LIVEKIT_API_SECRET": sec["LIVEKIT_API_SECRET"],
        "JARVIS_LIVEKIT_PUBLIC_URL": args.public_url or livekit_url,
        "JARVIS_HOST": args.token_bind,
        "JARVIS_PORT": str(ports["token"]),
        # The service user's home and the model cache: writable by it, never the code directory.
        "HOME": str(p.state),
        "HF_HOME": str(p.cache / "huggingface"),
        "KYUTAI_STT_API_KEYS": json.dumps([sec["JARVIS_ENGINE_KEY"]]),
        "KYUTAI_TTS_API_KEYS": json.dumps([sec["JARVIS_ENGINE_KEY"]]),
        "KYUTAI_STT_API_KEY": sec["JARVIS_ENGINE_KEY"],
        "KYUTAI_TTS_API_KEY": sec["JARVIS_ENGINE_KEY"],
    }
    if "worker" in args.roles:
        stt, tts = engine_urls(args, ports, "stt"), engine_urls(args, ports, "tts")
        env |= {"KYUTAI_STT_URLS": stt, "KYUTAI_TTS_URLS": tts,
                "KYUTAI_STT_URL": stt.split(",")[0], "KYUTAI_TTS_URL": tts.split(",")[0]}
        # The session log's outbox: on local disk, outliving the workers, shared by this host's workers.
        env["JARVIS_SESSION_LOG__SPOOL_DIR"] = str(p.state / "session-log")
    if args.llm == "vllm":
        env |= {"JARVIS_LLM__SECONDARY__PROVIDER": "vllm", "JARVIS_LLM__SECONDARY__MODEL": "jarvis-llm",
                "JARVIS_LLM__SECONDARY__BASE_URL": "http://127.0.0.1:8000/v1"}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env {item}: expected KEY=VALUE")
        env[key] = value
    return env


LOCAL_ENV = """\
# /etc/jarvis/local.env: YOUR settings. The installer created this file once and never rewrites it;
# it is read after jarvis.env (generated: do not edit that one), so a line here wins.
# JARVIS_DATABASE_URL=postgresql://postgres.xxxx:password@aws-0-eu-west-3.pooler.supabase.com:5432/postgres
# JARVIS_REDIS_URL=redis://:password@redis.internal:6379/0
# JARVIS_LLM__PRIMARY__PROVIDER=groq
# JARVIS_LLM__PRIMARY__MODEL=llama-3.3-70b-versatile
# GROQ_API_KEY=gsk_…
# JARVIS_LLM__ATTEMPT_TIMEOUT_S=4
# JARVIS_WEATHER_URL=http://127.0.0.1:9090/weather
"""


def livekit_yaml(args: argparse.Namespace, p: Paths, ports: dict[str, int]) -> str:
    """deploy/livekit/livekit.yaml with this node's ports and addresses filled in (no secret in it)."""
    text = (DEPLOY / "livekit" / "livekit.yaml").read_text()
    values = {
        "PORT": str(ports["livekit"]), "RTC_TCP_PORT": str(ports["livekit_rtc_tcp"]),
        "UDP_START": str(UDP_RANGE[0]), "UDP_END": str(UDP_RANGE[1]),
        "REDIS_ADDRESS": args.redis_address, "REDIS_DB": str(args.redis_db), "TURN_DOMAIN": args.turn_domain,
        "TURN_TLS_PORT": str(ports["livekit_turn_tls"]), "TURN_UDP_PORT": str(ports["livekit_turn_udp"]),
        "PROMETHEUS_PORT": str(ports["livekit_prometheus"]), "KEY_FILE": str(p.etc_livekit / "keys.yaml"),
    }
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    lines = text.splitlines()
    if args.loopback:
        args.node_ip = args.node_ip or "127.0.0.1"
        lines = [line.replace('  - ""', "  - 127.0.0.1") for line in lines]
    if args.node_ip:  # a known public address: no STUN discovery
        lines = [line.replace("use_external_ip: true", f"use_external_ip: false\n  node_ip: {args.node_ip}")
                 for line in lines]
    if args.loopback:  # a test or a one-host trial: loopback candidates, one UDP port, no TURN
        out, skip = [], False
        for line in lines:
            if line.startswith("turn:"):
                skip = True
                continue
            if skip and (line.startswith(" ") or not line):
                continue
            skip = False
            if "port_range_start" in line:
                line = f"  udp_port: {ports['livekit_udp']}\n  enable_loopback_candidate: true"
            elif "port_range_end" in line:
                continue
            out.append(line)
        lines = out
    return "\n".join(lines) + "\n"


# -- units ---------------------------------------------------------------------------------


def render_unit(template: str, p: Paths, args: argparse.Namespace) -> str:
    values = {"ETC": str(p.etc), "ETC_LIVEKIT": str(p.etc_livekit), "APP": str(p.app), "VENV": str(p.venv),
              "USER": args.user, "LIVEKIT_USER": args.livekit_user, "STATE": str(p.state),
              "LIVEKIT_BINARY": str(p.livekit_binary), "CACHE": str(p.cache),
              "WORKER_DRAIN_S": str(WORKER_DRAIN_S), "WORKER_STOP_S": str(STOP_S["worker"]),
              "LIVEKIT_STOP_S": str(STOP_S["livekit"]), "ENGINE_STOP_S": str(STOP_S["engine"]),
              "TOKEN_STOP_S": str(STOP_S["token"]), "STT_PORT_BASE": str(PORTS["stt"]),
              "TTS_PORT_BASE": str(PORTS["tts"]),
              "ENGINE_ENVIRONMENT": " ".join(f"{k}={v}" for k, v in ENGINE_ENVIRONMENT.items())}
    text = (DEPLOY / "systemd" / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def target_unit(instances: list[dict[str, object]]) -> str:
    """jarvis.target: every instance of this host, so `systemctl enable --now jarvis.target` starts them all."""
    units = " ".join(str(i["unit"]) for i in instances)
    return ("# Generated by deploy/install.sh: every JARVIS process of this host.\n"
            f"[Unit]\nDescription=JARVIS on this host\nWants={units}\n\n[Install]\nWantedBy=multi-user.target\n")


def units_for(args: argparse.Namespace) -> list[str]:
    out = []
    if "livekit" in args.roles:
        out.append("livekit.service")
    if "engines" in args.roles:
        out += ["kyutai-stt@.service", "kyutai-tts@.service"]
        if args.llm == "vllm":
            out.append("vllm.service")
    if "token" in args.roles:
        out.append("jarvis-token.service")
    if "worker" in args.roles:
        out.append("jarvis-agent@.service")
    return out


# -- packages ------------------------------------------------------------------------------


def install_packages(ch: Changes, args: argparse.Namespace, p: Paths) -> None:
    wanted = APT["common"] + [pkg for role in args.roles for pkg in APT[role]]
    missing = [
        pkg for pkg in wanted
        if "install ok installed" not in subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        ).stdout
    ]
    if missing:
        ch.note(f"Debian packages {' '.join(missing)}")
        if not ch.dry_run:
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if {"engines", "worker", "token"} & set(args.roles):
        lock = DEPLOY / "requirements" / "runtime.lock"
        stamp = p.venv / ".jarvis-lock-sha256"
        want = hashlib.sha256(lock.read_bytes() + (REPO / "pyproject.toml").read_bytes()).hexdigest()
        if not stamp.exists() or stamp.read_text().strip() != want:
            ch.note(f"Python packages in {p.venv} from {lock.name}")
            if not ch.dry_run:
                if not (p.venv / "bin" / "python").exists():
                    subprocess.run(["python3.11", "-m", "venv", str(p.venv)], check=True)
                pip = [str(p.venv / "bin" / "pip"), "install", "-q"]
                subprocess.run([*pip, "--no-deps", "-r", str(lock)], check=True)
                subprocess.run([*pip, "--no-deps", str(p.app)], check=True)
                stamp.write_text(want + "\n")
    if "livekit" in args.roles:
        source = Path(args.livekit_binary) if args.livekit_binary else REPO / ".tools" / "livekit-server"
        if not source.exists():
            raise SystemExit(f"{source} missing: build it with scripts/setup.sh or pass --livekit-binary")
        write_file(ch, p.livekit_binary, source.read_bytes(), 0o755)


# -- models --------------------------------------------------------------------------------


def fetch_models(ch: Changes, args: argparse.Namespace, p: Paths, engine_extra: dict[str, str]) -> None:
    """The checkpoints and voices the engines load, into the model cache, ahead of their first start.

    Runs `python -m jarvis_local.fetch_models` from the app's venv with the engines' settings and their
    HF_HOME (progress bars on the console); then hands the cache to the service user. A file already in
    the cache is not downloaded again, so a second install changes nothing.
    """
    checkpoints = [engine_extra.get(f"KYUTAI_{kind}_CHECKPOINT", "") for kind in ("STT", "TTS")]
    if all(c and Path(c).is_dir() for c in checkpoints):
        print("models: the engines' checkpoints are local directories: nothing to fetch")
        return
    cache = p.cache / "huggingface"
    if ch.dry_run:
        print(f"models: a real run fetches what is missing into {cache}")
        return
    python = p.venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} missing: drop --no-packages, or pass --no-models")
    env = {**os.environ, **engine_extra, "HF_HOME": str(cache)}
    env.pop("HF_HUB_OFFLINE", None)  # the fetch is the one time the hub is used
    print(f"models: fetching into {cache} (several GB the first time; --no-models skips)", flush=True)
    result = subprocess.run([str(python), "-m", "jarvis_local.fetch_models"], cwd=p.app, env=env,
                            stdout=subprocess.PIPE, text=True)
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        raise SystemExit("models: the fetch failed (above); with no hub here, pass --no-models and copy a "
                         f"fetched model cache to {cache}")
    fetched = re.search(r"models: (\d+) files fetched", result.stdout)
    if fetched is None or int(fetched.group(1)) > 0:
        ch.note(f"{cache} (models fetched)")
    else:
        ch.unchanged += 1
    # Fetched as root (the service user may not run the installer's Python): the cache is the engines'.
    try:
        uid, gid = _owner_ids(args.user)
    except KeyError:
        return
    for path in [cache, *cache.rglob("*")]:
        st = path.lstat()
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.lchown(path, uid, gid)


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--roles", required=True, help="comma-separated: " + ",".join(ROLES))
    ap.add_argument("--root", default="/", help="install under this directory (tests); / on a real host")
    ap.add_argument("--app-dir", default=str(REPO), help="the JARVIS checkout the units run (default: this one)")
    ap.add_argument("--venv", help="the virtual environment (default: <app-dir>/.venv)")
    ap.add_argument("--user", default="jarvis", help="the service user of our processes")
    ap.add_argument("--livekit-user", default="livekit")
    ap.add_argument("--gpus", type=int, default=None,
                    help="engine instances (default: nvidia-smi's GPU count, 1 on CPU)")
    ap.add_argument("--workers", type=int, default=2, help="agent worker processes on this host")
    ap.add_argument("--engine-hosts", default="", help='engines the workers use: "gpu-1:2,gpu-2:2" (host:GPUs)')
    ap.add_argument("--engine-bind", default="0.0.0.0", help="address the engines listen on (their key is required)")
    ap.add_argument("--token-bind", default="127.0.0.1",
                    help="the token service's address: 127.0.0.1 behind nginx; 0.0.0.0 to let Prometheus scrape it")
    ap.add_argument("--livekit-url", default="", help="where workers and the token service reach LiveKit")
    ap.add_argument("--public-url", default="", help="what kiosks connect to, e.g. wss://voice.example.fr")
    ap.add_argument("--redis-address", default="127.0.0.1:6379", help="LiveKit's shared Redis (host:port)")
    ap.add_argument("--redis-db", type=int, default=0, help="LiveKit's Redis database")
    ap.add_argument("--redis-password-file", default="", help="LiveKit's Redis password (kept in secrets.env)")
    ap.add_argument("--turn-domain", default="turn.example.fr", help="TURN/TLS name (its certificate is the proxy's)")
    ap.add_argument("--node-ip", default="", help="this node's public IP (else discovered by STUN)")
    ap.add_argument("--livekit-binary", default="", help="livekit-server to install (default: .tools/livekit-server)")
    ap.add_argument("--secrets", default="", help="the first host's /etc/jarvis/secrets.env")
    ap.add_argument("--llm", choices=("groq", "vllm"), default="groq", help="vllm: a local LLM sized to the GPU")
    ap.add_argument("--port", action="append", default=[], metavar="NAME=PORT",
                    help=f"override a port ({', '.join(PORTS)}, livekit_udp)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="add to jarvis.env")
    ap.add_argument("--engine-env", action="append", default=[], metavar="KEY=VALUE",
                    help="add to every engine instance's env file (checkpoints, streams)")
    ap.add_argument("--loopback", action="store_true", help="LiveKit on loopback: tests and one-box trials")
    ap.add_argument("--no-packages", action="store_true", help="skip Debian packages, the venv and the LiveKit binary")
    ap.add_argument("--no-models", action="store_true",
                    help="engines role: do not fetch the models (offline host: copy a filled model cache over)")
    ap.add_argument("--no-users", action="store_true", help="use the existing --user/--livekit-user as they are")
    ap.add_argument("--dry-run", action="store_true", help="change nothing; print what would change")
    args = ap.parse_args(argv)
    args.roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    unknown = set(args.roles) - set(ROLES)
    if unknown or not args.roles:
        ap.error(f"unknown role(s) {sorted(unknown)}; roles are {', '.join(ROLES)}")
    if args.gpus is None:
        args.gpus = max(1, gpu_count())
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.root).resolve()
    app = Path(args.app_dir).resolve()
    p = Paths(root=root, app=app, venv=Path(args.venv).resolve() if args.venv else app / ".venv")
    ch = Changes(dry_run=args.dry_run)
    ports = dict(PORTS)
    ports["livekit_udp"] = 7882
    for item in args.port:
        name, _, value = item.partition("=")
        if name not in ports:
            raise SystemExit(f"--port {item}: unknown port name")
        ports[name] = int(value)

    if os.geteuid() != 0 and not args.no_users:
        raise SystemExit("run as root (it creates users and root-owned files), or pass --no-users")
    if not args.no_users:
        ensure_user(ch, args.user, "/var/lib/jarvis")
        if "livekit" in args.roles:
            ensure_user(ch, args.livekit_user, "/var/lib/livekit")

    ensure_dir(ch, p.etc, 0o755)
    ensure_dir(ch, p.etc / "instances", 0o755)
    sec_path = p.etc / "secrets.env"
    sec = cluster_secrets(args, sec_path)
    write_file(ch, sec_path, render_env(
        "The cluster's shared secrets. Copy this file to every other host of the cluster and pass it to\n"
        "deploy/install.sh --secrets; never commit it.", sec), 0o600)

    for d in (p.state, p.state / "session-log", p.cache, p.cache / "huggingface", p.logs):
        ensure_dir(ch, d, 0o750, args.user)
    write_file(ch, p.etc / "jarvis.env", render_env(
        "Generated by deploy/install.sh: do not edit (it is rewritten on each run). Your settings go in\n"
        "local.env, read after this file.", jarvis_env(args, p, ports, sec)), 0o600, args.user)
    local = p.etc / "local.env"
    if not local.exists():
        write_file(ch, local, LOCAL_ENV, 0o600, args.user)

    engine_extra = dict(item.split("=", 1) for item in args.engine_env)
    if "engines" in args.roles:
        for gpu in range(args.gpus):
            for kind in ("stt", "tts"):
                prefix = f"KYUTAI_{kind.upper()}_"
                env = {"CUDA_VISIBLE_DEVICES": str(gpu), f"{prefix}HOST": args.engine_bind,
                       f"{prefix}PORT": str(ports[kind] + gpu), **engine_extra}
                write_file(ch, p.etc / "instances" / f"kyutai-{kind}@{gpu}.env",
                           render_env(f"kyutai-{kind}@{gpu}: GPU {gpu}", env), 0o644)
        if args.llm == "vllm":
            write_file(ch, p.etc / "vllm.env", render_env("vLLM beside the engines on GPU 0, sized to the card",
                                                          vllm_settings(gpu_memory_gib())), 0o644)
    if "worker" in args.roles:
        for i in range(1, args.workers + 1):
            write_file(ch, p.etc / "instances" / f"jarvis-agent@{i}.env",
                       render_env(f"jarvis-agent@{i}", {"JARVIS_PROMETHEUS_PORT": str(ports["worker_metrics"] + i)}),
                       0o644)

    if "livekit" in args.roles:
        ensure_dir(ch, p.etc_livekit, 0o755)
        write_file(ch, p.etc_livekit / "livekit.yaml", livekit_yaml(args, p, ports), 0o644)
        # livekit-server refuses a key file others can read.
        write_file(ch, p.etc_livekit / "keys.yaml",
                   f"{sec['LIVEKIT_API_KEY']}: {sec['LIVEKIT_API_SECRET']}\n", 0o600, args.livekit_user)
        lk_env = {"REDIS_PASSWORD": sec["REDIS_PASSWORD"]} if sec.get("REDIS_PASSWORD") else {}
        write_file(ch, p.etc_livekit / "livekit.env", render_env("livekit-server's environment", lk_env),
                   0o600, args.livekit_user)

    instances = build_instances(args, p, ports)
    manifest = {"roles": args.roles, "root": str(root), "logs": str(p.logs), "run": str(root / "run" / "jarvis"),
                "ports": ports, "instances": instances}
    write_file(ch, p.etc / "host.json", json.dumps(manifest, indent=2) + "\n", 0o644)

    ensure_dir(ch, p.units, 0o755)
    for template in units_for(args):
        write_file(ch, p.units / template, render_unit(template, p, args), 0o644)
    write_file(ch, p.units / "jarvis.target", target_unit(instances), 0o644)
    if "worker" in args.roles:
        worker_after = [str(name) for name in instances[-1]["after"]]  # type: ignore[attr-defined]
        after = [str(i["unit"]) for i in instances if i["name"] in worker_after]
        ensure_dir(ch, p.units / "jarvis-agent@.service.d", 0o755)
        write_file(ch, p.units / "jarvis-agent@.service.d" / "engines.conf", (
            "# Generated by deploy/install.sh: a worker starts after this host's engines and LiveKit node.\n"
            f"[Unit]\nWants={' '.join(after)}\nAfter={' '.join(after)}\n") if after else
            "# Generated by deploy/install.sh: this host runs no engine and no LiveKit node.\n", 0o644)

    if not args.no_packages:
        install_packages(ch, args, p)
    elif "livekit" in args.roles and not p.livekit_binary.exists():
        # Tests: the project's own build stands in for the installed binary.
        source = Path(args.livekit_binary) if args.livekit_binary else REPO / ".tools" / "livekit-server"
        if source.exists() and not ch.dry_run:
            p.livekit_binary.parent.mkdir(parents=True, exist_ok=True)
            p.livekit_binary.symlink_to(source)
            ch.note(f"{p.livekit_binary} (link to {source})")

    if "engines" in args.roles and not args.no_models:
        fetch_models(ch, args, p, engine_extra)

    if root == Path("/") and not args.dry_run and ch.changed and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    print(f"{len(ch.changed)} {'to change' if args.dry_run else 'changed'}, {ch.unchanged} unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
