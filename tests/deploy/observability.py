"""The metric names our dashboard and alert rules use, and the names our code registers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.deploy.installer import REPO

RULES = REPO / "deploy/prometheus/jarvis.rules.yml"
RULE_TESTS = REPO / "deploy/prometheus/jarvis.rules.test.yml"
SCRAPE = REPO / "deploy/prometheus/prometheus.yml"
DASHBOARD = REPO / "deploy/grafana/jarvis.json"
# Where our processes register their metrics.
SOURCES = ["agent/metrics.py", "token_service/metrics.py", "plugins/kyutai_stt/server.py",
           "plugins/kyutai_tts/server.py"]
# Other exporters' metrics, by who exports them (not ours to check here): Prometheus itself (up),
# blackbox_exporter (probe_success) and NVIDIA's dcgm-exporter (GPU memory).
EXTERNAL = {"up", "probe_success", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}
_METRIC = re.compile(
    r"\b((?:jarvis|kyutai|lk_agents|livekit)_[A-Za-z0-9_]+|DCGM_[A-Z0-9_]+|probe_success|up)\b(?!\s*[=!]~?)"
)
_SUFFIXES = ("_bucket", "_count", "_sum")


def exprs() -> list[str]:
    """Every PromQL expression: the rules' and the dashboard's panels'."""
    rules = yaml.safe_load(RULES.read_text())
    out = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    out += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return out


def used_metrics() -> set[str]:
    names: set[str] = set()
    for expr in exprs():
        # label matchers' values ("voice_to_voice") are not metric names
        expr = re.sub(r'"[^"]*"', '""', expr)
        names |= {m.group(1) for m in _METRIC.finditer(expr)}
    return names


def base_name(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def registered_by_us() -> set[str]:
    """The names passed to Counter/Gauge/Histogram in our code (a Counter's name already ends in _total)."""
    names: set[str] = set()
    for source in SOURCES:
        names |= set(re.findall(r'"((?:jarvis|kyutai)_[a-z0-9_]+)"', (REPO / source).read_text()))
    return names


def registered_by_livekit_agents() -> set[str]:
    import livekit.agents.telemetry.metrics as lk

    return set(re.findall(r'"(lk_agents_[a-z0-9_]+)"', Path(lk.__file__).read_text()))
