"""Token service throughput and latency against the real PostgreSQL and Redis.

``python -m bench.token_service [--quick] [--concurrency N] [--seconds S]``

Warm: the same members again and again (context served from Redis). Cold: every request a
member whose context is not cached (one PostgreSQL round trip each). The service runs as its
own process (uvicorn, one worker), the load comes from this process over loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
import uuid

import aiohttp
import asyncpg

from bench.common import emit, percentile, progress
from jarvis.db import gym_key_hash
from jarvis.migrate import migrate
from jarvis_local.stack import local_stack


async def make_bench_gym(dsn: str, members: int) -> tuple[str, list[str]]:
    gym_id, key = str(uuid.uuid4()), f"bench-{secrets.token_hex(8)}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO gyms (id, slug, name, city, address, rate_limit_per_minute)"
            " VALUES ($1, $2, 'Salle de bench', 'Lille', '1 place du Bench', 100000000)",
            gym_id, f"bench-{gym_id[:8]}",
        )
        await conn.execute(
            "INSERT INTO gym_api_keys (gym_id, key_hash) VALUES ($1, $2)", gym_id, gym_key_hash(key),
        )
        badges = [f"B-{gym_id[:8]}-{i}" for i in range(members)]
        await conn.executemany(
            "INSERT INTO gym_members (gym_id, badge_id, first_name, goal) VALUES ($1, $2, 'Sam', 'endurance')",
            [(gym_id, b) for b in badges],
        )
        await conn.execute(
            "INSERT INTO member_visits (gym_id, member_id, visited_at)"
            " SELECT gym_id, id, now() - make_interval(days => d) FROM gym_members, generate_series(1, 20) d"
            " WHERE gym_id = $1",
            gym_id,
        )
    finally:
        await conn.close()
    return key, badges


async def load(url: str, key: str, badges: list[str], *, concurrency: int, seconds: float,
               cycle: bool) -> dict[str, float | int]:
    latencies: list[float] = []
    errors = 0
    next_badge = 0
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {key}"}

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal errors, next_badge
        while time.perf_counter() < deadline:
            if not cycle and next_badge >= len(badges):
                return  # cold run: every member once, never twice
            badge = badges[next_badge % len(badges)]
            next_badge += 1
            started = time.perf_counter()
            try:
                async with http.post(f"{url}/v1/sessions", json={"badge_id": badge, "kiosk_id": "bench"},
                                     headers=headers) as r:
                    await r.read()
                    ok = r.status == 201
            except aiohttp.ClientError:
                ok = False
            latencies.append((time.perf_counter() - started) * 1000)
            errors += 0 if ok else 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:
        began = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "errors": errors,
        "requests": len(latencies),
    }


async def run(quick: bool, concurrency: int, seconds: float) -> None:
    with local_stack(livekit=False) as stack:
        await migrate(stack.pg_dsn, seed_demo=False)
        members = 3000 if quick else 15000
        progress(f"creating a bench gym with {members} members")
        key, badges = await make_bench_gym(stack.pg_dsn, members)
        url = stack.start_token_service({"JARVIS_LIVEKIT_API_SECRET": stack.livekit_api_secret})
        warm_badges = badges[:50]
        progress("warming up")
        await load(url, key, warm_badges, concurrency=concurrency, seconds=1.0, cycle=True)
        results = []
        progress(f"cold cache: every request a member not yet cached ({seconds:.0f} s at most)")
        results.append({"cache": "cold", **await load(url, key, badges[50:], concurrency=concurrency,
                                                      seconds=seconds, cycle=False)})
        progress(f"warm cache: {seconds:.0f} s")
        results.append({"cache": "warm", **await load(url, key, warm_badges, concurrency=concurrency,
                                                      seconds=seconds, cycle=True)})
        emit("token_service", weights="n/a", quick=quick, results=results, concurrency=concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    asyncio.run(run(args.quick, args.concurrency, args.seconds or (4.0 if args.quick else 15.0)))


if __name__ == "__main__":
    main()
