"""Prometheus rules, their unit tests and the Grafana dashboard: valid, and naming only metrics that exist.

Each alert fires on a recorded bad series and stays quiet on a good one (promtool test rules,
deploy/prometheus/jarvis.rules.test.yml). LiveKit's metric names are checked against a running node
in test_launch.py (they appear only once the node served a room).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import yaml

from tests.conftest import skip_or_fail
from tests.deploy.observability import (
    DASHBOARD,
    EXTERNAL,
    RULE_TESTS,
    RULES,
    SCRAPE,
    base_name,
    registered_by_livekit_agents,
    registered_by_us,
    used_metrics,
)


def promtool(*args: str) -> str:
    if shutil.which("promtool") is None:
        skip_or_fail("promtool missing (Debian package prometheus)")
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_rules_and_the_scrape_config_are_valid() -> None:
    assert "SUCCESS" in promtool("check", "rules", str(RULES))
    assert "SUCCESS" in promtool("check", "config", str(SCRAPE))


def test_each_alert_fires_on_a_bad_series_and_stays_quiet_on_a_good_one() -> None:
    out = promtool("test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in out
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {t["alertname"] for c in cases for t in c.get("alert_rule_test", []) if t.get("exp_alerts")}
    quiet = {t["alertname"] for c in cases for t in c.get("alert_rule_test", []) if not t.get("exp_alerts")}
    assert fired == alerts, f"alerts never shown firing: {alerts - fired}"
    # The rest stay quiet on the good series recorded beside the bad one, in the same case.
    assert quiet >= {"JarvisVoiceToVoiceSlow", "JarvisVoiceErrors", "JarvisTokenErrors", "JarvisWorkersAtCapacity"}


def test_the_dashboard_loads_and_names_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "jarvis-voice" and dashboard["panels"]
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("voice-to-voice", "stage", "sessions", "errors", "batch", "step time", "gpu memory"):
        assert topic in titles, topic
    ours, lk_agents = registered_by_us(), registered_by_livekit_agents()
    unknown = {
        name for name in used_metrics()
        if not name.startswith("livekit_") and name not in EXTERNAL
        and base_name(name) not in ours and name not in ours and base_name(name) not in lk_agents
    }
    assert not unknown, f"the dashboard or the rules name metrics nobody registers: {sorted(unknown)}"
