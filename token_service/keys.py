"""Gym API keys: which gym a key belongs to, at the cost of at most one query per key and client.

A valid key is kept in memory for ``cache_ttl_s``. A task of its own checks every key known valid
again, in one query, every half of that: a revoked key stops within ``cache_ttl_s``, and a request
with a known key never waits for the database (on a loaded host such a check on a request's path
took hundreds of ms). A wrong key is kept as wrong for ``bad_key_ttl_s``, so a backend retrying the same bad
key costs nothing. A flood of *random* keys defeats any cache, so each client (IP) may send only
``bad_keys_per_minute`` wrong keys; after that its unknown keys are refused unchecked (429) until
the minute ends. A key this process has seen valid is always checked, even from such a client: a
gym behind the same address as an attacker (a shared NAT, loopback in tests) keeps working.

All in memory, per process: free to check, and it still works when Redis is down. Behind N
processes a client gets N times the allowance, still a bounded number of queries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from jarvis.background import OutageLog, Periodic
from jarvis.db import gym_key_hash

KEY_QUERY = (
    "SELECT g.id::text AS gym_id, g.city, g.rate_limit_per_minute FROM gym_api_keys k"
    " JOIN gyms g ON g.id = k.gym_id WHERE k.key_hash = $1 AND k.revoked_at IS NULL"
)

# The keys known valid, checked again together (their gyms' settings may have changed too).
KNOWN_KEYS_QUERY = (
    "SELECT k.key_hash, g.id::text AS gym_id, g.city, g.rate_limit_per_minute FROM gym_api_keys k"
    " JOIN gyms g ON g.id = k.gym_id WHERE k.key_hash = ANY($1::text[]) AND k.revoked_at IS NULL"
)

logger = logging.getLogger("token_service.keys")


@dataclass(frozen=True)
class GymKey:
    gym_id: str
    city: str
    rate_limit_per_minute: int

    @classmethod
    def from_row(cls, row: Any) -> GymKey:
        """From a row of KEY_QUERY or KNOWN_KEYS_QUERY."""
        return cls(row["gym_id"], row["city"], row["rate_limit_per_minute"])


class TooManyBadKeys(Exception):
    """This client sent too many wrong keys this minute: refused without a query."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("too many wrong gym API keys from this client")
        self.retry_after_s = retry_after_s


class BadKeyLimiter:
    """Wrong keys per client in fixed one-minute windows (the counts are dropped when one ends)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window = 0
        self._counts: dict[str, int] = {}

    def _roll(self, now: float) -> None:
        window = int(now // 60)
        if window != self._window:
            self._window = window
            self._counts.clear()

    def blocked(self, client: str, now: float) -> bool:
        self._roll(now)
        return self._counts.get(client, 0) >= self.per_minute

    def note_bad_key(self, client: str, now: float) -> None:
        self._roll(now)
        self._counts[client] = self._counts.get(client, 0) + 1

    def forgive(self, client: str) -> None:
        """The key counted in advance turned out valid."""
        if self._counts.get(client, 0) > 0:
            self._counts[client] -= 1

    @staticmethod
    def retry_after_s(now: float) -> int:
        return max(1, 60 - int(now % 60))


class GymKeys:
    """Key → gym, with the caches and the per-client limit described in the module docstring."""

    # Bounds the memory a flood can take: past it the wrong-key cache starts over (a few lookups more).
    MAX_BAD_KEYS = 10_000
    # Lookups of keys never seen valid at once, of the pool's 10 connections.
    UNKNOWN_LOOKUPS = 2

    def __init__(
        self, pool: Callable[[], Awaitable[Any]], *, cache_ttl_s: float, bad_key_ttl_s: float,
        bad_keys_per_minute: int,
    ) -> None:
        self._pool = pool
        self._cache_ttl_s = cache_ttl_s
        self._bad_key_ttl_s = bad_key_ttl_s
        # digest -> (gym, fresh until). Expired entries stay (one per valid key): they mark the key as
        # one to check again even for a limited client.
        self._known: dict[str, tuple[GymKey, float]] = {}
        self._bad: dict[str, float] = {}
        self.limiter = BadKeyLimiter(bad_keys_per_minute)
        self._unknown_lookups = asyncio.Semaphore(self.UNKNOWN_LOOKUPS)
        self._rechecker = Periodic("gym-keys-recheck", cache_ttl_s / 2, self.recheck_known)
        self._outage = OutageLog(logger, "gym API keys not checked again", "each expires on its own",
                                 "gym API keys checked again")

    def answer_from_memory(
        self, key: str, client: str
    ) -> GymKey | Literal["ask the database", "wrong", "too many wrong"]:
        """What memory alone says, without raising (the key gate's path: a refusal costs the key's hash
        and three dict lookups, close to a request without a key): the gym of a key known valid,
        "wrong" for a key known wrong, "too many wrong" for an unknown key from a client over its
        allowance, else "ask the database". Only hashes are compared, never the keys."""
        digest = gym_key_hash(key)
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and known[1] > now:
            return known[0]
        if known is None:
            wall = time.time()
            if self._bad.get(digest, 0.0) > now:
                self.limiter.note_bad_key(client, wall)
                return "wrong"
            if self.limiter.blocked(client, wall):
                return "too many wrong"
        return "ask the database"

    def from_memory(self, key: str, client: str) -> GymKey | Literal["ask the database"] | None:
        """The answer without a query: the gym of a known key, None for a key known wrong, or "ask the
        database". Raises TooManyBadKeys for an unknown key from a client over its allowance."""
        answer = self.answer_from_memory(key, client)
        if answer == "wrong":
            return None
        if answer == "too many wrong":
            raise TooManyBadKeys(self.limiter.retry_after_s(time.time()))
        return answer

    async def gym_for_key(self, key: str, client: str) -> GymKey | None:
        """The key's gym; None for a wrong or revoked key. Raises TooManyBadKeys, or the driver's error."""
        answer = self.from_memory(key, client)
        if answer != "ask the database":
            return answer
        digest = gym_key_hash(key)
        now, wall = time.monotonic(), time.time()
        known = self._known.get(digest)
        if known is None:
            # Counted as wrong before the query: concurrent lookups cannot overshoot the allowance.
            self.limiter.note_bad_key(client, wall)
            # Keys never seen valid take turns on a few connections: the allowances of a flood's
            # addresses, all at once, would otherwise hold the pool the gyms' sessions need.
            async with self._unknown_lookups:
                row = await (await self._pool()).fetchrow(KEY_QUERY, digest)
        else:
            row = await (await self._pool()).fetchrow(KEY_QUERY, digest)
        if row is None:
            self._known.pop(digest, None)
            if len(self._bad) >= self.MAX_BAD_KEYS:
                self._bad.clear()
            self._bad[digest] = now + self._bad_key_ttl_s
            if known is not None:  # a revoked key, checked again
                self.limiter.note_bad_key(client, wall)
            return None
        if known is None:
            self.limiter.forgive(client)
        gym = GymKey.from_row(row)
        self._known[digest] = (gym, now + self._cache_ttl_s)
        self._rechecker.start()
        return gym

    async def aclose(self) -> None:
        await self._rechecker.aclose()

    async def recheck_known(self) -> None:
        """Keys still valid stay fresh for another ``cache_ttl_s``; a revoked one expires now (its
        next request asks the database, which refuses it). When the database does not answer, the
        keys expire on their own (one warning per outage)."""
        digests = list(self._known)
        if not digests:
            return
        started = time.monotonic()
        try:
            rows = await (await self._pool()).fetch(KNOWN_KEYS_QUERY, digests)
        except Exception as exc:
            self._outage.failed(exc)
            return
        self._outage.succeeded()
        valid = {row["key_hash"]: GymKey.from_row(row) for row in rows}
        for digest in digests:
            gym = valid.get(digest)
            if gym is not None:
                self._known[digest] = (gym, started + self._cache_ttl_s)
            elif digest in self._known:
                self._known[digest] = (self._known[digest][0], 0.0)
