"""Where a process tree's CPU goes, for a bench's measured stretch (``bench.voice_loop --profile``).

Two views, because neither sees everything:

- per thread, from ``/proc/<pid>/task/*/stat``: every thread of every process in the tree, native
  ones included (LiveKit's Rust runtime, onnxruntime's pool), grouped by the thread's name;
- per Python function, from py-spy (PyPI) sampling the tree: what the Python threads were doing,
  as own time per function and as time under each package.

A thread is charged to the process it lives in; names are the kernel's ``comm`` (15 characters),
with digits folded so that ``tokio-runtime-w`` workers 1..n count as one group.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# py-spy frame "function (path/to/module.py:line)"; py-spy shortens paths to what follows site-packages.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^:)]*)(?::\d+)?\)$")
_PACKAGES = (
    ("agents/", "livekit-agents"), ("rtc/", "livekit-rtc"), ("plugins/", "livekit-plugins"), ("api/", "livekit-api"),
    ("kyutai_stt/", "kyutai_stt plugin"), ("kyutai_tts/", "kyutai_tts plugin"), ("kyutai_common/", "kyutai_common"),
    ("agent/", "agent (ours)"), ("jarvis/", "jarvis (ours)"), ("asyncio/", "asyncio"), ("websockets/", "websockets"),
    ("aiohttp/", "aiohttp"), ("httpx/", "httpx"), ("httpcore/", "httpx"), ("numpy/", "numpy"),
    ("onnxruntime/", "onnxruntime"), ("openai/", "openai"), ("pydantic", "pydantic"),
    ("opentelemetry/", "opentelemetry"),
)
# Frames where a thread waits (py-spy's idle detection misses some without pausing the process).
_WAITING = ("EpollSelector.select", "Condition.wait", "Event.wait", "Thread.join", "sleep (", "Queue.get")


def tree_pids(root: int) -> list[int]:
    try:
        process = psutil.Process(root)
        return [root, *(child.pid for child in process.children(recursive=True))]
    except psutil.Error:
        return []


def thread_cpu(root: int) -> dict[tuple[int, int], tuple[str, float]]:
    """(pid, tid) → (thread name, CPU seconds so far) for every thread in the tree."""
    out: dict[tuple[int, int], tuple[str, float]] = {}
    for pid in tree_pids(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            out[(pid, int(tid))] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return out


def thread_groups(before: dict[tuple[int, int], tuple[str, float]],
                  after: dict[tuple[int, int], tuple[str, float]], seconds: float) -> dict[str, float]:
    """CPU % (100 = one core) per thread name between two ``thread_cpu`` readings, largest first."""
    groups: dict[str, float] = {}
    for key, (name, cpu) in after.items():
        used = cpu - before.get(key, (name, 0.0))[1]
        if used > 0:
            group = re.sub(r"\d+", "#", name)
            groups[group] = groups.get(group, 0.0) + used
    ranked = sorted(groups.items(), key=lambda item: -item[1])
    return {name: round(100 * cpu / seconds, 1) for name, cpu in ranked if cpu / seconds >= 0.001}


def package_of(frame: str) -> str:
    match = _FRAME.match(frame)
    path = (match["path"] if match else frame).split("site-packages/")[-1].removeprefix("livekit/")
    return next((label for prefix, label in _PACKAGES if path.startswith(prefix)), "other")


def summarise_stacks(raw: str, top: int = 15) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks → the share of samples where a thread waited, then, over the
    busy ones, own time per function and time under each package (%)."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(_WAITING):
            waiting += count
            continue
        total += count
        own[frames[-1]] += count
        for package in {package_of(f) for f in frames[1:]}:
            under[package] += count
    if total == 0:
        return {"samples": waiting, "waiting_pct": 100.0 if waiting else None, "own_pct": {}, "under_pct": {}}
    return {
        "samples": total + waiting,
        "waiting_pct": round(100 * waiting / (total + waiting), 1),
        "own_pct": {f: round(100 * c / total, 1) for f, c in own.most_common(top)},
        "under_pct": {p: round(100 * c / total, 1) for p, c in under.most_common()},
    }


@dataclass
class TreeProfile:
    """Profiles the process tree under ``root`` from ``start()`` to ``stop()``."""

    root: int
    out_dir: Path
    name: str
    rate_hz: int = 50
    _spy: subprocess.Popen[bytes] | None = None
    _before: dict[tuple[int, int], tuple[str, float]] = field(default_factory=dict)
    _t0: float = 0.0

    @property
    def raw_path(self) -> Path:
        return self.out_dir / f"{self.name}.pyspy.txt"

    def start(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if Path(spy).exists():
            self._spy = subprocess.Popen(
                [spy, "record", "--pid", str(self.root), "--subprocesses", "--rate", str(self.rate_hz),
                 "--format", "raw", "--output", str(self.raw_path), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
        self._before, self._t0 = thread_cpu(self.root), time.perf_counter()

    def stop(self) -> dict[str, Any]:
        after, seconds = thread_cpu(self.root), max(time.perf_counter() - self._t0, 1e-6)
        threads = thread_groups(self._before, after, seconds)
        result: dict[str, Any] = {"seconds": round(seconds, 1), "threads_cpu_pct": threads}
        if self._spy is None:
            result["python"] = "py-spy is not installed (pip install py-spy)"
            return result
        self._spy.send_signal(signal.SIGINT)
        try:
            _, err = self._spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._spy.kill()
            _, err = self._spy.communicate()
        if self.raw_path.exists():
            result["python"] = summarise_stacks(self.raw_path.read_text())
            result["python"]["stacks_file"] = str(self.raw_path)
        else:
            result["python"] = f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}"
        return result
