"""The member talks to JARVIS over the real SFU: Kyutai STT → LLM → Kyutai TTS, on tiny weights.

member asks a question out loud → JARVIS answers with audio the kiosk hears → the squat video is
shown → the member's turn, the tool call and JARVIS's answer are in the database. Then the member
talks over JARVIS's long answer → JARVIS stops.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import numpy as np
import pytest

from agent.voice import SpeechSettings
from jarvis_local.kiosk_sim import SPEECH_RMS, SimulatedKiosk, open_session, poll, synthesize_french
from jarvis_local.stack import LocalStack
from tests.machine import slowdown
from tests.voice.conftest import LONG_ANSWER, VOICE_AGENT_LOG, VoiceServices

pytestmark = pytest.mark.integration

# Spoken without an inner pause: the tiny STT's pause head reads any silent 80 ms frame as the
# end of the turn (a comma, a stop consonant's closure), which would split the question into two
# turns, the second talking over the answer. Checked frame by frame on the tiny engine: this
# sentence has none, "Bonjour JARVIS, tu peux me montrer comment faire un squat ?" has two.
QUESTION = "Je voudrais voir la vidéo pour le squat."
SECOND_QUESTION = "Et comment je m'échauffe avant la séance ?"
BARGE_IN = "Attends, attends, j'ai une autre question."

# The tiny TTS speaks the greeting ("Bonjour Camille ! …") in a few seconds; a greeting still
# going after this long is a TTS that does not stop, not a long sentence.
GREETING_MAX_S = 15.0
# Barge-in aim: JARVIS pauses once the member has talked over it for `barge_in.pause_after_s` (the
# agent's setting, 0.03 s of silero speech: its second voiced 32 ms window), and
# stays stopped once the voice has held `confirm_after_s` (agent/barge_in.py). The allowance is what
# detecting and carrying the pause costs: silero's onset over its 32 ms windows, kiosk → SFU → agent,
# the agent's queued playout, agent → SFU → kiosk and the kiosk's 10 ms frames. With the old 0.3 s
# threshold it measured 200–280 ms on the 2-core test machine under other agents' load; 350 ms
# leaves room for that load without hiding a stop that waits for the member's end of turn (over a
# second later). The allowance (not the agent's own wait) stretches with the machine's slowdown
# (tests/machine.py), at most 3x.
INTERRUPTION_MIN_MS = 1000 * SpeechSettings().barge_in.pause_after_s
BARGE_IN_ALLOWANCE_MS = 350.0
# Once stopped, JARVIS stays quiet at least this long: a paused answer that resumes (a false alarm)
# is not a barge-in.
QUIET_AFTER_STOP_S = 1.0


async def visit(voice_services: VoiceServices) -> tuple[dict[str, str], SimulatedKiosk]:
    session = await open_session(voice_services.token_url, "demo-key-lyon-part-dieu", "LYON-0001")
    kiosk = SimulatedKiosk()
    await kiosk.join(session["livekit_url"], session["token"])
    assert await poll(kiosk.agent, 60), "JARVIS did not join"
    return session, kiosk


async def hear_the_greeting_out(kiosk: SimulatedKiosk) -> float:
    """JARVIS greets the member and finishes, as a member waits for it; returns when it ended."""
    joined = time.perf_counter()
    greeting = await poll(lambda: kiosk.heard.first_speech_after(joined - 10), 30, what="the greeting's audio")
    ended = await poll(lambda: kiosk.finished_speaking(joined - 10), GREETING_MAX_S + 1, what="the end of the greeting")
    assert ended - greeting < GREETING_MAX_S, f"the greeting lasted {ended - greeting:.1f} s"
    return ended


def from_first_voiced_sample(pcm: np.ndarray, level: int = 300) -> np.ndarray:
    """espeak starts with a little silence: the member's onset is the first voiced sample."""
    voiced = np.nonzero(np.abs(pcm.astype(np.int32)) > level)[0]
    return pcm[voiced[0] :] if voiced.size else pcm


def voiced_spans(kiosk: SimulatedKiosk, onset: float, until: float) -> list[tuple[float, float]]:
    """JARVIS's voiced stretches the kiosk heard from 0.5 s before the member's onset until
    ``until``, in seconds from the onset (the barge-in's diagnostics)."""
    spans: list[tuple[float, float]] = []
    for at, level in kiosk.heard.frames:
        if onset - 0.5 <= at <= until and level >= SPEECH_RMS:
            t = round(at - onset, 2)
            if spans and t - spans[-1][1] <= 0.05:
                spans[-1] = (spans[-1][0], t)
            else:
                spans.append((t, t))
    return spans


def barge_in_log(stack: LocalStack, session_id: str) -> str:
    """The worker's lines on the session's barge-in, and livekit-agents' own on interruptions."""
    lines = stack.log_tail(VOICE_AGENT_LOG, 2000).splitlines()
    return "\n".join(line for line in lines if session_id in line or "interrupt" in line.lower())[-4000:]


async def interactions(stack: LocalStack, session_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        return await conn.fetch(
            "SELECT kind, text, tool_name, interrupted FROM jarvis_interactions WHERE session_id = $1 ORDER BY id",
            session_id,
        )
    finally:
        await conn.close()


async def session_ended(stack: LocalStack, session_id: str, timeout_s: float = 45.0) -> None:
    """The agent wrote the session's end, which it queues after every interaction row."""

    async def ended_at() -> object:
        conn = await asyncpg.connect(stack.pg_dsn)
        try:
            return await conn.fetchval("SELECT ended_at FROM voice_sessions WHERE id = $1", session_id)
        finally:
            await conn.close()

    await poll(ended_at, timeout_s, every_s=0.2, what="the agent to record the end of the session")


async def test_member_speaks_and_jarvis_answers_with_audio_and_the_video(
    stack: LocalStack, voice_services: VoiceServices
) -> None:
    session, kiosk = await visit(voice_services)
    try:
        await hear_the_greeting_out(kiosk)
        turn = await kiosk.hear_answer(await kiosk.say(synthesize_french(QUESTION), QUESTION), 30)
        assert turn.v2v_ms is not None, "JARVIS never answered out loud"
        print(f"\nvoice-to-voice: {turn.v2v_ms:.0f} ms (tiny weights, 2-core CPU, stand-in LLM)")
        video = await poll(lambda: kiosk.videos, 20)
        assert video == [{"url": "/videos/energie-lyon-part-dieu/squat.mp4", "title": "Le squat"}]
        # the member listens to the end of the answer before walking away
        await poll(lambda: kiosk.finished_speaking(turn.voice_end), 30, what="the end of JARVIS's answer")
    finally:
        await kiosk.leave()

    await session_ended(stack, session["session_id"])
    rows = await interactions(stack, session["session_id"])
    kinds = [r["kind"] for r in rows]
    assert kinds[0] == "agent" and "Camille" in rows[0]["text"], f"the greeting is logged first: {rows}"
    assert "user" in kinds, "the member's spoken turn was not logged"
    tools = [r["tool_name"] for r in rows if r["kind"] == "tool"]
    assert tools[:1] == ["display_video_tutorial"]
    after_tool = rows[[r["kind"] for r in rows].index("tool") + 1:]
    answer = next((r for r in after_tool if r["kind"] == "agent"), None)
    assert answer is not None, f"JARVIS's answer about the video was not logged: {[dict(r) for r in rows]}"
    # The tiny STT's pause head sometimes ends the turn inside the question (about one run in six):
    # the question's tail is then a second turn of the member's, which cuts the answer as any words
    # over JARVIS do. The answer's start is then what was logged, marked interrupted; or, when the
    # tail came before its first word (CI, 2026-12-04), JARVIS answered the tail instead.
    split = any(r["kind"] == "user" for r in after_tool) and (
        answer["interrupted"] or rows[-1]["kind"] == "agent"
    )
    assert "Le squat" in (answer["text"] or "") or split, (
        f"JARVIS's answer about the video was not logged: {[dict(r) for r in rows]}"
    )


async def test_member_who_asks_as_jarvis_starts_greeting_is_answered(voice_services: VoiceServices) -> None:
    """The member does not wait for the greeting: they ask over JARVIS's first words, and get the video.

    (LiveKit's AEC warm-up fed the STT silence for the first 3 s JARVIS spoke: such a question was never
    heard. The kiosk's microphone has its own echo cancellation; agent/voice.py turns the warm-up off.)
    """
    _session, kiosk = await visit(voice_services)
    try:
        joined = time.perf_counter()
        await poll(lambda: kiosk.heard.first_speech_after(joined - 10), 30, what="the greeting's audio")
        await kiosk.say(synthesize_french(QUESTION), QUESTION)
        video = await poll(lambda: kiosk.videos, 45, what="the video the member asked for over the greeting")
        assert video == [{"url": "/videos/energie-lyon-part-dieu/squat.mp4", "title": "Le squat"}]
    finally:
        await kiosk.leave()


async def test_member_talks_over_jarvis_and_jarvis_stops(stack: LocalStack, voice_services: VoiceServices) -> None:
    # Measured before the visit: the probe holds this process's CPU, which would delay the kiosk.
    stop_bound_ms = INTERRUPTION_MIN_MS + BARGE_IN_ALLOWANCE_MS * (factor := slowdown())
    session, kiosk = await visit(voice_services)
    try:
        await hear_the_greeting_out(kiosk)
        # first question: the video (short answer); second: the long answer we talk over
        first = await kiosk.hear_answer(await kiosk.say(synthesize_french(QUESTION), QUESTION), 30)
        assert first.first_answer is not None, "JARVIS did not answer the first question"
        await poll(lambda: kiosk.finished_speaking(first.voice_end), 30, what="the end of the first answer")
        second = await kiosk.hear_answer(await kiosk.say(synthesize_french(SECOND_QUESTION)), 30)
        assert second.first_answer is not None, "JARVIS did not start the long answer"
        # Talk over it once JARVIS is well into it (the answer lasts several seconds), at a moment
        # its voice is on: a slow TTS step on a loaded box leaves short gaps in it.
        await asyncio.sleep(0.5)
        assert await poll(lambda: kiosk.heard.speaking_at(time.perf_counter(), 0.2) or None, 3, every_s=0.02), (
            "JARVIS stopped its long answer on its own before the member talked over it; "
            f"the STT heard: {kiosk.member_transcripts}"
        )

        barge_in = await kiosk.start_saying(from_first_voiced_sample(synthesize_french(BARGE_IN)))
        # (the onset is when the first sample leaves the mic's queue: a moment from now)
        await asyncio.sleep(max(0.0, barge_in - time.perf_counter()) + 0.05)
        assert kiosk.heard.speaking_at(barge_in, 0.4), "JARVIS was not speaking when the member cut in"
        stopped = await poll(lambda: kiosk.heard.stopped_after(barge_in, QUIET_AFTER_STOP_S), 10)
        assert stopped is not None, "JARVIS kept talking over the member (or resumed within a second)"
        stop_ms = 1000 * (stopped - barge_in)
        print(
            f"\nbarge-in: JARVIS stopped {stop_ms:.0f} ms after the member's onset "
            f"(bound {stop_bound_ms:.0f} ms, machine slowdown {factor:.2f})"
        )
        assert stop_ms < stop_bound_ms, (
            f"JARVIS stopped {stop_ms:.0f} ms after the onset (bound {stop_bound_ms:.0f} ms); what the kiosk heard"
            f" (s from the onset): {voiced_spans(kiosk, barge_in, stopped + 0.2)}; the agent's barge-in:\n"
            + barge_in_log(stack, session["session_id"])
        )
        assert kiosk.heard.first_speech_after(stopped) is None or (
            (kiosk.heard.first_speech_after(stopped) or 0) - stopped >= QUIET_AFTER_STOP_S
        ), "JARVIS resumed speaking within a second of stopping"
        # The member's turn goes on to the STT: stay until it is transcribed (leaving earlier, on a
        # loaded box, once ended the session while the answer was only paused).
        await poll(
            lambda: any(at > barge_in for at, _ in kiosk.member_transcripts), 30, every_s=0.05,
            what="the member's words over JARVIS to be transcribed",
        )
    finally:
        await kiosk.leave()

    # What the agent recorded: the long answer, cut short by the member. Rows are written off the
    # conversation's path and the talked-over line is committed as late as the session's close,
    # so wait for the session's end (written after every row): waiting for "some interrupted
    # row" once read the rows before the barge-in's was written (an earlier interruption met it).
    await session_ended(stack, session["session_id"])
    rows = await interactions(stack, session["session_id"])
    cut = [r for r in rows if r["interrupted"]]
    print(f"interrupted lines: {[r['text'] for r in cut]}")
    assert cut and cut[-1]["kind"] == "agent" and LONG_ANSWER.startswith(cut[-1]["text"].strip()), (
        f"the long answer was not recorded as interrupted: {[dict(r) for r in rows]}"
    )
    assert len(cut[-1]["text"]) < len(LONG_ANSWER), "the interrupted line holds the whole answer"
