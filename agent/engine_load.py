"""What this worker's Kyutai engines can still take, for the worker's load (issue 16 item 5).

A worker whose engines are full or down cannot serve another kiosk however few sessions it has,
so its load must say so: LiveKit then sends the job to another worker. The engines' health
routes are polled in a thread of its own (LiveKit calls the load function in an executor thread
every 0.5 s: it must only read a snapshot, never wait on the network).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Literal

import httpx
from kyutai_common.protocol import http_url

logger = logging.getLogger("jarvis.agent.engine_load")

ReplicaState = Literal["ok", "full", "draining", "down"]


@dataclass(frozen=True)
class Replica:
    url: str
    state: ReplicaState
    streams_in_use: int = 0
    max_streams: int = 0


def health_url(engine_url: str) -> str:
    """ws://host:port (a plugin's engine address) -> http://host:port/api/health."""
    return http_url(engine_url, "/api/health")


def replica_from_health(url: str, status_code: int | None, body: object) -> Replica:
    """One replica's state from its health answer (None: no answer)."""
    if status_code is None or not isinstance(body, dict):
        return Replica(url, "down")
    if status_code != 200:
        # 503: draining (SIGTERM) or the model thread died; either way it takes no new stream.
        return Replica(url, "draining" if body.get("status") == "draining" else "down")
    in_use, slots = int(body.get("streams_in_use", 0)), int(body.get("max_streams", 0))
    return Replica(url, "full" if in_use >= slots else "ok", in_use, slots)


def engine_load(engines: dict[str, list[Replica]]) -> float:
    """1.0 when every replica of some engine (STT or TTS) is full, draining or down; else the
    fullest engine's fill (streams in use / slots over the replicas that answer)."""
    fill = 0.0
    for replicas in engines.values():
        if not any(replica.state == "ok" for replica in replicas):
            return 1.0
        live = [replica for replica in replicas if replica.state in ("ok", "full")]
        fill = max(fill, sum(r.streams_in_use for r in live) / max(1, sum(r.max_streams for r in live)))
    return fill


class EngineWatch:
    """Polls every engine replica's /api/health each `interval_s`, in a daemon thread."""

    def __init__(self, engines: dict[str, list[str]], interval_s: float = 1.0, timeout_s: float = 0.5) -> None:
        self.engines = {kind: urls for kind, urls in engines.items() if urls}
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        # Replaced whole by the poller, read whole by load(): no lock needed.
        self._snapshot: dict[str, list[Replica]] | None = None
        self._polled_at = 0.0
        self._thread: threading.Thread | None = None
        self._last_logged: float | None = None

    def start(self) -> None:
        if self._thread is None and self.engines:
            self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="engine-watch", daemon=True)
            self._thread.start()

    def load(self) -> float | None:
        """The engines' load, or None before the first poll or when the poller has stalled."""
        if self._snapshot is None or time.monotonic() - self._polled_at > 5 * self.interval_s + self.timeout_s:
            return None
        return engine_load(self._snapshot)

    def free_streams(self) -> dict[str, dict[str, int]] | None:
        """Free stream slots per kind and replica URL (0 unless it takes streams), for the capacity
        heartbeat; None when load() would be None."""
        snapshot = self._snapshot
        if self.load() is None or snapshot is None:
            return None
        return {
            kind: {r.url: max(0, r.max_streams - r.streams_in_use) if r.state == "ok" else 0 for r in replicas}
            for kind, replicas in snapshot.items()
        }

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while True:
                started = time.monotonic()
                await self.poll(client)
                await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def poll(self, client: httpx.AsyncClient) -> None:
        kinds = list(self.engines)
        answers = await asyncio.gather(
            *(asyncio.gather(*(self._probe(client, url) for url in self.engines[kind])) for kind in kinds)
        )
        self._snapshot = {kind: list(replicas) for kind, replicas in zip(kinds, answers, strict=True)}
        self._polled_at = time.monotonic()
        self._log_change(self._snapshot)

    async def _probe(self, client: httpx.AsyncClient, url: str) -> Replica:
        try:
            response = await client.get(health_url(url))
            body = response.json()
        except httpx.TimeoutException:
            # A busy engine answers health late but still serves its streams: a late answer
            # says nothing new, so the replica keeps its last known state (ok before any).
            # Counting it down flipped a loaded worker's load to 1.0 every other second.
            return self._last_known(url)
        except (httpx.HTTPError, ValueError):
            return replica_from_health(url, None, None)
        return replica_from_health(url, response.status_code, body)

    def _last_known(self, url: str) -> Replica:
        for replicas in (self._snapshot or {}).values():
            for replica in replicas:
                if replica.url == url:
                    return replica
        return Replica(url, "ok")

    def _log_change(self, snapshot: dict[str, list[Replica]]) -> None:
        # One line per change of the engines' verdict, not one per poll.
        load = engine_load(snapshot)
        verdict = 1.0 if load >= 1.0 else 0.0
        if verdict != self._last_logged:
            states = {kind: [r.state for r in replicas] for kind, replicas in snapshot.items()}
            if verdict:
                logger.warning("engines cannot take a session (%s): worker load 1.0", states)
            elif self._last_logged is not None:
                logger.info("engines take sessions again (%s)", states)
            self._last_logged = verdict
