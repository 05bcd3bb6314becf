"""The whole voice stack on loopback: Kyutai engines on tiny checkpoints, the LLM stand-in, a worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jarvis_local.llm_standin import CallTool, EchoToolResult, LLMStandIn, Reply, Say
from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LocalStack

VOICE_AGENT = "jarvis-voice"
VOICE_AGENT_LOG = "agent-voice"
LONG_ANSWER = (
    "Pour bien t'échauffer avant la séance, commence par cinq minutes de rameur à allure douce, "
    "puis fais des rotations des épaules, des hanches et des chevilles, et termine par deux séries "
    "légères de l'exercice que tu vas travailler aujourd'hui."
)


def gym_conversation(request: dict[str, Any]) -> Reply:
    """First question → the squat video; every later one → a long spoken answer (to talk over)."""
    messages = request.get("messages", [])
    if messages and messages[-1].get("role") == "tool":
        return EchoToolResult()
    asked_before = any(m.get("role") == "tool" for m in messages)
    if not asked_before:
        return CallTool("display_video_tutorial", {"exercise": "squat"})
    return Say(LONG_ANSWER)


@dataclass
class VoiceServices:
    token_url: str
    llm: LLMStandIn


@pytest.fixture(scope="module")
def speech_env(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    models = tiny_models(Path(tmp_path_factory.mktemp("tiny-speech")))
    yield stack.start_speech_engines(models, streams=4)


@pytest.fixture(scope="module")
async def voice_services(stack: LocalStack, speech_env: dict[str, str]) -> AsyncIterator[VoiceServices]:
    import asyncio

    async with LLMStandIn(gym_conversation) as llm:
        env = {
            **speech_env,
            **llm.worker_env,
        }
        token_url = await asyncio.to_thread(stack.start_jarvis, VOICE_AGENT, env, VOICE_AGENT_LOG)
        yield VoiceServices(token_url, llm)
