"""Token service throughput and latency against the real PostgreSQL and Redis.

``python -m bench.token_service [--quick] [--concurrency N] [--seconds S]``

Warm: the same members again and again (context served from Redis). Cold: every request a
member whose context is not cached (one PostgreSQL round trip each). The service runs as its
own process (uvicorn, one worker), the load comes from this process over loopback.

``python -m bench.token_service --flood [--keys 10000] [--concurrency 32] [--rounds 8] [--gym-connections 4]``

A real gym's backend (``--gym-connections`` from 127.0.0.1, cached members) under a flood from another
address (127.0.0.2, ``--concurrency`` connections), two floods in the same run, alternating in
rounds: ``--keys`` requests with no Authorization header (the cheapest rejection), and ``--keys``
random gym API keys, each used once. For each: the flood's rate, the gym's p50/p99 and 5xx, the
statements PostgreSQL ran (pg_stat_statements: key lookups and all) and the service's CPU time per
flood request (which the box's other load cannot blur, unlike the latencies). Pass: no 5xx for the
gym, its p99 under the random-key flood within 20% of its p99 under the header-less one, and key
lookups far below the key count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.common import emit, percentile, progress
from jarvis.db import gym_key_hash
from jarvis.migrate import migrate
from jarvis_local.pg_stats import statement_calls
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


FLOOD_ADDRESS = "127.0.0.2"  # loopback too: the service sees the flood as another client than the gym


@dataclass
class FloodTally:
    """One kind of flood, summed over its rounds."""

    flood: str
    seconds: float = 0.0
    flood_statuses: dict[int, int] = field(default_factory=dict)
    gym_latencies: list[float] = field(default_factory=list)
    gym_statuses: dict[int, int] = field(default_factory=dict)
    db_key_lookups: int = 0
    db_statements: int = 0
    server_cpu_s: float = 0.0

    def result(self) -> dict[str, Any]:
        flood_requests = sum(self.flood_statuses.values())
        return {
            "flood": self.flood,
            "flood_requests": flood_requests,
            "flood_rps": round(flood_requests / self.seconds, 1),
            "flood_statuses": {str(k): v for k, v in sorted(self.flood_statuses.items())},
            "gym_requests": len(self.gym_latencies),
            "gym_rps": round(len(self.gym_latencies) / self.seconds, 1),
            "gym_p50_ms": round(percentile(self.gym_latencies, 50), 2),
            "gym_p99_ms": round(percentile(self.gym_latencies, 99), 2),
            "gym_5xx": sum(v for k, v in self.gym_statuses.items() if k >= 500 or k == 0),
            "gym_statuses": {str(k): v for k, v in sorted(self.gym_statuses.items())},
            "db_key_lookups": self.db_key_lookups,
            "db_statements": self.db_statements,
            # The service's own CPU time (user + system): what the box's other load cannot blur.
            "server_cpu_s": round(self.server_cpu_s, 2),
            "server_cpu_ms_per_flood_request": round(1000 * self.server_cpu_s / max(1, flood_requests), 3),
        }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count(tally: dict[int, int], status: int) -> None:
    tally[status] = tally.get(status, 0) + 1


async def flood_round(url: str, dsn: str, pid: int, key: str, badges: list[str], tally: FloodTally, *,
                      random_keys: bool, requests: int, concurrency: int, gym_connections: int) -> None:
    """The gym's backend at work while ``requests`` flood requests go out; both added to ``tally``."""
    sent = 0
    flood_done = asyncio.Event()
    body = {"badge_id": badges[0], "kiosk_id": "bench"}

    async def flooder(http: aiohttp.ClientSession) -> None:
        nonlocal sent
        while sent < requests:
            sent += 1
            headers = {"Authorization": f"Bearer {secrets.token_urlsafe(24)}"} if random_keys else {}
            try:
                async with http.post(f"{url}/v1/sessions", json=body, headers=headers) as r:
                    await r.read()
                    count(tally.flood_statuses, r.status)
            except aiohttp.ClientError:
                count(tally.flood_statuses, 0)

    async def gym_backend(http: aiohttp.ClientSession, n: int) -> None:
        while not flood_done.is_set():
            started = time.perf_counter()
            try:
                async with http.post(f"{url}/v1/sessions", json={"badge_id": badges[n % len(badges)],
                                     "kiosk_id": "accueil-1"}, headers={"Authorization": f"Bearer {key}"}) as r:
                    await r.read()
                    count(tally.gym_statuses, r.status)
            except aiohttp.ClientError:
                count(tally.gym_statuses, 0)
            tally.gym_latencies.append((time.perf_counter() - started) * 1000)
            n += gym_connections

    timeout = aiohttp.ClientTimeout(total=30)
    flood_http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, local_addr=(FLOOD_ADDRESS, 0)), timeout=timeout
    )
    gym_http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=gym_connections), timeout=timeout)
    async with flood_http, gym_http:
        keys_before = await statement_calls(dsn, "FROM gym_api_keys")
        all_before = await statement_calls(dsn)
        cpu_before = cpu_seconds(pid)
        gym = [asyncio.create_task(gym_backend(gym_http, i)) for i in range(gym_connections)]
        began = time.perf_counter()
        await asyncio.gather(*(flooder(flood_http) for _ in range(concurrency)))
        tally.seconds += time.perf_counter() - began
        flood_done.set()
        await asyncio.gather(*gym)
        tally.server_cpu_s += cpu_seconds(pid) - cpu_before
        tally.db_key_lookups += await statement_calls(dsn, "FROM gym_api_keys") - keys_before
        tally.db_statements += await statement_calls(dsn) - all_before


async def run_flood(keys: int, concurrency: int, rounds: int, gym_connections: int) -> None:
    with local_stack(livekit=False) as stack:
        await migrate(stack.pg_dsn, seed_demo=False)
        key, badges = await make_bench_gym(stack.pg_dsn, 200)
        url = stack.start_token_service({
            "JARVIS_LIVEKIT_API_SECRET": stack.livekit_api_secret,
            # No LiveKit or workers here: admission control (issue 13) would refuse every session.
            "JARVIS_ADMISSION_CONTROL": "false",
        })
        pid = [proc.pid for name, proc in stack.processes if name == "token_service"][-1]
        progress("warming up: the gym's members into the cache")
        await load(url, key, badges, concurrency=gym_connections, seconds=3.0, cycle=True)
        header_less, random = FloodTally("no_header"), FloodTally("random_keys")
        # Interleaved rounds, in ABBA order: the box's other load falls on both floods alike.
        for n in range(rounds):
            order = (header_less, random) if n % 2 == 0 else (random, header_less)
            for tally in order:
                progress(f"round {n + 1}/{rounds}: {keys // rounds} requests, {tally.flood},"
                         f" {concurrency} connections, the gym working beside it")
                await flood_round(url, stack.pg_dsn, pid, key, badges, tally, random_keys=tally is random,
                                  requests=keys // rounds, concurrency=concurrency, gym_connections=gym_connections)
        results = [header_less.result(), random.result()]
        ratio = results[1]["gym_p99_ms"] / max(results[0]["gym_p99_ms"], 0.001)
        emit(
            "token_service_flood", weights="n/a", quick=False, results=results, concurrency=concurrency,
            gym_connections=gym_connections, rounds=rounds, p99_ratio=round(ratio, 3),
            passed=bool(ratio <= 1.2 and results[0]["gym_5xx"] == 0 and results[1]["gym_5xx"] == 0
                        and results[1]["db_key_lookups"] < keys // 100),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--flood", action="store_true", help="random-key flood versus header-less flood")
    parser.add_argument("--keys", type=int, default=10_000, help="--flood: requests per flood (each a new key)")
    parser.add_argument("--rounds", type=int, default=8, help="--flood: the floods alternate in this many rounds")
    parser.add_argument("--gym-connections", type=int, default=4, help="--flood: the gym backend's connections")
    args = parser.parse_args()
    if args.flood:
        asyncio.run(run_flood(args.keys, args.concurrency or 32, args.rounds, args.gym_connections))
        return
    asyncio.run(run(args.quick, args.concurrency or 8, args.seconds or (4.0 if args.quick else 15.0)))


if __name__ == "__main__":
    main()
