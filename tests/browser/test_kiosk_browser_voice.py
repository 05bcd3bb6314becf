"""The kiosk page talks with the real JARVIS voice loop: Chromium's fake microphone plays a
French question, the worker hears it through Kyutai STT, the LLM stand-in asks for the squat
video, Kyutai TTS answers out loud. Tiny random-weight Kyutai checkpoints: JARVIS speaks
noise, but every stage of the real loop runs, and the browser measures what it receives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.turns import LATE_AFTER_S
from jarvis_local.browser import ARTIFACTS, CHROMIUM, demo_server, ensure_kiosk_built, french_wav, run_scenario
from jarvis_local.llm_standin import CallTool, EchoToolResult, LLMStandIn, Reply, Say
from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LocalStack

pytestmark = [
    pytest.mark.browser,
    pytest.mark.requires(CHROMIUM.exists(), reason="Debian's Chromium is not installed (/usr/bin/chromium)"),
]

VOICE_AGENT = "jarvis-kiosk-voice"
QUESTION = "Bonjour JARVIS, tu peux me montrer comment faire un squat ?"
LYON_SQUAT_VIDEO = "/videos/energie-lyon-part-dieu/squat.mp4"
# The fake microphone waits this long before the question, so JARVIS's greeting is over: agent dispatch,
# the job's start and the whole greeting must fit in it on a loaded CI box too.
GREETING_ROOM_S = 12.0
BROWSER_V2V_MAX_MS = 1000 * LATE_AFTER_S


def squat_by_voice(request: dict[str, Any]) -> Reply:
    """Whatever the tiny STT heard, the member's first turn asks for the squat video."""
    messages = request.get("messages", [])
    if messages and messages[-1].get("role") == "tool":
        return EchoToolResult()
    if any(m.get("role") == "user" for m in messages):
        return CallTool("display_video_tutorial", {"exercise": "squat"})
    return Say("Bonjour Camille !")


@pytest.fixture(scope="module")
def speech_env(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    models = tiny_models(Path(tmp_path_factory.mktemp("tiny-speech")))
    yield stack.start_speech_engines(models, streams=4)


@pytest.fixture(scope="module")
async def voice_kiosk(stack: LocalStack, speech_env: dict[str, str]) -> AsyncIterator[tuple[str, str]]:
    """(kiosk page URL, token service URL) with a JARVIS worker that speaks (Kyutai, tiny)."""
    ensure_kiosk_built()
    async with LLMStandIn(squat_by_voice) as llm:
        env = {
            **speech_env,
            **llm.worker_env,
        }
        token_url = await asyncio.to_thread(stack.start_jarvis, VOICE_AGENT, env, "agent-kiosk-voice")
        with demo_server(token_url) as url:
            yield url, token_url


async def test_member_speaks_to_jarvis_from_the_browser_and_gets_the_video(
    voice_kiosk: tuple[str, str], stack: LocalStack, tmp_path: Path
) -> None:
    url, _token_url = voice_kiosk
    question = french_wav(tmp_path / "question.wav", QUESTION, lead_silence_s=GREETING_ROOM_S, tail_silence_s=20)
    result = await run_scenario({
        "url": url + "?agentTimeoutMs=60000",
        "wav": str(question),
        "steps": [
            {"click_badge": "LYON-0001"},
            {"wait_agent_present": True, "timeoutMs": 60_000},
            {"wait_agent_audio": 0.005, "timeoutMs": 30_000},  # the greeting, out loud
            {"save_diagnostics": "greeted"},
            {"measure_turn": {"threshold": 0.005, "silenceMs": 500, "since": "now", "timeoutMs": 40_000}},
            {"wait_video": LYON_SQUAT_VIDEO, "timeoutMs": 30_000},
            {"screenshot": "kiosk-voice-video.png"},
            {"tap_video": True},
            {"end": True},
        ],
    }, timeout_s=240)
    if not result["ok"]:
        print(stack.log_tail("agent-kiosk-voice", 40))
    assert result["ok"], f"{result.get('error')} at {result.get('current_step')}; states={result.get('states')}"
    assert result["page_errors"] == []
    assert result["agent_audio_peak_rms"] > 0.005, "JARVIS's greeting reached the browser with energy"
    assert {"listening", "speaking"} <= {s["state"] for s in result["states"]}
    # barge-in's kiosk half: JARVIS's voice ducks while the member's microphone carries their
    # question (Web Audio on the real capture track), never on JARVIS's own greeting, and comes back
    assert result["greeted"]["ducks"] == [], "the greeting ducked itself with no sound from the member"
    ducks = [d["ducked"] for d in result["ducks"]]
    assert ducks[:1] == [True] and ducks[-1] is False, ducks
    (turn,) = result["turns"]
    # Measured 779 ms p50 (browser) on this 2-core machine, SimulatedKiosk up to 1.4 s under heavy
    # load (kiosk/README.md); past 3 s bench.turns counts the answer late: a failure here.
    assert 0 < turn["v2v_ms"] < BROWSER_V2V_MAX_MS
    print(f"\nbrowser voice-to-voice: {turn['v2v_ms']:.0f} ms (tiny Kyutai weights, 2-core CPU, stand-in LLM)")
    assert (ARTIFACTS / "kiosk-voice-video.png").exists()
