"""Live capacity, as the workers report it to the token service (issue 13, admission control).

Each worker publishes a heartbeat to Redis every second: its room left for sessions and the free
stream slots of the engines its sessions use. The token service sums them before it opens a room
(``token_service/admission.py``). A heartbeat is a key with a TTL (``HEARTBEAT_TTL_S``): a worker
that died or lost Redis stops counting within that time. A heartbeat is a snapshot that can be
rebuilt at any time, nothing more: losing Redis loses no record.

Keys (``{agent}``: the agent name the worker registers, so workers of other deployments sharing a
Redis never count):

- ``jarvis:worker:{agent}:{worker_id}``: the worker's :class:`Heartbeat` as JSON, ``EX HEARTBEAT_TTL_S``;
- ``jarvis:workers:{agent}``: set of the worker ids that published (the reader drops the expired ones);
- ``jarvis:workers_seen:{agent}``: set (one day) by every heartbeat: workers of this agent publish, so
  no live heartbeat means no capacity (and not "a deployment whose workers never publish").
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis
from pydantic import BaseModel, Field

from jarvis.background import OutageLog

logger = logging.getLogger("jarvis.capacity")

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TTL_S = 3
SEEN_TTL_S = 86_400


def worker_key(agent: str, worker_id: str) -> str:
    return f"jarvis:worker:{agent}:{worker_id}"


def workers_key(agent: str) -> str:
    return f"jarvis:workers:{agent}"


def seen_key(agent: str) -> str:
    return f"jarvis:workers_seen:{agent}"


class Heartbeat(BaseModel):
    worker_id: str
    # Sessions this worker can still take before LiveKit stops sending it jobs (0: full or draining).
    free_sessions: int = Field(ge=0)
    load: float
    # Rooms of the sessions it runs: the token service stops counting them as on their way.
    rooms: list[str] = Field(default_factory=list)
    # Free stream slots of each engine replica its sessions stream to, by kind ("stt", "tts") and
    # URL; workers sharing an engine report the same URL, counted once. Absent: no engines (text).
    engines: dict[str, dict[str, int]] = Field(default_factory=dict)


class HeartbeatPublisher:
    """Publishes what ``read()`` returns every ``interval_s``, from a daemon thread (never the event
    loop, never LiveKit's load thread: a slow Redis must not delay either)."""

    def __init__(self, redis_url: str, agent: str, read: Callable[[str], Heartbeat | None],
                 interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.agent = agent
        self.read = read
        self.interval_s = interval_s
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._thread: threading.Thread | None = None
        # Admission then treats the capacity as unknown (the token service's rule, not ours).
        self._outage = OutageLog(logger, "capacity heartbeat not published", "will retry",
                                 "capacity heartbeat published again")

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="capacity-heartbeat", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            beat = self.read(self.worker_id)
            if beat is not None:
                self.publish(beat)
            time.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    def publish(self, beat: Heartbeat) -> None:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(worker_key(self.agent, beat.worker_id), beat.model_dump_json(), ex=HEARTBEAT_TTL_S)
                pipe.sadd(workers_key(self.agent), beat.worker_id)
                pipe.expire(workers_key(self.agent), SEEN_TTL_S)
                pipe.set(seen_key(self.agent), "1", ex=SEEN_TTL_S)
                pipe.execute()
        except redis.RedisError as exc:
            self._outage.failed(exc)
            return
        self._outage.succeeded()
