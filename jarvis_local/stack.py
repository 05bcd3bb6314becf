"""The local stack on loopback: PostgreSQL, Redis and the LiveKit server, each a real process.

Used by the tests (temporary directories, free ports) and by ``make demo`` / ``make up``
(a project-local data directory under ``.data/``). Nothing here is used in production,
where the services run under systemd (see deploy/).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from jarvis_local.speech_models import SpeechModels

REPO = Path(__file__).resolve().parent.parent
LIVEKIT_BINARY = REPO / ".tools" / "livekit-server"
LIVEKIT_YAML = REPO / "livekit.yaml"
LIVEKIT_START_ATTEMPTS = 3


class StackError(RuntimeError):
    """A local service could not be started."""


# Ports are drawn below Linux's ephemeral range (32768-60999): a port the kernel hands out for
# bind(0) is also the kernel's pick for the next outgoing connection, and on a busy CI machine one
# of those took a LiveKit node's port between our probe and its bind (the node exits 0 on it).
PORT_RANGE = range(20000, 32768)
_handed_out: set[tuple[int, int]] = set()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on, on any address, and not handed out before by this process."""
    for _ in range(200):
        port = secrets.choice(PORT_RANGE)
        if (kind, port) in _handed_out:
            continue
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _handed_out.add((kind, port))
        return port
    raise StackError(f"no free port in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")


def wait_for(check: object, what: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    """Until ``check()`` is true (an OSError counts as not yet); StackError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode}")
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise StackError(f"{what} not ready after {timeout_s:.0f} s")


def _tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def wait_for_port(port: int, what: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    wait_for(lambda: _tcp_open(port), what, timeout_s, proc)


def _postgres_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise StackError(f"PostgreSQL's {name} not found: run `make setup`")
    return candidates[-1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI and the dev machines run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@dataclass
class LiveKitNode:
    """A LiveKit node of a local cluster (``LocalStack.start_livekit_node``)."""

    name: str
    host: str
    port: int
    prometheus_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}/metrics"


@dataclass
class LocalStack:
    """Handles on the running services; ``stop()`` ends them all."""

    workdir: Path
    pg_port: int = 0
    redis_port: int = 0
    livekit_port: int = 0
    livekit_api_key: str = "devkey"
    livekit_api_secret: str = field(default_factory=lambda: secrets.token_hex(24))
    # The Kyutai engines' key: new each run, given to the engines and to the plugins (agent env).
    engine_api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    # Each Kyutai engine process by its ws:// URL (tests kill replicas by it).
    engines: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # How each engine was started (name, module, env prefix, env), by URL: restart_engine reuses it.
    engine_specs: dict[str, tuple[str, str, str, dict[str, str]]] = field(default_factory=dict)
    # The extra LiveKit nodes of a local cluster, by name (start_livekit_node).
    livekit_nodes: dict[str, LiveKitNode] = field(default_factory=dict)
    # Processes that live as long as the stack, besides its own services (``lasting()``).
    lasting_ids: set[int] = field(default_factory=set)

    @property
    def pg_dsn(self) -> str:
        return f"postgresql://jarvis@127.0.0.1:{self.pg_port}/jarvis"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def livekit_url(self) -> str:
        return f"ws://127.0.0.1:{self.livekit_port}"

    def env(self) -> dict[str, str]:
        """The environment our own services read to find the stack."""
        return {
            "JARVIS_DATABASE_URL": self.pg_dsn,
            "JARVIS_REDIS_URL": self.redis_url,
            "LIVEKIT_URL": self.livekit_url,
            "LIVEKIT_API_KEY": self.livekit_api_key,
            "LIVEKIT_API_SECRET": self.livekit_api_secret,
            # The workers' session-log outboxes: this stack's, replayed into this stack's database only.
            "JARVIS_SESSION_LOG__SPOOL_DIR": str(self.workdir / "session-log"),
        }

    # -- PostgreSQL ---------------------------------------------------------------------
    def start_postgres(self) -> None:
        data = self.workdir / "pg"
        sockets = self.workdir / "pg-sockets"
        sockets.mkdir(parents=True, exist_ok=True)
        fresh = not (data / "PG_VERSION").exists()
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres")
            shutil.chown(sockets, "postgres")
            if data.exists():
                shutil.chown(data, "postgres")
        if fresh:
            subprocess.run(
                _as_postgres_user(
                    [_postgres_bin("initdb"), "-D", str(data), "-U", "jarvis", "--auth=trust",
                     "-E", "UTF8", "--locale=C.UTF-8"]
                ),
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
        self.pg_port = self.pg_port or free_port()
        proc = subprocess.Popen(
            _as_postgres_user(
                [_postgres_bin("postgres"), "-D", str(data), "-p", str(self.pg_port), "-k", str(sockets),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=200",
                 # Statement counts, for tests and benches that prove a path costs no query.
                 "-c", "shared_preload_libraries=pg_stat_statements"]
            ),
            stdout=subprocess.DEVNULL, stderr=open(self.workdir / "postgres.log", "ab"),
        )
        self.processes.append(("postgres", proc))
        isready = _postgres_bin("pg_isready")
        wait_for(
            lambda: subprocess.run(
                [isready, "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "jarvis"], capture_output=True
            ).returncode == 0,
            "PostgreSQL", 30, proc,
        )
        if fresh:
            subprocess.run(
                [_postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "jarvis", "jarvis"],
                check=True,
            )
            # Our own throwaway database: any client (tests' ad-hoc connections, psql) sees our
            # schema as our services do (jarvis.db sets the same per connection). Never done to a
            # chain's database: its own unqualified names must keep meaning its public tables.
            subprocess.run(
                [_postgres_bin("psql"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "jarvis", "-d", "jarvis",
                 "-q", "-c", "ALTER DATABASE jarvis SET search_path = jarvis, public"],
                check=True, stdout=subprocess.DEVNULL,
            )

    def stop_postgres(self) -> None:
        """A database outage, as an operator causes one: ``pg_ctl stop -m fast`` (open connections
        cut, new ones refused). ``start_postgres()`` brings it back, same port and data."""
        subprocess.run(
            _as_postgres_user([_postgres_bin("pg_ctl"), "stop", "-D", str(self.workdir / "pg"), "-m", "fast", "-w"]),
            check=True, capture_output=True,
        )  # fmt: skip
        for name, proc in self.processes:
            if name == "postgres":
                proc.wait(timeout=30)
        self.processes = [(name, proc) for name, proc in self.processes if name != "postgres"]

    # -- Redis --------------------------------------------------------------------------
    def start_redis(self) -> None:
        self.redis_port = self.redis_port or free_port()
        proc = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=open(self.workdir / "redis.log", "ab"), stderr=subprocess.STDOUT,
        )
        self.processes.append(("redis", proc))
        wait_for(lambda: _tcp_open(self.redis_port), "Redis", 15, proc)

    # -- LiveKit ------------------------------------------------------------------------
    def livekit_config(
        self, host: str = "127.0.0.1", port: int = 0, redis_db: int = 1, prometheus_port: int = 0
    ) -> dict[str, object]:
        """The production livekit.yaml, bent to loopback: same room defaults, local ports.

        With no ``port``, the stack's own node (``livekit_port``); a cluster node passes its own
        ``host`` (a 127.0.0.x address: its node IP, as each host of a cluster has its own) and port.
        """
        config: dict[str, object] = yaml.safe_load(LIVEKIT_YAML.read_text("utf-8"))
        if not port:
            self.livekit_port = self.livekit_port or free_port()
            port = self.livekit_port
        config["port"] = port
        config["bind_addresses"] = [host]
        rtc = dict(config.get("rtc") or {})  # type: ignore[call-overload]
        rtc.update(
            tcp_port=free_port(),
            udp_port=free_port(socket.SOCK_DGRAM),
            node_ip=host,
            use_external_ip=False,
            enable_loopback_candidate=True,
        )
        for key in ("port_range_start", "port_range_end"):
            rtc.pop(key, None)
        config["rtc"] = rtc
        config.pop("key_file", None)
        config["keys"] = {self.livekit_api_key: self.livekit_api_secret}
        if self.redis_port:
            config["redis"] = {"address": f"127.0.0.1:{self.redis_port}", "db": redis_db}
        else:
            config.pop("redis", None)
        if prometheus_port:
            config["prometheus"] = {"port": prometheus_port}
        config["logging"] = {"level": os.environ.get("JARVIS_LIVEKIT_LOG_LEVEL", "warn"), "json": False}
        return config

    def _run_livekit(self, name: str, config: dict[str, object]) -> subprocess.Popen[bytes]:
        if not LIVEKIT_BINARY.exists():
            raise StackError(f"{LIVEKIT_BINARY} missing: run `make setup`")
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config), "utf-8")
        proc = subprocess.Popen(
            [str(LIVEKIT_BINARY), "--config", str(path)],
            stdout=open(self.workdir / f"{name}.log", "ab"), stderr=subprocess.STDOUT,
        )
        self.processes.append((name, proc))
        host, port = (config["bind_addresses"] or ["127.0.0.1"])[0], config["port"]  # type: ignore[index]

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=1) as r:
                return bool(r.status == 200)

        try:
            wait_for(healthy, f"LiveKit server {name}", 30, proc)
        except StackError as exc:
            raise StackError(f"{exc}; the end of {self.workdir / (name + '.log')}:\n{self.log_tail(name, 10)}") from exc
        return proc

    def _start_livekit(self, name: str, config_for_attempt: Callable[[], dict[str, object]]) -> subprocess.Popen[bytes]:
        """Start a node as systemd's ``Restart=always`` would, each time on fresh RTC ports: a node
        whose port was taken meanwhile (or whose killed predecessor still holds it) prints the
        bind error and exits with code 0 at once."""
        for attempt in range(1, LIVEKIT_START_ATTEMPTS):
            try:
                return self._run_livekit(name, config_for_attempt())
            except StackError as exc:
                if "address already in use" not in str(exc):
                    raise
                print(f"local stack: {name} lost a port (attempt {attempt}), starting it again", file=sys.stderr)
                time.sleep(1.0)
        return self._run_livekit(name, config_for_attempt())

    def start_livekit(self) -> None:
        self._start_livekit("livekit", self.livekit_config)

    def start_livekit_node(
        self, name: str, host: str, redis_db: int, overrides: dict[str, object] | None = None
    ) -> LiveKitNode:
        """One more LiveKit node on ``host`` (127.0.0.x), in the cluster of every node on this stack's
        Redis database ``redis_db``; ``overrides`` replace top-level keys of its configuration.
        ``stop_livekit_node`` takes it down."""
        node = LiveKitNode(name=name, host=host, port=0, prometheus_port=0)

        def config() -> dict[str, object]:
            node.port, node.prometheus_port = free_port(), free_port()
            return {**self.livekit_config(host, node.port, redis_db, node.prometheus_port), **(overrides or {})}

        node.proc = self._start_livekit(name, config)
        self.livekit_nodes[name] = node
        return node

    def stop_livekit_node(self, name: str, *, kill: bool = False, timeout_s: float = 30.0) -> None:
        """SIGTERM (the node drains, then exits) or, with ``kill``, SIGKILL: a crashed host."""
        node = self.livekit_nodes.pop(name)
        assert node.proc is not None
        if kill:
            node.proc.kill()
        else:
            node.proc.terminate()
        try:
            node.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()

    # -- our own services ---------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env(), **(extra_env or {})}
        proc = subprocess.Popen(
            [sys.executable, *args], env=env, cwd=REPO,
            stdout=open(self.workdir / f"{name}.log", "ab"), stderr=subprocess.STDOUT,
        )
        self.processes.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:]) if path.exists() else ""

    def start_token_service(self, extra_env: dict[str, str] | None = None) -> str:
        """``python -m token_service`` on a free port; returns its base URL."""
        port = free_port()
        proc = self._spawn("token_service", ["-m", "token_service"], {"JARVIS_PORT": str(port), **(extra_env or {})})

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return bool(r.status == 200)

        wait_for(healthy, "token service", 60, proc)
        return f"http://127.0.0.1:{port}"

    def start_agent_worker(
        self, extra_env: dict[str, str] | None = None, name: str = "agent", timeout_s: float = 90.0
    ) -> None:
        """``python -m agent start``; returns once the worker registered with LiveKit."""
        log = self.workdir / f"{name}.log"
        # Logs are appended across runs (.data/ for the demo): only this run's lines count.
        start = log.stat().st_size if log.exists() else 0
        proc = self._spawn(name, ["-m", "agent", "start"], extra_env)

        def registered() -> bool:
            with open(log, "rb") as f:
                f.seek(start)
                return b"registered worker" in f.read()

        wait_for(
            registered,
            f"agent worker (log: {log})", timeout_s, proc,
        )

    def start_jarvis(self, agent_name: str, worker_env: dict[str, str], log_name: str) -> str:
        """A token service dispatching ``agent_name`` and one worker registered under it.

        Tests and benches each use their own agent name, so no worker serves another's sessions.
        Returns the token service URL.
        """
        token_url = self.start_token_service({"JARVIS_AGENT_NAME": agent_name})
        self.start_agent_worker(
            {"JARVIS_NUM_IDLE_PROCESSES": "1", **worker_env, "JARVIS_AGENT_NAME": agent_name}, log_name
        )
        return token_url

    def _start_engine(self, name: str, module: str, prefix: str, env: dict[str, str], port: int = 0) -> str:
        port = port or free_port()
        proc = self._spawn(
            name, ["-m", module],
            {f"{prefix}HOST": "127.0.0.1", f"{prefix}PORT": str(port), f"{prefix}TORCH_THREADS": "1",
             f"{prefix}API_KEYS": json.dumps([self.engine_api_key]),
             "NO_TORCH_COMPILE": "1", "HF_HUB_OFFLINE": "1", **env},
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as r:
                return bool(r.status == 200)

        # Loading and warming a model up takes a while on a small CPU.
        wait_for(healthy, f"{module} (log: {self.workdir / (name + '.log')})", 180, proc)
        self.engines[f"ws://127.0.0.1:{port}"] = proc
        self.engine_specs[f"ws://127.0.0.1:{port}"] = (name, module, prefix, env)
        return f"ws://127.0.0.1:{port}"

    def restart_engine(self, url: str, stop_timeout_s: float = 60.0) -> int:
        """What a rolling upgrade does to one replica: SIGTERM (the engine drains), wait for it to
        exit, start it again on the same port and wait until healthy. Returns the old exit code."""
        proc = self.engines[url]
        proc.terminate()
        code = proc.wait(timeout=stop_timeout_s)
        name, module, prefix, env = self.engine_specs[url]
        self._start_engine(name, module, prefix, env, port=int(url.rsplit(":", 1)[1]))
        return code

    def start_speech_engines(
        self, models: SpeechModels, streams: int = 32, replicas: int = 1, *, concurrently: bool = False
    ) -> dict[str, str]:
        """The Kyutai STT and TTS engine servers (``replicas`` of each, the plugins spreading streams
        over them); returns the plugins' environment to reach them. ``concurrently``: every engine
        loads at once (a cluster's four engines in the time of the slowest, not of all four)."""
        stt_env, tts_env = models.engine_env()
        specs = [
            (f"kyutai-{kind}{'' if i == 0 else f'-{i}'}", f"kyutai_{kind}.server", f"KYUTAI_{kind.upper()}_",
             {**env, f"KYUTAI_{kind.upper()}_MAX_STREAMS": str(streams)})
            for kind, env in (("stt", stt_env), ("tts", tts_env))
            for i in range(replicas)
        ]  # fmt: skip
        if concurrently:
            with ThreadPoolExecutor(len(specs)) as pool:
                urls = list(pool.map(lambda spec: self._start_engine(*spec), specs))
        else:
            urls = [self._start_engine(*spec) for spec in specs]
        stt_urls, tts_urls = urls[:replicas], urls[replicas:]
        env = {"KYUTAI_STT_URL": stt_urls[0], "KYUTAI_TTS_URL": tts_urls[0],
               "KYUTAI_STT_URLS": ",".join(stt_urls), "KYUTAI_TTS_URLS": ",".join(tts_urls),
               "KYUTAI_STT_API_KEY": self.engine_api_key, "KYUTAI_TTS_API_KEY": self.engine_api_key}
        if models.tts_default_voice:
            env["KYUTAI_TTS_VOICE"] = models.tts_default_voice
        return env

    def running(self) -> set[int]:
        """The ids of the processes started so far: ``stop_started_since`` takes them."""
        return {id(proc) for _name, proc in self.processes}

    @contextlib.contextmanager
    def lasting(self) -> Iterator[None]:
        """What starts inside lives as long as the stack (a session-wide worker or token service):
        ``stop_started_since`` leaves it running."""
        before = self.running()
        try:
            yield
        finally:
            self.lasting_ids |= self.running() - before

    def stop_started_since(self, before: set[int]) -> list[str]:
        """Stops every process started after ``before`` (from ``running()``) except the stack's own
        PostgreSQL, Redis and LiveKit node (restarted by fault tests) and what ``lasting()`` started:
        a test module's engines and workers must not load the machine for the rest of a run.
        Returns the names of those that were still running."""
        kept = {"postgres", "redis", "livekit"}
        ending = [(name, proc) for name, proc in self.processes
                  if id(proc) not in before and id(proc) not in self.lasting_ids and name not in kept]  # fmt: skip
        stopped = [name for name, proc in ending if proc.poll() is None]
        self._end([proc for _name, proc in ending])
        ended = {id(proc) for _name, proc in ending}
        self.processes = [(name, proc) for name, proc in self.processes if id(proc) not in ended]
        for url in [url for url, proc in self.engines.items() if id(proc) in ended]:
            del self.engines[url]
            self.engine_specs.pop(url, None)
        for name in [name for name, node in self.livekit_nodes.items() if id(node.proc) in ended]:
            del self.livekit_nodes[name]
        return stopped

    @staticmethod
    def _end(procs: list[subprocess.Popen[bytes]]) -> None:
        """SIGTERM to all at once (each drains meanwhile), then SIGKILL what is still up after 10 s."""
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        self._end([proc for _name, proc in self.processes])
        self.processes.clear()


@contextlib.contextmanager
def local_stack(workdir: Path | None = None, *, livekit: bool = True) -> Iterator[LocalStack]:
    """Start PostgreSQL, Redis and (optionally) LiveKit; stop them all on exit.

    With no ``workdir``, everything lives in a temporary directory removed afterwards, unless
    ``JARVIS_KEEP_STACK_DIR=1``: then it stays, every process's log in it, for a post-mortem.
    """
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="jarvis-stack-")
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir=workdir)
    try:
        stack.start_postgres()
        stack.start_redis()
        if livekit:
            stack.start_livekit()
        yield stack
    finally:
        stack.stop()
        if tmp is not None and os.environ.get("JARVIS_KEEP_STACK_DIR") == "1":
            print(f"local stack: kept {tmp} (JARVIS_KEEP_STACK_DIR=1)", file=sys.stderr)
        elif tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
