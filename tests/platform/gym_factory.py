"""Throwaway gyms for tests that must not share rate limits or rows with the demo gyms."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from dataclasses import dataclass

import asyncpg

from jarvis.db import gym_key_hash


@dataclass(frozen=True)
class TestGym:
    __test__ = False  # a fixture's value, not a test class pytest should try to collect
    gym_id: str
    api_key: str
    badge_id: str
    member_id: str


async def create_gym(dsn: str, *, rate_limit_per_minute: int = 100, city: str = "Nantes") -> TestGym:
    gym_id, member_id = str(uuid.uuid4()), str(uuid.uuid4())
    key = f"test-key-{secrets.token_hex(8)}"
    badge = f"T-{secrets.token_hex(4)}"
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO gyms (id, slug, name, city, address, rate_limit_per_minute)"
                " VALUES ($1, $2, 'Salle de test', $3, '1 rue du Test', $4)",
                gym_id, f"test-{gym_id[:8]}", city, rate_limit_per_minute,
            )
            await conn.execute(
                "INSERT INTO gym_api_keys (gym_id, key_hash) VALUES ($1, $2)", gym_id, gym_key_hash(key),
            )
            await conn.execute(
                "INSERT INTO gym_members (id, gym_id, badge_id, first_name) VALUES ($1, $2, $3, 'Alex')",
                member_id, gym_id, badge,
            )
    finally:
        await conn.close()
    return TestGym(gym_id, key, badge, member_id)


async def within_one_rate_window(needed_s: float = 10.0) -> None:
    """Waits for the next minute when fewer than ``needed_s`` seconds are left in this one: the
    token service counts sessions per gym in fixed one-minute windows, so requests that straddle
    two windows are counted apart and an expected 429 would not come."""
    left = 60 - time.time() % 60
    if left < needed_s:
        await asyncio.sleep(left + 0.05)
