"""``make demo`` / ``make up``: the whole stack on this machine, and a simulated kiosk.

Starts PostgreSQL (data in .data/pg), Redis, the LiveKit server, the token service and one
agent worker; then a simulated kiosk badges in as a demo member, joins the room, waits for
JARVIS and prints what happened with timings. ``--up`` keeps everything running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

from jarvis.migrate import migrate
from jarvis.stack import REPO, LocalStack, StackError, local_stack

DEMO_GYM_KEY = "demo-key-lyon-part-dieu"


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


async def kiosk_visit(stack: LocalStack, token_service_url: str, badge_id: str) -> None:
    import httpx
    from livekit import rtc

    t0 = time.perf_counter()
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{token_service_url}/v1/sessions", json={"badge_id": badge_id, "kiosk_id": "demo-kiosk"},
                            headers={"Authorization": f"Bearer {DEMO_GYM_KEY}"})
    if r.status_code != 201:
        raise SystemExit(f"token service answered {r.status_code}: {r.text}")
    session = r.json()
    t_token = time.perf_counter()
    say(f"session {session['session_id']} for {session['member_first_name']} ({1000 * (t_token - t0):.0f} ms)")

    room = rtc.Room()
    await room.connect(session["livekit_url"], session["token"])
    t_joined = time.perf_counter()
    say(f"kiosk joined room {session['room']} ({1000 * (t_joined - t_token):.0f} ms)")
    deadline = time.monotonic() + 60
    agent = None
    while agent is None:
        agent = next((p for p in room.remote_participants.values() if p.attributes.get("jarvis.ready")), None)
        if time.monotonic() > deadline:
            raise SystemExit("JARVIS did not join within 60 s: see .data/agent.log")
        await asyncio.sleep(0.05)
    t_agent = time.perf_counter()
    say(f"JARVIS joined as {agent.identity} with member {agent.attributes['jarvis.member_id']}"
        f" ({1000 * (t_agent - t_joined):.0f} ms after the kiosk)")
    await room.disconnect()
    say(f"kiosk left; total {1000 * (time.perf_counter() - t0):.0f} ms")


async def wait_for_ctrl_c() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--up", action="store_true", help="keep the stack running until Ctrl-C")
    parser.add_argument("--badge", default="LYON-0001", help="demo member badge (LYON-0001, LYON-0002, LYON-0004)")
    parser.add_argument("--data", type=Path, default=REPO / ".data", help="where PostgreSQL keeps its data")
    args = parser.parse_args()
    try:
        with local_stack(args.data) as stack:
            asyncio.run(migrate(stack.pg_dsn, seed_demo=True))
            say(f"PostgreSQL {stack.pg_dsn}  Redis {stack.redis_url}  LiveKit {stack.livekit_url}")
            url = stack.start_token_service()
            say(f"token service {url}  (OpenAPI: {url}/docs)")
            stack.start_agent_worker()
            say("agent worker registered as 'jarvis'")
            asyncio.run(kiosk_visit(stack, url, args.badge))
            if args.up:
                say(f"stack running; logs in {args.data}; Ctrl-C to stop")
                say(f"try: curl -s -X POST {url}/v1/sessions -H 'Authorization: Bearer {DEMO_GYM_KEY}'"
                    " -H 'Content-Type: application/json' -d '{\"badge_id\": \"LYON-0002\", \"kiosk_id\": \"k1\"}'")
                asyncio.run(wait_for_ctrl_c())
            say("stopping")
    except StackError as exc:
        sys.exit(f"[demo] {exc}")
    say("done")


if __name__ == "__main__":
    main()
