"""``make demo`` / ``make up``: the whole stack on this machine, and a simulated kiosk.

Starts PostgreSQL (data in .data/pg), Redis, the LiveKit server, the Kyutai STT and TTS engine
servers, the token service and one agent worker; then a simulated kiosk badges in as a demo
member, joins the room, holds a short spoken French conversation and prints each turn's
transcript and voice-to-voice latency. ``--up`` keeps everything running until Ctrl-C;
``--text`` runs without speech engines (the kiosk types).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import sys
import time
from pathlib import Path

from jarvis.db import LegacyLayout
from jarvis.migrate import migrate
from jarvis.session_contract import ATTR_MEMBER_ID
from jarvis_local.kiosk_page import KioskPageError, start_kiosk_page
from jarvis_local.kiosk_sim import SessionRefused, SimulatedKiosk, open_session, poll, synthesize_french
from jarvis_local.speech_models import choose_speech_models
from jarvis_local.stack import REPO, LocalStack, StackError, free_port, local_stack, wait_for_port

DEMO_GYM_KEY = "demo-key-lyon-part-dieu"


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def llm_environment(stack: LocalStack) -> tuple[dict[str, str], str]:
    """The worker's LLM: the real one when configured, else the offline stand-in (with a banner)."""
    if os.environ.get("JARVIS_LLM__PRIMARY__PROVIDER") or os.environ.get("GROQ_API_KEY"):
        provider = os.environ.get("JARVIS_LLM__PRIMARY__PROVIDER", "groq")
        return {}, f"LLM: {provider} (from your environment)"
    port = free_port()
    proc = stack._spawn("llm-standin", ["-m", "jarvis_local.llm_standin", "--port", str(port)])
    wait_for_port(port, "LLM stand-in", proc)
    env = {
        "JARVIS_LLM__PRIMARY__PROVIDER": "openai",
        "JARVIS_LLM__PRIMARY__MODEL": "standin",
        "JARVIS_LLM__PRIMARY__BASE_URL": f"http://127.0.0.1:{port}/v1",
        "JARVIS_LLM__PRIMARY__API_KEY": "offline-demo",
    }
    return env, (
        "OFFLINE DEMO LLM: no GROQ_API_KEY or JARVIS_LLM__PRIMARY__* set, so a local stand-in answers with a few"
        " scripted French rules (it shows videos for 'squat', 'développé couché', …)."
    )


def speech_environment(stack: LocalStack, data: Path, *, text: bool) -> tuple[dict[str, str], str]:
    """The Kyutai engines on real weights (fetched when the hub answers), else tiny random ones (with a banner)."""
    if text:
        return {"JARVIS_SPEECH__MODE": "text"}, "SPEECH: text mode (--text): the kiosk types and reads."
    models, note = choose_speech_models(data, log=say)
    say("starting the Kyutai STT and TTS engine servers")
    return stack.start_speech_engines(models, streams=8), note


def banner(lines: list[str]) -> None:
    width = max(len(line) for line in lines) + 4
    print("\n" + "=" * width, flush=True)
    for line in lines:
        print(f"  {line}", flush=True)
    print("=" * width + "\n", flush=True)


SPOKEN_SCRIPT = (
    "Bonjour JARVIS, tu peux me montrer comment faire un squat ?",
    "Merci. Et la salle est ouverte jusqu'à quelle heure ce soir ?",
)


async def kiosk_visit(token_service_url: str, badge_id: str, *, voice: bool) -> None:
    t0 = time.perf_counter()
    try:
        session = await open_session(token_service_url, DEMO_GYM_KEY, badge_id, "demo-kiosk")
    except SessionRefused as exc:
        raise SystemExit(str(exc)) from None
    t_token = time.perf_counter()
    say(f"session {session['session_id']} for {session['member_first_name']} ({ms(t0, t_token)})")

    kiosk = SimulatedKiosk()
    await kiosk.join(session["livekit_url"], session["token"])
    t_joined = time.perf_counter()
    say(f"kiosk joined room {session['room']} ({ms(t_token, t_joined)})")
    try:
        agent = await poll(kiosk.agent, 60)
        if agent is None:
            raise SystemExit("JARVIS did not join within 60 s: see .data/agent.log")
        t_agent = time.perf_counter()
        member_id = agent.attributes[ATTR_MEMBER_ID]
        say(f"JARVIS joined with member {member_id} ({ms(t_joined, t_agent)} after the kiosk)")
        if voice:
            await spoken_turns(kiosk, t_agent)
        else:
            await typed_turns(kiosk, t_agent)
    finally:
        await kiosk.leave()
    say(f"kiosk left; visit took {ms(t0, time.perf_counter())}")


async def typed_turns(kiosk: SimulatedKiosk, t_agent: float) -> None:
    greeting = await poll(lambda: kiosk.transcripts, 20)
    if greeting:
        say(f"JARVIS: « {greeting[0][1]} » ({ms(t_agent, greeting[0][0])})")
    for question in ("Comment on fait un squat ?", "Vous êtes ouverts jusqu'à quelle heure ?"):
        seen = len(kiosk.transcripts)
        asked = await kiosk.send_chat(question)
        say(f"member types: « {question} »")
        answer = await poll(lambda: kiosk.transcripts[seen:], 30)  # noqa: B023 (awaited within this iteration)
        if not answer:
            raise SystemExit("no answer within 30 s: see .data/agent.log")
        say(f"JARVIS: « {answer[0][1]} » ({ms(asked, answer[0][0])})")
        if kiosk.videos:
            say(f"kiosk shows video: {kiosk.videos.pop()}")


async def spoken_turns(kiosk: SimulatedKiosk, t_agent: float) -> None:
    greeting = await poll(lambda: kiosk.heard.first_speech_after(t_agent - 5), 30)
    if greeting is None:
        raise SystemExit("no greeting audio within 30 s: see .data/agent.log and .data/kyutai-tts.log")
    await poll(lambda: kiosk.heard.stopped_after(greeting, 0.6), 30)
    said = kiosk.transcripts[0][1] if kiosk.transcripts else "…"
    say(f"JARVIS (audio {ms(t_agent, greeting)} after joining): « {said} »")
    rows = []
    for sentence in SPOKEN_SCRIPT:
        seen_agent, seen_member = len(kiosk.transcripts), len(kiosk.member_transcripts)
        say(f"member says: « {sentence} »")
        turn = await kiosk.hear_answer(await kiosk.say(synthesize_french(sentence), sentence), 30)
        if turn.first_answer is None:
            raise SystemExit("JARVIS did not answer out loud within 30 s: see .data/agent.log")
        await poll(functools.partial(kiosk.heard.stopped_after, turn.first_answer, 0.6), 30)
        heard = " ".join(text for _t, text in kiosk.member_transcripts[seen_member:]) or "…"
        answer = " ".join(text for _t, text in kiosk.transcripts[seen_agent:]) or "…"
        say(f"  STT heard: « {heard} »")
        say(f"  JARVIS:    « {answer} »")
        if kiosk.videos:
            say(f"  kiosk shows video: {kiosk.videos.pop()}")
        rows.append((sentence, turn.v2v_ms or 0.0))
    print("\n  voice-to-voice (last voiced sample sent → first answer sample heard, at the kiosk)")
    for index, (sentence, v2v) in enumerate(rows, 1):
        print(f"  turn {index}: {v2v:6.0f} ms   {sentence}")
    print(flush=True)


def ms(start: float, end: float) -> str:
    return f"{1000 * (end - start):.0f} ms"


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
    parser.add_argument("--kiosk-port", type=int, default=8090, help="where --up serves the kiosk page")
    parser.add_argument("--text", action="store_true", help="text mode: the kiosk types, no speech engines")
    parser.add_argument("--data", type=Path, default=REPO / ".data", help="where PostgreSQL keeps its data")
    args = parser.parse_args()
    try:
        with local_stack(args.data) as stack:
            try:
                asyncio.run(migrate(stack.pg_dsn, seed_demo=True))
            except LegacyLayout:
                sys.exit(f"[demo] {args.data / 'pg'} holds a demo database of the first layout (tables in"
                         " public, before schema jarvis): it has demo data only, remove it and run again")
            say(f"PostgreSQL {stack.pg_dsn}  Redis {stack.redis_url}  LiveKit {stack.livekit_url}")
            url = stack.start_token_service()
            say(f"token service {url}  (OpenAPI: {url}/docs)")
            llm_env, llm_banner = llm_environment(stack)
            speech_env, speech_banner = speech_environment(stack, args.data, text=args.text)
            banner([llm_banner, speech_banner])
            stack.start_agent_worker({**llm_env, **speech_env})
            say("agent worker registered as 'jarvis'")
            asyncio.run(kiosk_visit(url, args.badge, voice=not args.text))
            if args.up:
                try:
                    page, page_url = start_kiosk_page(url, port=args.kiosk_port)
                    stack.processes.append(("kiosk-page", page))  # type: ignore[arg-type]
                    say(f"kiosk page (open it in a browser, pick a demo badge): {page_url}")
                except KioskPageError as exc:
                    say(f"kiosk page not served: {exc}")
                say(f"stack running; logs in {args.data}; Ctrl-C to stop")
                say(
                    f"try: curl -s -X POST {url}/v1/sessions -H 'Authorization: Bearer {DEMO_GYM_KEY}'"
                    ' -H \'Content-Type: application/json\' -d \'{"badge_id": "LYON-0002", "kiosk_id": "k1"}\''
                )
                asyncio.run(wait_for_ctrl_c())
            say("stopping")
    except StackError as exc:
        sys.exit(f"[demo] {exc}")
    say("done")


if __name__ == "__main__":
    main()
