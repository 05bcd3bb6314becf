"""The common shape of every benchmark's JSON (see docs/BENCH.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


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
