"""The kiosk package's own unit tests (node's test runner: state machine, show_video payload
validation, reconnect policy, transcript, token API client, demo gym backend), run by pytest
so the README's single test command covers them. No browser needed."""

from __future__ import annotations

import re
import subprocess

from jarvis_local.browser import KIOSK


def test_kiosk_package_unit_tests_pass() -> None:
    run = subprocess.run(["npm", "test", "--silent"], cwd=KIOSK, capture_output=True, text=True, timeout=240)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-4000:]
    passed = re.search(r"^# pass (\d+)$", report, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", report, re.MULTILINE)
    assert passed and int(passed.group(1)) >= 40, report[-2000:]
    assert failed and int(failed.group(1)) == 0, report[-2000:]
