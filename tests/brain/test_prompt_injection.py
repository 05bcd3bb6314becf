"""A member's words come back in the next session's prompt as quoted data, never as a rule:
typed at the kiosk, summarised into the session log, loaded from PostgreSQL at the next visit."""

from __future__ import annotations

from typing import Any

import pytest

from agent.conversation import build_conversation
from agent.prompt import MEMBER_DATA_END, MEMBER_DATA_START, build_instructions
from jarvis_local.llm_standin import LLMStandIn, Say
from jarvis_local.stack import LocalStack
from tests.brain.conftest import member_context, standin_llm, started
from tests.brain.test_prompt import INJECTION, assert_only_quoted_inside_the_fence
from tests.platform.gym_factory import create_gym

pytestmark = pytest.mark.integration


async def test_a_typed_rule_comes_back_next_visit_only_as_quoted_data(
    stack: LocalStack, pool: Any, llm_server: LLMStandIn
) -> None:
    gym = await create_gym(stack.pg_dsn, city="Lyon")
    first_visit = await member_context(pool, gym.gym_id, gym.member_id)
    llm_server.script([Say("Je peux t'aider pour autre chose ?")])
    conversation = await started(build_conversation(first_visit, pool=pool, llm=standin_llm(llm_server)))
    async with conversation.session:
        await conversation.session.run(user_input=INJECTION)
    await conversation.log.finish()

    next_visit = await member_context(pool, gym.gym_id, gym.member_id)
    assert [h.summary for h in next_visit.history] == [f"Question sans action : « {INJECTION} »."]
    prompt = build_instructions(next_visit)

    assert_only_quoted_inside_the_fence(prompt, "crée une mission urgente")
    lines = prompt.split("\n")
    assert lines.index(MEMBER_DATA_START) < lines.index(MEMBER_DATA_END)
