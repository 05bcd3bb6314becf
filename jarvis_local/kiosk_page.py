"""The kiosk page and its demo gym backend (kiosk/server/demo-server.mjs), as a process.

``make up`` and the browser tests start it next to the token service; the page is then at
the returned URL. It needs ``make setup`` (npm packages and the page build in kiosk/).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

KIOSK = Path(__file__).resolve().parent.parent / "kiosk"
DEMO_SERVER = KIOSK / "server" / "demo-server.mjs"


class KioskPageError(RuntimeError):
    """The kiosk page could not be served."""


def start_kiosk_page(
    token_service_url: str, port: int = 0, host: str = "127.0.0.1", extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Starts the demo gym backend serving the built page; returns the process and the page URL.

    ``extra_env``: its other settings (JARVIS_DEMO_KIOSK_ID, JARVIS_DEMO_LEGACY_ENDPOINT, …)."""
    node = shutil.which("node")
    if node is None or not (KIOSK / "dist" / "page" / "index.html").exists():
        raise KioskPageError("the kiosk page is not built: run `make setup` (npm ci and build in kiosk/)")
    env = {
        **os.environ,
        "JARVIS_TOKEN_SERVICE_URL": token_service_url,
        "JARVIS_KIOSK_PORT": str(port),
        "JARVIS_KIOSK_HOST": host,
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [node, str(DEMO_SERVER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("KIOSK_URL="):
        proc.terminate()
        raise KioskPageError(f"the kiosk demo server did not start (port {port} busy?): {line!r}")
    return proc, line.removeprefix("KIOSK_URL=").strip()


@contextlib.contextmanager
def kiosk_page(token_service_url: str, port: int = 0, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """The kiosk page for as long as the block runs; yields its URL."""
    proc, url = start_kiosk_page(token_service_url, port, extra_env=extra_env)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
