"""Fault row "LLM 500s" (docs/faults.md): Groq answers HTTP 500, then both LLMs do, then they come back.

Over the real SFU with the real worker: the primary's 500 sends the turn to the secondary at once;
with both failing the member hears the fixed apology, not silence; once they answer again the next
turn is answered. Every line the member typed is in the session log, the failed turn's included.
"""

from __future__ import annotations

import pytest

from agent.conversation import LLM_DOWN_APOLOGY
from jarvis_local.llm_standin import Fail
from tests.faults.conftest import Jarvis, ended, log_lines, primary_answer, rows, secondary_answer, visit

pytestmark = pytest.mark.integration

# An HTTP error moves on at once: no attempt timeout to wait out. Generous for a loaded 2-core box.
ANSWER_WITHIN_S = 5.0


async def test_groq_500s_then_every_llm_500s_then_both_back(llms: Jarvis) -> None:
    member = await visit(llms)
    try:
        llms.primary.script(lambda _request: Fail(500))
        answer, waited_failover = await member.ask("Quels sont les horaires ?")
        assert answer == "Réponse du secours : Quels sont les horaires ?"

        llms.secondary.script(lambda _request: Fail(503))
        answer, waited_apology = await member.ask("Il y a un cours de pilates ce soir ?")
        assert answer == LLM_DOWN_APOLOGY

        llms.primary.script(primary_answer)
        llms.secondary.script(secondary_answer)
        answer, waited_back = await member.ask("Et demain matin ?")
        # The primary again: the 500s did not take it out of the rotation for good.
        assert answer == "Réponse du primaire : Et demain matin ?"
    finally:
        await member.leave()
    print(
        f"\nLLM 500s: secondary's answer after {1000 * waited_failover:.0f} ms, apology after "
        f"{1000 * waited_apology:.0f} ms, primary back after {1000 * waited_back:.0f} ms"
    )
    assert max(waited_failover, waited_apology, waited_back) < ANSWER_WITHIN_S

    # Nothing said is lost: the member's three lines and JARVIS's four, in order.
    await ended(llms.stack, member.session_id)
    logged = [(r["kind"], r["text"]) for r in await rows(llms.stack, member.session_id)]
    assert logged[0][0] == "agent" and "Camille" in logged[0][1]
    assert logged[1:] == [
        ("user", "Quels sont les horaires ?"),
        ("agent", "Réponse du secours : Quels sont les horaires ?"),
        ("user", "Il y a un cours de pilates ce soir ?"),
        ("agent", LLM_DOWN_APOLOGY),
        ("user", "Et demain matin ?"),
        ("agent", "Réponse du primaire : Et demain matin ?"),
    ]
    # The worker log says the turn had no LLM, with the session's room, never the member's words.
    apologies = log_lines(llms.worker_log(), "all LLMs failed this turn; apologising", member.session_id)
    assert len(apologies) == 1, llms.worker_log(60)
    assert not log_lines(llms.worker_log(), "pilates")
