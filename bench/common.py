"""The common shape of every benchmark's JSON (see docs/BENCH.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Set by the GPU suite (bench/gpu.py): each row is also appended here as soon as it is measured,
# so a bench stopped at its share of the budget still gives the rows it had.
ROWS_FILE_ENV = "BENCH_ROWS_FILE"


def git_rev() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return "cpu"


def livekit_agents_installed() -> bool:
    """False on a GPU host that carries only the engines' packages (scripts/gpu_suite.sh with
    JARVIS_WHEELS): the parts of a bench that go through the LiveKit plugins are then skipped."""
    try:
        import livekit.agents  # noqa: F401
    except ImportError:
        return False
    return True


def row_measured(row: dict[str, Any], *, echo: bool = True) -> None:
    """A result row, measured: to stderr (unless the bench says it its own way), and to
    `$BENCH_ROWS_FILE` (one JSON line) when set."""
    if echo:
        progress(f"  {row}")
    rows_file = os.environ.get(ROWS_FILE_ENV)
    if rows_file:
        with open(rows_file, "a", encoding="utf-8") as out:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def partial_rows(rows_file: Path) -> list[dict[str, Any]]:
    """The rows a bench appended to its rows file; a line cut short by a kill is skipped."""
    rows: list[dict[str, Any]] = []
    try:
        lines = rows_file.read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; 0.0 for no values so a JSON field is always a number."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(bench: str, *, weights: str, quick: bool, results: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    """Print the benchmark's one JSON object as the last line of stdout and return it."""
    payload: dict[str, Any] = {
        "bench": bench,
        "git_rev": git_rev(),
        "device": device_name(),
        "weights": weights,
        "quick": quick,
        "results": results,
        **top,
    }
    print(json.dumps(payload, ensure_ascii=False), flush=True)
    return payload
