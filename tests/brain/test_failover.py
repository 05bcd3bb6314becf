"""Failover: the primary LLM errors (HTTP 500) or stalls past the attempt timeout, the
secondary answers the member. Both are stand-in servers reached through the real clients
(the Groq plugin for the primary, the OpenAI-compatible plugin for the secondary), assembled
by agent.llm.build_llm exactly as in production. The added latency is printed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from livekit.agents import APIConnectionError
from livekit.agents.voice.run_result import RunResult
from pydantic import SecretStr

from agent.conversation import LLM_DOWN_APOLOGY, build_conversation
from agent.llm import LLMConfig, LLMEndpoint, build_llm, llm_connect_options
from jarvis_local.llm_standin import Fail, Hang, LLMStandIn, Reply, Say
from tests.brain.conftest import CAMILLE, LYON, member_context, started

pytestmark = pytest.mark.integration

ATTEMPT_TIMEOUT_S = 1.0
SECONDARY_ANSWER = "Bonjour Camille, je suis là. Que puis-je faire pour toi ?"


def config_for(primary: LLMStandIn, secondary: LLMStandIn) -> LLMConfig:
    return LLMConfig(
        primary=LLMEndpoint(
            provider="groq", model="llama-3.3-70b-versatile", base_url=primary.base_url, api_key=SecretStr("gsk_test")
        ),
        secondary=LLMEndpoint(provider="vllm", model="mistral-small", base_url=secondary.base_url),
        attempt_timeout_s=ATTEMPT_TIMEOUT_S,
    )


async def one_turn(pool: Any, primary_reply: Reply) -> tuple[str, float, LLMStandIn, LLMStandIn]:
    """One member turn with a primary that always answers `primary_reply`; returns the answer,
    the turn's duration and the two servers."""
    async with LLMStandIn(lambda _: primary_reply) as primary, LLMStandIn(lambda _: Say(SECONDARY_ANSWER)) as secondary:
        config = config_for(primary, secondary)
        context = await member_context(pool, LYON, CAMILLE)
        conversation = await started(
            build_conversation(context, pool=pool, llm=build_llm(config), llm_conn_options=llm_connect_options(config))
        )
        async with conversation.session:
            began = time.perf_counter()
            result: RunResult[None] = await conversation.session.run(user_input="Salut JARVIS")
            elapsed = time.perf_counter() - began
            answer = result.expect.next_event().is_message(role="assistant").event().item.text_content or ""
            result.expect.no_more_events()
        await conversation.log.finish()
        return answer, elapsed, primary, secondary


async def test_secondary_answers_when_the_primary_fails_then_when_it_stalls(pool: Any) -> None:
    healthy_answer, healthy_s, primary, secondary = await one_turn(pool, Say("Réponse du primaire."))
    assert healthy_answer == "Réponse du primaire." and secondary.requests == []

    answer_500, failed_s, primary, secondary = await one_turn(pool, Fail(500))
    assert answer_500 == SECONDARY_ANSWER
    assert len(primary.requests) >= 1 and len(secondary.requests) == 1
    # The secondary got the same conversation: the member's prompt and words.
    assert "Camille" in secondary.requests[0]["messages"][0]["content"]
    assert secondary.requests[0]["messages"][-1] == {"role": "user", "content": "Salut JARVIS"}
    lost_on_500_s = secondary.request_times[0] - primary.request_times[0]

    answer_stall, stalled_s, primary, secondary = await one_turn(pool, Hang(10))
    assert answer_stall == SECONDARY_ANSWER
    lost_on_stall_s = secondary.request_times[0] - primary.request_times[0]
    assert ATTEMPT_TIMEOUT_S * 0.9 <= lost_on_stall_s < ATTEMPT_TIMEOUT_S + 1.0

    # Added latency: from the request to the primary to the request to the secondary.
    print(
        f"\nfailover (attempt timeout {1000 * ATTEMPT_TIMEOUT_S:.0f} ms): "
        f"primary HTTP 500 → secondary asked after {1000 * lost_on_500_s:.1f} ms "
        f"(turn {1000 * failed_s:.0f} ms); "
        f"primary stalled → secondary asked after {1000 * lost_on_stall_s:.0f} ms "
        f"(turn {1000 * stalled_s:.0f} ms); healthy primary turn {1000 * healthy_s:.0f} ms"
    )


async def test_when_every_llm_fails_the_member_hears_an_apology_not_silence(pool: Any) -> None:
    async with LLMStandIn(lambda _: Fail(500)) as primary, LLMStandIn(lambda _: Fail(503)) as secondary:
        config = config_for(primary, secondary)
        context = await member_context(pool, LYON, CAMILLE)
        conversation = await started(
            build_conversation(context, pool=pool, llm=build_llm(config), llm_conn_options=llm_connect_options(config))
        )
        async with conversation.session:
            # The apology is part of the turn: the run ends on it instead of the LLM's error.
            with contextlib.suppress(APIConnectionError):
                await conversation.session.run(user_input="Salut JARVIS")
            for _ in range(100):
                said = [m.text_content for m in conversation.session.history.messages() if m.role == "assistant"]
                if said:
                    break
                await asyncio.sleep(0.02)
            assert said == [LLM_DOWN_APOLOGY]
        await conversation.log.finish()
