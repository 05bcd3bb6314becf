"""Engine replicas fail over under a live conversation, over the real SFU (issue 16 item 3).

Two STT and two TTS engine processes; while JARVIS answers, kill -9 the STT and the TTS replica
serving the session. The answer is still heard (or the apology within 1 s), the next turn works,
then 10 new sessions all hear JARVIS's greeting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from jarvis_local.kiosk_sim import SimulatedKiosk, open_session, poll, synthesize_french
from jarvis_local.llm_standin import LLMStandIn, Say
from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LocalStack
from tests.kyutai_common.replicas import kill9
from tests.voice.conftest import LONG_ANSWER, VoiceServices

pytestmark = pytest.mark.integration

AGENT = "jarvis-failover"
QUESTION = "Comment je m'échauffe avant la séance ?"
NEXT_QUESTION = "Et après la séance, je fais quoi ?"
APOLOGY_WITHIN_S = 1.0


@pytest.fixture(scope="module")
def replica_env(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    models = tiny_models(Path(tmp_path_factory.mktemp("tiny-speech-replicas")))
    yield stack.start_speech_engines(models, streams=4, replicas=2)


@pytest.fixture(scope="module")
async def services(stack: LocalStack, replica_env: dict[str, str]) -> AsyncIterator[VoiceServices]:
    async with LLMStandIn(lambda _request: Say(LONG_ANSWER)) as llm:
        env = {**replica_env, **llm.worker_env}
        token_url = await asyncio.to_thread(stack.start_jarvis, AGENT, env, "agent-failover")
        yield VoiceServices(token_url, llm)


async def visit(services: VoiceServices) -> SimulatedKiosk:
    session = await open_session(services.token_url, "demo-key-lyon-part-dieu", "LYON-0001")
    kiosk = SimulatedKiosk()
    await kiosk.join(session["livekit_url"], session["token"])
    assert await poll(kiosk.agent, 60), "JARVIS did not join"
    return kiosk


async def serving(urls: list[str]) -> str:
    """The replica with a live stream (this test's session is the only one)."""
    async with httpx.AsyncClient(timeout=5.0) as client:  # a busy engine answers its health late
        for url in urls:
            if (await client.get(f"http{url[2:]}/api/health")).json()["streams_in_use"] > 0:
                return url
    raise AssertionError(f"no replica of {urls} holds a stream")


async def engines_health(urls: list[str]) -> dict[str, object]:
    """Each replica's health answer, or why there was none (for a failure message)."""
    answers: dict[str, object] = {}
    async with httpx.AsyncClient(timeout=2.0) as client:
        for url in urls:
            try:
                answers[url] = (await client.get(f"http{url[2:]}/api/health")).json()
            except (httpx.HTTPError, ValueError) as exc:
                answers[url] = type(exc).__name__
    return answers


def longest_silence(kiosk: SimulatedKiosk, start: float, end: float) -> float:
    voiced = [at for at, level in kiosk.heard.frames if start <= at <= end and level >= 300]
    return max((b - a for a, b in zip([start, *voiced], voiced, strict=False)), default=0.0)


async def test_killing_the_serving_replicas_mid_answer(
    stack: LocalStack, replica_env: dict[str, str], services: VoiceServices
) -> None:
    # This module's replicas (the stack is shared with other modules' engines).
    stt_urls = replica_env["KYUTAI_STT_URLS"].split(",")
    tts_urls = replica_env["KYUTAI_TTS_URLS"].split(",")
    assert len(stt_urls) == 2 and len(tts_urls) == 2
    kiosk = await visit(services)
    try:
        joined = time.perf_counter()
        await poll(lambda: kiosk.heard.first_speech_after(joined - 10), 30, what="the greeting")
        await poll(lambda: kiosk.finished_speaking(joined - 10), 20, what="the end of the greeting")

        turn = await kiosk.hear_answer(await kiosk.say(synthesize_french(QUESTION), QUESTION), 30)
        assert turn.first_answer is not None, "JARVIS did not start answering"
        await asyncio.sleep(0.5)  # well into the answer
        stt_victim, tts_victim = await serving(stt_urls), await serving(tts_urls)
        killed_at = time.perf_counter()
        statuses = await asyncio.gather(kill9(stack.engines[stt_victim]), kill9(stack.engines[tts_victim]))
        assert statuses == [-9, -9], f"exit statuses {statuses}"

        ended = await poll(lambda: kiosk.heard.stopped_after(killed_at, 1.5), 40, what="the end of the answer")
        heard_after = ended - killed_at
        gap = longest_silence(kiosk, killed_at, ended)
        print(
            f"\nSFU failover: kill -9 of STT {stt_victim} and TTS {tts_victim}; answer heard for "
            f"{heard_after:.2f} s after the kill, longest silence within it {1000 * gap:.0f} ms"
        )
        # The answer goes on (the tiny TTS speaks LONG_ANSWER for many seconds), or the apology
        # starts within 1 s of the kill.
        assert heard_after > 2.0 or (kiosk.heard.first_speech_after(killed_at) or 1e9) - killed_at < APOLOGY_WITHIN_S

        # The plugins moved the streams (one log line per failover: replica, stream id, reason).
        # Each engine's loss is logged on its own, and reaches the worker's log through its loop.
        def both_moved() -> list[str] | None:
            lines = failover_lines(stack)
            tts_moved = any(tts_victim in line and "TTS" in line for line in lines)
            stt_moved = any(stt_victim in line and "STT" in line for line in lines)
            return lines if tts_moved and stt_moved else None

        lines = await poll(both_moved, 15, what="the failover log lines of both plugins")
        print("\n".join(lines))

        nxt = await kiosk.hear_answer(await kiosk.say(synthesize_french(NEXT_QUESTION), NEXT_QUESTION), 30)
        assert nxt.v2v_ms is not None, "the next turn got no answer"
        print(f"next turn after the failover: voice-to-voice {nxt.v2v_ms:.0f} ms")
    finally:
        await kiosk.leave()

    async def greeted() -> float:
        kiosk = await visit(services)
        try:
            joined = time.perf_counter()
            heard = await poll(lambda: kiosk.heard.first_speech_after(joined - 10), 30, what="the greeting")
            return heard - joined
        finally:
            await kiosk.leave()

    async def streams_closed() -> bool:
        health = await engines_health(stt_urls + tts_urls)
        return all(not isinstance(h, dict) or h.get("streams_in_use") == 0 for h in health.values())

    waits: list[float] = []
    for _ in range(10):  # one after the other: a 2-core machine shared with other tests
        try:
            waits.append(await greeted())
            # The next kiosk comes once this one's streams are closed: with half the replicas
            # gone, a burst of overlapping sessions fills the survivors, the worker then reports
            # itself full (engine-aware load) and LiveKit never dispatches a room created then.
            await poll(streams_closed, 20, every_s=0.2, what="the engines to release the session's streams")
        except AssertionError as exc:
            health = await engines_health(stt_urls + tts_urls)
            raise AssertionError(
                f"{exc}\nengines: {health}\nworker log:\n{stack.log_tail('agent-failover', 60)}"
            ) from exc
    print(f"10 new sessions after the failover: greeting heard after {[round(w, 1) for w in waits]} s")
    assert len(waits) == 10


def failover_lines(stack: LocalStack) -> list[str]:
    lines = stack.log_tail("agent-failover", 2000).splitlines()
    return [line for line in lines if "failover: replica" in line and "lost mid-" in line]
