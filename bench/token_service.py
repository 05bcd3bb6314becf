"""Token service throughput and latency against the real PostgreSQL and Redis.

``python -m bench.token_service [--quick] [--concurrency N] [--seconds S]``

Warm: the same members again and again (context served from Redis). Cold: every request a
member whose context is not cached (one PostgreSQL round trip each). The service runs as its
own process (uvicorn, one worker), the load comes from this process over loopback.

``python -m bench.token_service --flood [--keys 10000] [--concurrency 32] [--rounds 6] [--gym-connections 16]
[--gym-samples 1000]``

A real gym's backend (its own process, ``--gym-connections`` from 127.0.0.1, cached members) under a
flood from another address (127.0.0.2, ``--concurrency`` keep-alive connections of a lean HTTP/1.1
client), two floods in the same run, alternating in ABBA rounds: requests with no Authorization
header (the cheapest rejection), and random gym API keys, each used once. Each flood of a round goes
on until it sent its share of ``--keys`` and the gym finished ``--gym-samples`` requests beside it (a
p99 from fewer samples swings with the box's load). Per round and pooled: the flood's rate, the gym's
p50/p99 and 5xx, the statements PostgreSQL ran (pg_stat_statements: key lookups and all) and the
service's CPU time per flood request (which the box's other load cannot blur, unlike the latencies);
the p99 ratio pooled, per round and its spread over rounds redrawn. Pass: no 5xx for the gym, its
pooled p99 under the random-key flood within 20% of its p99 under the header-less one, and key lookups
far below the key count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import secrets
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uvloop

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
FLOODS = ("no_header", "random_keys")


class RawConnection:
    """One keep-alive HTTP/1.1 connection sending prepared requests and reading only the status: the
    flood's client. aiohttp spends about as much per request as the service spends on a refusal, so
    with it the bench's own client set the flood's pace, and its event loop (shared with the gym's
    requests) made most of the gym's latency: the p99 ratio swung 0.42-2.25 from run to run."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, request: bytes) -> int:
        """The response's status; 0 when the connection failed (it is opened again on the next call)."""
        try:
            async with asyncio.timeout(30):
                if self._streams is None:
                    self._streams = await asyncio.open_connection(self.host, self.port, local_addr=(FLOOD_ADDRESS, 0))
                reader, writer = self._streams
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                return int(head[9:12])
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            return 0

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


def flood_request(host: str, body: bytes, key: str, *, as_key: bool) -> bytes:
    """A flood's request, new each time. Both floods carry a fresh random value of the same length,
    as the key or in a header the service ignores: the requests are the same size and cost this
    client the same, so only what the service does with the key differs. (With a header-less request
    prepared once, the random-key flood's own key making slowed this client, on the service's two
    cores, and the service then handled its requests less batched: 17% more service CPU per request.)"""
    auth = f"Authorization: Bearer {key}\r\n" if as_key else f"X-Flood-Nonce: {key}\r\n"
    return (
        f"POST /v1/sessions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{auth}\r\n"
    ).encode() + body


GymSample = tuple[float, float, int]  # started, ended (time.monotonic, the same clock in every process), status


def gym_backend(url: str, key: str, badges: list[str], connections: int, stop: Any, done: Any, out: Any) -> None:
    """The real gym's backend, in a process of its own (spawned): its latencies are the service's, not
    a flooding client's event loop's. Works until ``stop`` is set, counts its requests in ``done`` as
    it goes, then sends its samples through ``out``."""

    async def work() -> list[GymSample]:
        samples: list[GymSample] = []

        async def connection(http: aiohttp.ClientSession, n: int) -> None:
            while not stop.is_set():
                body = {"badge_id": badges[n % len(badges)], "kiosk_id": "accueil-1"}
                started = time.monotonic()
                try:
                    async with http.post(f"{url}/v1/sessions", json=body,
                                         headers={"Authorization": f"Bearer {key}"}) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                samples.append((started, time.monotonic(), status))
                done.value += 1  # one writer: this process's one thread
                n += connections

        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), timeout=timeout) as http:
            await asyncio.gather(*(connection(http, i) for i in range(connections)))
        return samples

    out.send(asyncio.run(work()))
    out.close()


@dataclass
class FloodWindow:
    """One flood of one kind in one round, and what the gym and the service went through meanwhile."""

    flood: str
    round: int
    started: float = 0.0
    ended: float = 0.0
    flood_statuses: dict[int, int] = field(default_factory=dict)
    gym: list[GymSample] = field(default_factory=list)
    db_key_lookups: int = 0
    db_statements: int = 0
    server_cpu_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def gym_latencies(windows: list[FloodWindow]) -> list[float]:
    return [(ended - started) * 1000 for w in windows for started, ended, _ in w.gym]


def pooled_p99_ratio(windows: list[FloodWindow]) -> float:
    random_p99 = percentile(gym_latencies([w for w in windows if w.flood == "random_keys"]), 99)
    header_less_p99 = percentile(gym_latencies([w for w in windows if w.flood == "no_header"]), 99)
    return random_p99 / max(header_less_p99, 0.001)


def flood_row(windows: list[FloodWindow]) -> dict[str, Any]:
    """One flood kind over all its rounds, its gym samples pooled (the shape docs/BENCH.md sets)."""
    seconds = sum(w.seconds for w in windows)
    flood_statuses: dict[int, int] = {}
    gym_statuses: dict[int, int] = {}
    for w in windows:
        for status, n in w.flood_statuses.items():
            flood_statuses[status] = flood_statuses.get(status, 0) + n
        for _, _, status in w.gym:
            count(gym_statuses, status)
    latencies = gym_latencies(windows)
    flood_requests = sum(flood_statuses.values())
    server_cpu_s = sum(w.server_cpu_s for w in windows)
    return {
        "flood": windows[0].flood,
        "flood_requests": flood_requests,
        "flood_rps": round(flood_requests / seconds, 1),
        "flood_statuses": {str(k): v for k, v in sorted(flood_statuses.items())},
        "gym_requests": len(latencies),
        "gym_rps": round(len(latencies) / seconds, 1),
        "gym_p50_ms": round(percentile(latencies, 50), 2),
        "gym_p99_ms": round(percentile(latencies, 99), 2),
        "gym_p99_ms_per_round": [round(percentile(gym_latencies([w]), 99), 2) for w in windows],
        "gym_5xx": sum(v for k, v in gym_statuses.items() if k >= 500 or k == 0),
        "gym_statuses": {str(k): v for k, v in sorted(gym_statuses.items())},
        "db_key_lookups": sum(w.db_key_lookups for w in windows),
        "db_statements": sum(w.db_statements for w in windows),
        # The service's own CPU time (user + system): what the box's other load cannot blur.
        "server_cpu_s": round(server_cpu_s, 2),
        "server_cpu_ms_per_flood_request": round(1000 * server_cpu_s / max(1, flood_requests), 3),
    }


def round_row(w: FloodWindow) -> dict[str, Any]:
    latencies = gym_latencies([w])
    flood_requests = sum(w.flood_statuses.values())
    return {
        "round": w.round, "flood": w.flood, "seconds": round(w.seconds, 2), "flood_requests": flood_requests,
        "flood_rps": round(flood_requests / w.seconds, 1), "gym_requests": len(latencies),
        "gym_p50_ms": round(percentile(latencies, 50), 2), "gym_p99_ms": round(percentile(latencies, 99), 2),
        "gym_5xx": sum(1 for _, _, s in w.gym if s >= 500 or s == 0),
        "server_cpu_ms_per_flood_request": round(1000 * w.server_cpu_s / max(1, flood_requests), 3),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count(tally: dict[int, int], status: int) -> None:
    tally[status] = tally.get(status, 0) + 1


async def flood_window(url: str, dsn: str, pid: int, window: FloodWindow, gym_done: Any, *, badge: str,
                       requests: int, gym_samples: int, concurrency: int, max_seconds: float) -> None:
    """Floods until both ``requests`` flood requests went out and the gym finished ``gym_samples``
    requests (a stable p99 needs ~1,000), ``max_seconds`` at most. Every random key is a new one."""
    host_port = url.removeprefix("http://")
    host, port = host_port.rsplit(":", 1)
    body = json.dumps({"badge_id": badge, "kiosk_id": "bench"}).encode()
    as_key = window.flood == "random_keys"
    sent = 0

    def enough() -> bool:
        # Slack for the gym's requests that straddle the window's edges (they are not counted).
        return (sent >= requests and gym_done.value - gym_before >= gym_samples + 16) \
            or time.monotonic() - window.started > max_seconds

    async def flooder() -> None:
        nonlocal sent
        conn = RawConnection(host, int(port))
        try:
            while not enough():
                sent += 1
                request = flood_request(host_port, body, secrets.token_urlsafe(24), as_key=as_key)
                count(window.flood_statuses, await conn.post(request))
        finally:
            conn.close()

    keys_before = await statement_calls(dsn, "FROM gym_api_keys")
    all_before = await statement_calls(dsn)
    cpu_before = cpu_seconds(pid)
    gym_before = gym_done.value
    window.started = time.monotonic()
    await asyncio.gather(*(flooder() for _ in range(concurrency)))
    window.ended = time.monotonic()
    window.server_cpu_s = cpu_seconds(pid) - cpu_before
    window.db_key_lookups = await statement_calls(dsn, "FROM gym_api_keys") - keys_before
    window.db_statements = await statement_calls(dsn) - all_before


def round_ratios(windows: list[FloodWindow]) -> list[float]:
    """Per round: the gym's p99 under the random keys over its p99 under the header-less flood beside it."""
    by_round: dict[int, dict[str, float]] = {}
    for w in windows:
        by_round.setdefault(w.round, {})[w.flood] = percentile(gym_latencies([w]), 99)
    return [p["random_keys"] / max(p["no_header"], 0.001) for _, p in sorted(by_round.items())]


def bootstrap_ratio_interval(windows: list[FloodWindow], draws: int = 400) -> tuple[float, float]:
    """5th-95th percentile of the pooled p99 ratio over rounds drawn again with replacement: the
    spread that the box's load from round to round puts on the pooled figure."""
    rng = random.Random(14)
    rounds = sorted({w.round for w in windows})
    ratios = []
    for _ in range(draws):
        picked = [rng.choice(rounds) for _ in rounds]
        ratios.append(pooled_p99_ratio([w for r in picked for w in windows if w.round == r]))
    return percentile(ratios, 5), percentile(ratios, 95)


async def run_flood(keys: int, concurrency: int, rounds: int, gym_connections: int, gym_samples: int,
                    max_window_s: float) -> None:
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
        spawn = multiprocessing.get_context("spawn")
        stop, done = spawn.Event(), spawn.Value("q", 0, lock=False)
        samples_in, samples_out = spawn.Pipe(duplex=False)
        gym = spawn.Process(target=gym_backend, args=(url, key, badges, gym_connections, stop, done, samples_out))
        gym.start()
        windows: list[FloodWindow] = []
        try:
            for _ in range(600):  # the gym's process is up and served (60 s at most)
                if done.value >= 2 * gym_connections:
                    break
                await asyncio.sleep(0.1)
            # Interleaved rounds, in ABBA order: the box's other load falls on both floods alike.
            for n in range(rounds):
                for flood in FLOODS if n % 2 == 0 else reversed(FLOODS):
                    window = FloodWindow(flood, n + 1)
                    await flood_window(url, stack.pg_dsn, pid, window, done, badge=badges[0],
                                       requests=-(-keys // rounds), gym_samples=gym_samples,
                                       concurrency=concurrency, max_seconds=max_window_s)
                    windows.append(window)
                    progress(f"round {n + 1}/{rounds} {flood}: {sum(window.flood_statuses.values())} requests"
                             f" in {window.seconds:.1f} s, {concurrency} connections")
        finally:
            stop.set()
            gym_samples_all: list[GymSample] = await asyncio.to_thread(samples_in.recv)
            await asyncio.to_thread(gym.join, 30)
        for w in windows:  # the gym's requests wholly inside each window
            w.gym = [s for s in gym_samples_all if s[0] >= w.started and s[1] <= w.ended]
        results = [flood_row([w for w in windows if w.flood == flood]) for flood in FLOODS]
        ratio = pooled_p99_ratio(windows)
        per_round = round_ratios(windows)
        low, high = bootstrap_ratio_interval(windows)
        emit(
            "token_service_flood", weights="n/a", quick=False, results=results, concurrency=concurrency,
            gym_connections=gym_connections, rounds=rounds, gym_samples_per_round_min=gym_samples,
            p99_ratio=round(ratio, 3),
            p99_ratio_per_round=[round(r, 3) for r in per_round],
            p99_ratio_median=round(statistics.median(per_round), 3),
            p99_ratio_ci90=[round(low, 3), round(high, 3)],
            cpu_ratio=round(results[1]["server_cpu_ms_per_flood_request"]
                            / max(results[0]["server_cpu_ms_per_flood_request"], 0.001), 3),
            rounds_detail=[round_row(w) for w in windows],
            passed=bool(ratio <= 1.2 and results[0]["gym_5xx"] == 0 and results[1]["gym_5xx"] == 0
                        and results[1]["flood_requests"] >= keys
                        # A few per minute (the per-client allowance), not one per key.
                        and results[1]["db_key_lookups"] < results[1]["flood_requests"] // 100),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--flood", action="store_true", help="random-key flood versus header-less flood")
    parser.add_argument("--keys", type=int, default=10_000,
                        help="--flood: requests per flood at least (each random one a new key)")
    parser.add_argument("--rounds", type=int, default=6, help="--flood: the floods alternate in this many rounds")
    parser.add_argument("--gym-connections", type=int, default=16, help="--flood: the gym backend's connections")
    parser.add_argument("--gym-samples", type=int, default=1000,
                        help="--flood: a flood goes on until the gym made this many requests in its round")
    parser.add_argument("--max-window-s", type=float, default=90.0, help="--flood: one flood of one round at most")
    args = parser.parse_args()
    if args.flood:
        # uvloop: the flooding client's own event loop costs less than the refusals it asks for.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_flood(args.keys, args.concurrency or 32, args.rounds, args.gym_connections,
                                 args.gym_samples, args.max_window_s))
        return
    asyncio.run(run(args.quick, args.concurrency or 8, args.seconds or (4.0 if args.quick else 15.0)))


if __name__ == "__main__":
    main()
