"""With no TTS replica left, the member still hears JARVIS's French apology (issue 16 item 3).

The agent synthesises its apologies once, while the TTS works (after the greeting); kill -9 the
only TTS engine, ask a question: the answer cannot be spoken, the TTS plugin gives up after its
retries, and the member hears the apology from the audio made earlier.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jarvis_local.kiosk_sim import SimulatedKiosk, open_session, poll, synthesize_french
from jarvis_local.llm_standin import LLMStandIn, Say
from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LocalStack
from tests.conftest import LYON_KEY
from tests.kyutai_common.replicas import kill9

pytestmark = pytest.mark.integration

AGENT = "jarvis-no-tts"
QUESTION = "Il reste de la place au cours de yoga"  # no inner pause: one turn for the tiny STT
# The TTS plugin's retries (LiveKit's APIConnectOptions) come before the apology.
APOLOGY_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def engines_env(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    models = tiny_models(Path(tmp_path_factory.mktemp("tiny-speech-no-tts")))
    return stack.start_speech_engines(models, streams=2)


@pytest.fixture(scope="module")
async def token_url(stack: LocalStack, engines_env: dict[str, str]) -> AsyncIterator[str]:
    async with LLMStandIn(lambda _request: Say("Oui, il reste trois places ce soir.")) as llm:
        yield await asyncio.to_thread(stack.start_jarvis, AGENT, {**engines_env, **llm.worker_env}, "agent-no-tts")


async def test_with_no_tts_replica_left_the_member_hears_the_apology(
    stack: LocalStack, engines_env: dict[str, str], token_url: str
) -> None:
    kiosk = SimulatedKiosk()
    session = await open_session(token_url, LYON_KEY, "LYON-0001", kiosk_id="no-tts")
    await kiosk.join(session["livekit_url"], session["token"])
    try:
        await poll(kiosk.agent, 90, what="JARVIS to join")
        await poll(lambda: kiosk.heard.first_speech_after(0), 60, what="the greeting")
        await poll(lambda: kiosk.finished_speaking(0), 30, what="the end of the greeting")
        await poll(
            lambda: "apology audio ready" in stack.log_tail("agent-no-tts", 400) or None, 60,
            what="the agent's apology audio",
        )

        tts_url = engines_env["KYUTAI_TTS_URL"]
        assert await kill9(stack.engines[tts_url]) == -9  # the only TTS replica: none is left

        pcm = await asyncio.to_thread(synthesize_french, QUESTION)
        turn = await kiosk.say(pcm, QUESTION)
        heard = await poll(lambda: kiosk.heard.first_speech_after(turn.voice_end), APOLOGY_WITHIN_S + 5, every_s=0.05)
        assert heard is not None, f"silence: no apology with the TTS down\nworker log:\n{worker_log(stack)}"
        ended = await poll(lambda: kiosk.heard.stopped_after(heard, 0.6), 30, what="the end of the apology")
        # The job's log lines reach the worker's log through its loop, possibly after the audio.
        def apology_logged() -> str | None:
            log = worker_log(stack)
            return log if "speech engines failed (tts_error); apologising" in log else None

        await poll(apology_logged, 15, what="the worker's 'apologising' line")
        print(
            f"\nno TTS left: the apology heard {heard - turn.voice_end:.2f} s after the question, "
            f"for {ended - heard:.2f} s"
        )
        assert heard - turn.voice_end < APOLOGY_WITHIN_S
        assert ended - heard > 1.0  # a sentence, not a click
    finally:
        await kiosk.leave()


def worker_log(stack: LocalStack) -> str:
    return stack.log_tail("agent-no-tts", 400)
