"""Prometheus metrics of the token service (one registry per app, so tests can build several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class TokenServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "jarvis_token_requests_total", "HTTP requests by route and status", ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "jarvis_token_request_seconds", "HTTP request latency by route", ["route"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.context_cache = Counter(
            "jarvis_token_context_cache_total", "Member context cache lookups", ["result"],
            registry=self.registry,
        )
