"""The GPU suite: `python -m bench.gpu [--quick] [--out FILE] [--budget-s S]`.

One command for a GPU host (16 cores, one large GPU; `scripts/gpu_suite.sh` installs first):
`bench.stt` with real-size random weights and `bench.tts` with `--real-size`, each on an engine
of 256 slots at 1 to 256 active streams, then `bench.voice_loop` at 20, 40 and 64 sessions. Each
runs as its own process (its own CUDA context, so one bench's memory never counts in the next)
under a share of the time budget; what one of them could not do is named in `failed` and the
others still run. The rows of all three come back in one JSON object (BENCH.md's `gpu` row:
each row keeps its bench's keys plus `bench`), with each bench's own top-level figures under
`summaries` and the GPU memory each one peaked at (`gpu_mem_mb`, sampled with `nvidia-smi`
every half second: the engine's weights plus the streaming state of its slots, since both
engines allocate every slot up front).

`--benches stt,tts` runs the engine benches alone (a GPU host that carries only their packages,
without LiveKit, PostgreSQL or Redis), with the whole budget shared between them.

`--quick` proves the suite on a CPU: tiny weights, 1 and 2 streams on 2 slots, one voice-loop
session; a minute or two on 2 cores. Timings never fail the run; it exits non-zero only when no
bench could run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import REPO, ROWS_FILE_ENV, emit, partial_rows, progress

ENGINE_LEVELS = "1,8,32,64,128,256"
SESSION_LEVELS = "20,40,64"


@dataclass(frozen=True)
class Step:
    bench: str
    args: list[str]
    share: float  # of the time budget


def plan(quick: bool) -> list[Step]:
    if quick:
        return [
            Step("stt", ["--quick", "--capacity", "2", "--levels", "1,2", "--seconds", "1.5", "--turns", "1"], 0.35),
            Step("tts", ["--quick", "--capacity", "2", "--levels", "1,2"], 0.3),
            Step("voice_loop", ["--sessions", "1", "--turns", "1"], 0.35),
        ]
    return [
        Step("stt", ["--weights", "real-size-random", "--capacity", "256", "--levels", ENGINE_LEVELS,
                     "--seconds", "4", "--turns", "3"], 0.3),
        Step("tts", ["--real-size", "--capacity", "256", "--levels", ENGINE_LEVELS], 0.3),
        Step("voice_loop", ["--sessions", SESSION_LEVELS, "--turns", "3"], 0.4),
    ]


@dataclass
class GpuMemory:
    """Peak `memory.used` of GPU 0 while a bench runs; None without nvidia-smi."""

    peak_mb: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> GpuMemory:
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True, text=True, timeout=5, check=True,
                )  # fmt: skip
                used = float(out.stdout.strip().splitlines()[0])
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                continue
            self.peak_mb = used if self.peak_mb is None else max(self.peak_mb, used)


def run_step(step: Step, timeout_s: float) -> tuple[dict[str, Any] | None, str | None, float | None]:
    """The bench's JSON (its last stdout line), or why there is none; and its peak GPU memory.
    A bench stopped at its share (or failing) still gives the rows it measured before, as a
    result marked `partial`."""
    progress(f"gpu suite: {step.bench} {' '.join(step.args)} (at most {timeout_s:.0f} s)")
    with tempfile.TemporaryDirectory(prefix=f"gpu-suite-{step.bench}-") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        env = {**os.environ, ROWS_FILE_ENV: str(rows_file)}
        with GpuMemory() as memory:
            try:
                done = subprocess.run(
                    [sys.executable, "-m", f"bench.{step.bench}", *step.args],
                    cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout_s,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                error = f"{step.bench}: over its {timeout_s:.0f} s share of the budget"
                return _partial(rows_file), error, memory.peak_mb
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if done.returncode != 0 or not lines:
            return _partial(rows_file), f"{step.bench}: exit {done.returncode}", memory.peak_mb
        try:
            return json.loads(lines[-1]), None, memory.peak_mb
        except json.JSONDecodeError:
            return _partial(rows_file), f"{step.bench}: its last line is not JSON", memory.peak_mb


def _partial(rows_file: Path) -> dict[str, Any] | None:
    rows = partial_rows(rows_file)
    return {"results": rows, "partial": True} if rows else None


def merge(outcomes: list[tuple[Step, dict[str, Any] | None, str | None, float | None]]) -> dict[str, Any]:
    """Every bench's rows with a `bench` key, their top-level figures and the GPU peaks."""
    rows: list[dict[str, Any]] = []
    summaries: dict[str, Any] = {}
    failed: list[str] = []
    gpu_mem_mb: dict[str, float | None] = {}
    weights: dict[str, str] = {}
    for step, result, error, peak in outcomes:
        gpu_mem_mb[step.bench] = peak
        if error is not None or result is None:
            kept = f" ({len(result['results'])} rows kept)" if result else ""
            failed.append(f"{error or f'{step.bench}: no result'}{kept}")
        if result is None:
            continue
        rows.extend({"bench": step.bench, **row} for row in result.get("results", []))
        weights[step.bench] = str(result.get("weights"))
        summaries[step.bench] = {
            key: value for key, value in result.items()
            if key not in ("results", "bench", "git_rev", "device", "quick", "weights")
        }  # fmt: skip
    return {"results": rows, "summaries": summaries, "failed": failed, "gpu_mem_mb": gpu_mem_mb, "weights": weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="prove the suite on a CPU: tiny weights, small levels")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall time for the benches together")
    parser.add_argument(
        "--benches", default="stt,tts,voice_loop",
        help="which benches to run, comma-separated (the budget is shared among them); a GPU host with "
        "only the engines' packages (scripts/gpu_suite.sh with JARVIS_WHEELS) runs stt,tts",
    )  # fmt: skip
    args = parser.parse_args()
    started = time.perf_counter()
    wanted = {name.strip() for name in args.benches.split(",") if name.strip()}
    steps = [step for step in plan(args.quick) if step.bench in wanted]
    if not steps:
        parser.error(f"--benches names none of {', '.join(step.bench for step in plan(args.quick))}")
    total_share = sum(step.share for step in steps)
    outcomes = []
    for step in steps:
        result, error, peak = run_step(step, args.budget_s * step.share / total_share)
        if error:
            progress(f"gpu suite: {error}")
        outcomes.append((step, result, error, peak))
    merged = merge(outcomes)
    if not merged["results"]:
        progress("gpu suite: no bench could run")
        raise SystemExit(1)
    weights = "real-size-random" if not args.quick else "tiny"
    merged.pop("weights")
    report = emit("gpu", weights=weights, quick=args.quick, elapsed_s=round(time.perf_counter() - started, 1),
                  **merged)  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
