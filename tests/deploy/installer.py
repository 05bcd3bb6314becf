"""Run deploy/install.sh's installer into a temporary root, as the tests of deploy/ do."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.py"
LAUNCH = REPO / "deploy" / "launch.py"
ALL_ROLES = "livekit,engines,worker,token"


def install(root: Path, *args: str, env: dict[str, str] | None = None, models: bool = False) -> str:
    """The installer as ops run it, with no packages (nothing is fetched in tests) and, unless
    ``models``, no model fetch (give it HF_ENDPOINT: a stand-in hub); its output."""
    no_models = [] if models else ["--no-models"]
    result = subprocess.run(
        [sys.executable, str(INSTALL), "--root", str(root), "--no-packages", *no_models, "--venv",
         str(REPO / ".venv"), *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, f"install failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def snapshot(root: Path) -> dict[str, tuple[str, int, int, int, int]]:
    """Every path under root: (content hash or link target, mode, uid, gid, mtime in ns)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            digest = os.readlink(path)
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest = "dir"
        out[str(path.relative_to(root))] = (digest, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


def read_env(path: Path) -> dict[str, str]:
    sys.path.insert(0, str(REPO / "deploy"))
    try:
        from install import parse_env  # the installer's own reader (stdlib only)
    finally:
        sys.path.pop(0)
    return parse_env(path.read_text())
