"""The worker's capacity heartbeat (issue 13): what the token service's admission control sums.

LiveKit's load function (``agent/worker.py``, every 0.5 s, in an executor thread) notes the
worker's figures here; ``jarvis.capacity.HeartbeatPublisher`` publishes the latest to Redis every
second from a thread of its own, so a slow Redis never delays the load function or a session.
"""

from __future__ import annotations

import math
import time
from typing import Any

from agent.engine_load import EngineWatch
from agent.settings import AgentSettings
from jarvis.capacity import Heartbeat, HeartbeatPublisher

# A note older than this is not published: the load function stopped, the worker is stuck.
STALE_S = 2.0


class CapacityHeartbeat:
    def __init__(self, settings: AgentSettings, engines: EngineWatch | None) -> None:
        self.max_sessions = max(1, settings.max_sessions)
        self.load_threshold = settings.load_threshold
        self.engines = engines
        self.publisher = HeartbeatPublisher(settings.redis_url, settings.agent_name, self.latest)
        self._beat: Heartbeat | None = None
        self._noted_at = 0.0

    def note(self, server: Any, load: float) -> None:
        """The worker's figures now (``server``: the livekit-agents AgentServer)."""
        jobs = server.active_jobs
        # LiveKit sends a job while load < threshold; sessions beyond that would wait for nobody.
        room_left = math.ceil(self.load_threshold * self.max_sessions) - len(jobs)
        free = 0 if server.draining or load >= self.load_threshold else max(0, room_left)
        engines = self.engines.free_streams() if self.engines is not None else None
        self._beat = Heartbeat(
            worker_id="", free_sessions=free, load=round(load, 3), rooms=[job.job.room.name for job in jobs],
            engines=engines or {},
        )
        self._noted_at = time.monotonic()
        self.publisher.start()  # here: only the main process (never a job process) publishes

    def latest(self, worker_id: str) -> Heartbeat | None:
        beat = self._beat
        if beat is None or time.monotonic() - self._noted_at > STALE_S:
            return None
        return beat.model_copy(update={"worker_id": worker_id})
