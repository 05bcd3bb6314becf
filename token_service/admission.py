"""Admission control: no room for a kiosk when no agent would come to it (issue 13).

LiveKit never dispatches a job for a room created while every worker reports itself full; the
kiosk would join and wait for nobody. So before a room exists the token service sums the live
capacity the workers publish (``jarvis/capacity.py``: each worker's room for sessions and the free
stream slots of the engines, every second, with a 3 s TTL), takes away the sessions it admitted
that no worker runs yet, and refuses the session with 503 ``over_capacity`` and ``Retry-After``
when nothing is left. Sessions already admitted keep their room to breathe.

Sessions on their way: every admitted room goes into the sorted set ``jarvis:admitted:{agent}``
(score: when) for ``pending_s``; a room is on its way until a worker's heartbeat lists it. A new
session is admitted when its rank among the rooms on their way is below the capacity: two
instances admitting at the same instant agree on who is first, without a lock.

When capacity is unknown the session is admitted (fail open) and the kiosk's own bound on the
agent's arrival (issue 13 item 3) is the backstop:

- Redis does not answer: capacity lives only in Redis (heartbeats are snapshots, not records); a
  Redis outage must not turn every kiosk away while PostgreSQL, the source of truth, still serves;
- no worker of this agent has ever published (``jarvis:workers_seen:{agent}`` absent): workers that
  do not publish yet (a deployment mid-upgrade), not "no capacity".

Once workers of the agent have published, no live heartbeat means no capacity: every worker died or
drains, and the kiosk gets ``over_capacity`` at once instead of an empty room.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from jarvis.capacity import Heartbeat, seen_key, worker_key, workers_key

logger = logging.getLogger("token_service.admission")

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class OverCapacity(Exception):
    def __init__(self, retry_after_s: int, reading: Capacity) -> None:
        super().__init__("no capacity for a new session")
        self.retry_after_s = retry_after_s
        self.reading = reading


@dataclass(frozen=True)
class Capacity:
    """What the live heartbeats say, summed."""

    workers: int
    free_sessions: int
    # Free stream slots per engine kind (each replica counted once, however many workers use it).
    engine_free: dict[str, int]
    rooms: frozenset[str]

    @property
    def free(self) -> int:
        return min(self.free_sessions, *self.engine_free.values()) if self.engine_free else self.free_sessions


def sum_heartbeats(beats: list[Heartbeat]) -> Capacity:
    engines: dict[str, dict[str, int]] = {}
    for beat in beats:
        for kind, replicas in beat.engines.items():
            seen = engines.setdefault(kind, {})
            for url, free in replicas.items():
                # Two workers' readings of one replica differ by their timing: take the lower.
                seen[url] = min(free, seen.get(url, free))
    return Capacity(
        workers=len(beats),
        free_sessions=sum(beat.free_sessions for beat in beats),
        engine_free={kind: sum(replicas.values()) for kind, replicas in engines.items()},
        rooms=frozenset(room for beat in beats for room in beat.rooms),
    )


def admitted_key(agent: str) -> str:
    return f"jarvis:admitted:{agent}"


class Admission:
    def __init__(self, redis_client: Any, agent: str, registry: CollectorRegistry, *, pending_s: float = 15.0,
                 retry_after_s: int = 5, reading_ttl_s: float = 0.1) -> None:
        self.redis = redis_client
        self.agent = agent
        self.pending_s = pending_s
        self.retry_after_s = retry_after_s
        # The heartbeats change once a second: a reading this young serves a burst of requests
        # (the rooms on their way are read afresh every time).
        self.reading_ttl_s = reading_ttl_s
        self._reading: Capacity | None = None
        self._read_at = -1e9
        self.decisions = Counter(
            "jarvis_token_admission_total",
            "Admission decisions: admitted, over_capacity, unknown (admitted: Redis down or no worker publishes)",
            ["result"], registry=registry,
        )
        self._unknown_logged = 0.0

    async def capacity(self) -> Capacity | None:
        """The live capacity; None when no worker of this agent has ever published."""
        if time.monotonic() - self._read_at < self.reading_ttl_s:
            return self._reading
        started = time.monotonic()
        self._reading = await self._read_capacity()
        self._read_at = started
        return self._reading

    async def _read_capacity(self) -> Capacity | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(seen_key(self.agent))
            pipe.smembers(workers_key(self.agent))
            seen, members = await pipe.execute()
        if not seen:
            return None
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        values = await self.redis.mget([worker_key(self.agent, i) for i in ids]) if ids else []
        beats: list[Heartbeat] = []
        gone: list[str] = []
        for worker_id, raw in zip(ids, values, strict=True):
            if raw is None:
                gone.append(worker_id)
                continue
            try:
                beats.append(Heartbeat.model_validate_json(raw))
            except ValidationError:
                logger.warning("worker %s published a heartbeat this version cannot read", worker_id)
        if gone:
            await self.redis.srem(workers_key(self.agent), *gone)
        return sum_heartbeats(beats)

    async def check(self, *, redis_down: bool = False) -> None:
        """The fast refusal: raise :class:`OverCapacity` when nothing is left, before the caller
        does any other work (no member load, no reservation). ``admit`` still decides."""
        if redis_down:
            return
        try:
            reading = await self.capacity()
            if reading is None:
                return
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(admitted_key(self.agent), "-inf", time.time() - self.pending_s)
                pipe.zrange(admitted_key(self.agent), 0, -1)
                _, ordered = await pipe.execute()
        except REDIS_ERRORS:
            return  # admit() says so in the log and the metric
        on_their_way = sum(1 for m in ordered if (m.decode() if isinstance(m, bytes) else m) not in reading.rooms)
        if reading.free - on_their_way <= 0:
            self.decisions.labels("over_capacity").inc()
            raise OverCapacity(self.retry_after_s, reading)

    async def admit(self, room: str, *, redis_down: bool = False) -> Capacity | None:
        """Reserve a place for ``room`` or raise :class:`OverCapacity`. None: capacity unknown, admitted.

        ``redis_down``: the service already knows Redis does not answer (it skips Redis for a while)."""
        if redis_down:
            self._unknown("Redis does not answer")
            return None
        try:
            reading = await self.capacity()
            if reading is None:
                self._unknown("no worker of this agent publishes its capacity")
                return None
            now = time.time()
            key = admitted_key(self.agent)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(key, "-inf", now - self.pending_s)
                pipe.zadd(key, {room: now})
                pipe.expire(key, math.ceil(self.pending_s) + 1)
                pipe.zrange(key, 0, -1)
                *_, ordered = await pipe.execute()
            rooms = [m.decode() if isinstance(m, bytes) else m for m in ordered]
            arrived = [r for r in rooms if r in reading.rooms]
            if arrived:  # a worker runs them: no longer on their way, even once they end
                await self.redis.zrem(key, *arrived)
            on_their_way = [r for r in rooms if r not in reading.rooms]
            if room in on_their_way and on_their_way.index(room) < reading.free:
                self.decisions.labels("admitted").inc()
                return reading
            await self.redis.zrem(key, room)
        except REDIS_ERRORS as exc:
            self._unknown(f"Redis does not answer ({type(exc).__name__})")
            return None
        self.decisions.labels("over_capacity").inc()
        raise OverCapacity(self.retry_after_s, reading)

    def _unknown(self, why: str) -> None:
        self.decisions.labels("unknown").inc()
        # One line every 30 s, not one per kiosk.
        if time.monotonic() - self._unknown_logged > 30:
            self._unknown_logged = time.monotonic()
            logger.warning("admission: capacity unknown, admitting (%s)", why)

