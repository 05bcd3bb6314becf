#!/usr/bin/env python3
"""Run this host's JARVIS roles as plain processes, where systemd is absent (GPU pods, containers).

    deploy/launch.py [--root /] [--only jarvis-agent@1,...]

It reads what deploy/install.sh generated (/etc/jarvis/host.json, the same environment files the
systemd units read) and does what the units do:
  - starts each instance with its unit's fixed environment (the engines read only the model cache the
    installer filled: HF_HUB_OFFLINE=1) and its environment files (later files win, as systemd's
    EnvironmentFile),
    as its user when run as root, in its working directory, output to /var/log/jarvis/<name>.log;
  - starts an instance once those it comes after answer their health URL (workers after the engines);
  - gives each worker a fresh, empty PROMETHEUS_MULTIPROC_DIR (the units' RuntimeDirectory);
  - restarts an instance that exits with an error (Restart=on-failure), 2 s later;
  - on SIGTERM or Ctrl-C stops them in reverse order (workers first, so their sessions drain while
    the engines and LiveKit still serve them), each with its stop timeout, then SIGKILL.
Prints "ready: <name>" as each instance answers, then "all ready". Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The same reading of the environment files as the installer's (run from the checkout, beside it).
from install import parse_env

# systemd starts services with this PATH and nothing of the caller's environment.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
RESTART_S = 2.0
# What systemd's Restart=on-failure counts as clean: exit 0 or death by one of these signals
# (uvicorn re-raises the SIGTERM it handled, so the token service "dies" of it after a clean stop).
CLEAN_EXITS = {0, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP, -signal.SIGPIPE}
START_TIMEOUT_S = 900.0  # a first start may fetch several GB of checkpoints


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Instance:
    spec: dict[str, Any]
    run_dir: Path
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    restarts: int = 0
    exited_at: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    keep_user: bool = False  # run as the launcher's own user, whatever host.json says

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def environment(self) -> dict[str, str]:
        # The unit's Environment= (the engines' HF_HUB_OFFLINE=1), then its env files, which may override it.
        env = {**BASE_ENV, **self.spec.get("environment", {})}
        for item in self.spec["env_files"]:
            path = Path(item)
            if path.exists():  # optional files (local.env, livekit.env) may be absent, as `EnvironmentFile=-`
                env |= parse_env(path.read_text())
        if self.spec.get("prometheus_multiproc"):
            # Fresh at each start, as the unit's RuntimeDirectory: stale files would keep dead sessions counted.
            directory = self.run_dir / f"jarvis-agent-{self.name.split('@')[1]}"
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            self._chown(directory)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        return env

    def _user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0 or self.keep_user:
            return None
        try:
            return pwd.getpwnam(str(self.spec["user"]))
        except KeyError:
            return None

    def _chown(self, path: Path) -> None:
        user = self._user()
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    def start(self) -> None:
        self.env = self.environment()
        user = self._user()
        log = open(self.log_dir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            [str(a) for a in self.spec["argv"]], env=self.env, cwd=self.spec.get("cwd") or "/",
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
        log.close()
        self.ready = False
        print(f"started: {self.name} (pid {self.proc.pid})", flush=True)

    def stop(self) -> int | None:
        """SIGTERM, wait the stop timeout (the instance drains), then SIGKILL its process group."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=float(self.spec["stop_timeout_s"]))
        except subprocess.TimeoutExpired:
            print(f"killed: {self.name} (still running after {self.spec['stop_timeout_s']} s)", flush=True)
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


class Launcher:
    def __init__(self, manifest: dict[str, Any], only: set[str] | None, keep_user: bool = False) -> None:
        run_dir, log_dir = Path(manifest["run"]), Path(manifest["logs"])
        run_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.instances = [
            Instance(spec, run_dir, log_dir, keep_user=keep_user)
            for spec in manifest["instances"] if not only or spec["name"] in only
        ]
        self.by_name = {i.name: i for i in self.instances}
        self.stopping = False

    def _wait_ready(self, names: list[str]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        for name in names:
            dep = self.by_name.get(name)
            if dep is None:  # filtered out with --only: assume it runs elsewhere
                continue
            while not dep.ready:
                self.supervise_once()
                if self.stopping:
                    return
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} not healthy after {START_TIMEOUT_S:.0f} s (log: {dep.name}.log)")
                time.sleep(0.5)

    def supervise_once(self) -> None:
        for inst in self.instances:
            if inst.proc is None or self.stopping:
                continue
            code = inst.proc.poll()
            if code is None:
                if not inst.ready and healthy(str(inst.spec["health"])):
                    inst.ready = True
                    print(f"ready: {inst.name} {inst.spec['health']}", flush=True)
                continue
            if code in CLEAN_EXITS:
                continue  # Restart=on-failure: a clean exit stays down
            if inst.exited_at is None:
                inst.exited_at = time.monotonic()
                print(f"exited: {inst.name} with code {code}; restarting in {RESTART_S:.0f} s", flush=True)
            elif time.monotonic() - inst.exited_at >= RESTART_S:
                inst.exited_at = None
                inst.restarts += 1
                inst.start()

    def run(self) -> int:
        def on_signal(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        for inst in self.instances:
            self._wait_ready([str(n) for n in inst.spec.get("after", [])])
            if self.stopping:
                break
            inst.start()
        self._wait_ready([i.name for i in self.instances])
        if not self.stopping:
            print("all ready", flush=True)
        while not self.stopping:
            self.supervise_once()
            time.sleep(1.0)
        for inst in reversed(self.instances):
            code = inst.stop()
            if code is not None:
                print(f"stopped: {inst.name} (exit {code})", flush=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/", help="the --root given to install.sh")
    ap.add_argument("--only", default="", help="comma-separated instance names (default: all of host.json)")
    ap.add_argument("--keep-user", action="store_true",
                    help="run every instance as the invoking user (a pod where all runs as root; the tests)")
    args = ap.parse_args(argv)
    manifest = json.loads((Path(args.root) / "etc" / "jarvis" / "host.json").read_text())
    only = {n.strip() for n in args.only.split(",") if n.strip()} or None
    return Launcher(manifest, only, args.keep_user).run()


if __name__ == "__main__":
    sys.exit(main())
