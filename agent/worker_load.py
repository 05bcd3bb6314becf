"""The worker's load, and the worker's own yes or no to each job LiveKit offers it.

Why not livekit-agents' ``load_threshold``: while a job waits for its process, livekit-agents
counts it as ``load_threshold / num_idle_processes`` of load when no other job runs. So an idle
worker with one warm process (or none) reports itself full while any job starts, for up to its 2.5 s
status interval, and LiveKit drops, never retries, the dispatch of a room created meanwhile: that
kiosk waits for a JARVIS that never comes (tests/platform/test_worker_keeps_serving.py). So the
worker gives LiveKit no threshold (``math.inf``), and its load stays honest on two counts:

- LiveKit weighs workers by ``1 - load`` and never sends a job to a worker whose reported load is
  1.0 or more (full sessions, or full engines);
- each offered job is checked here against the load now, a job starting counted as one session
  (not as a share of the threshold); a worker at ``load_threshold`` passes the job on, and LiveKit
  offers it to the next worker.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from livekit.agents import JobRequest

from agent.engine_load import EngineWatch

logger = logging.getLogger("jarvis.agent")

# An accepted job not seen running after this long never will be (LiveKit assigned it elsewhere,
# or its process failed to start): it stops counting.
STARTING_FOR_AT_MOST_S = 90.0


class WorkerLoad:
    def __init__(self, max_sessions: int, load_threshold: float, engines: EngineWatch | None) -> None:
        self.max_sessions = max(1, max_sessions)
        self.load_threshold = load_threshold
        self.engines = engines
        # Jobs accepted whose process has not started them yet (job id -> when): LiveKit reads the
        # load from an executor thread, jobs are accepted on the event loop.
        self._starting: dict[str, float] = {}
        self._lock = threading.Lock()
        self._full = False

    def sessions(self, server: Any) -> int:
        running = {job.job.id for job in server.active_jobs}
        now = time.monotonic()
        with self._lock:
            for job_id, accepted_at in list(self._starting.items()):
                if job_id in running or now - accepted_at > STARTING_FOR_AT_MOST_S:
                    del self._starting[job_id]
            return len(running) + len(self._starting)

    def load(self, server: Any) -> float:
        """Sessions (running or starting) / max_sessions; 1.0 when the engines cannot take one more."""
        sessions = self.sessions(server)
        load = sessions / self.max_sessions
        if self.engines is not None:
            engine = self.engines.load()
            load = load if engine is None else max(load, engine)
        full = load >= self.load_threshold
        if full != self._full:
            self._full = full
            if full:
                logger.info("worker full (%d session(s), load %.2f): new kiosks go elsewhere", sessions, load)
            else:
                logger.info("worker takes sessions again (%d session(s), load %.2f)", sessions, load)
        return load

    async def on_request(self, request: JobRequest, server: Any) -> None:
        load = self.load(server)
        if load >= self.load_threshold:
            # Not terminate: LiveKit offers the job to the next worker.
            logger.info("job %s passed on: worker full (load %.2f)", request.id, load)
            await request.reject(terminate=False)
            return
        with self._lock:
            self._starting[request.id] = time.monotonic()
        await request.accept()
