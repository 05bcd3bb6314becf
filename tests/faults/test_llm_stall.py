"""Fault row "LLM stall" (docs/faults.md): Groq accepts the request and never answers, then both
LLMs do, then Groq's stream stops mid-answer; then they answer again.

Over the real SFU with the real worker; the attempt timeout is 1.5 s here (production: 4 s), so the
member waits one attempt timeout per stalled LLM, never longer, and never in silence for good.
"""

from __future__ import annotations

import time

import pytest

from agent.conversation import LLM_DOWN_APOLOGY
from jarvis_local.kiosk_sim import poll
from jarvis_local.llm_standin import Hang, Say
from tests.faults.conftest import (
    ATTEMPT_TIMEOUT_S,
    Jarvis,
    ended,
    log_lines,
    primary_answer,
    rows,
    secondary_answer,
    visit,
)

pytestmark = pytest.mark.integration

# What a loaded 2-core machine adds to the attempt timeout (measured: 0.1-0.3 s).
SLACK_S = 3.0
YOGA_ANSWER = "Alors pour le yoga il faut un tapis et une serviette."


async def test_groq_stalls_then_both_stall_then_groq_stalls_mid_answer(llms: Jarvis) -> None:
    member = await visit(llms)
    try:
        # Groq stalls: the secondary answers once the attempt timeout is spent.
        llms.primary.script(lambda _request: Hang(8))
        answer, waited_failover = await member.ask("Quels sont les horaires ?")
        assert answer == "Réponse du secours : Quels sont les horaires ?"

        # Both stall: the apology, one attempt timeout later (Groq, known down, is not waited for again).
        llms.secondary.script(lambda _request: Hang(8))
        answer, waited_apology = await member.ask("Il y a un cours de yoga ce soir ?", 30)
        assert answer == LLM_DOWN_APOLOGY

        llms.primary.script(primary_answer)
        llms.secondary.script(secondary_answer)
        answer, _ = await member.ask("Et demain matin ?", 30)
        assert answer == "Réponse du primaire : Et demain matin ?"

        # Groq's stream stops after four words: those were said and stay said (no failover once
        # text went out: the secondary would repeat or contradict it); the apology follows.
        llms.primary.script(lambda _request: Say(YOGA_ANSWER, stall_after_words=4, stall_s=8))
        asked = time.perf_counter()
        partial, _ = await member.ask("Que faut-il pour le yoga ?", 30)
        assert partial == "Alors pour le yoga"
        await poll(lambda: len(member.said()) >= 6, ATTEMPT_TIMEOUT_S + SLACK_S, what="the apology after the stall")
        waited_stall = member.kiosk.transcripts[5][0] - asked
        assert member.said()[5] == LLM_DOWN_APOLOGY

        llms.primary.script(primary_answer)
        answer, _ = await member.ask("Merci !", 30)
        assert answer == "Réponse du primaire : Merci !"
    finally:
        await member.leave()
    print(
        f"\nLLM stall (attempt timeout {ATTEMPT_TIMEOUT_S} s): secondary's answer after {waited_failover:.2f} s, "
        f"apology with both stalled after {waited_apology:.2f} s, apology after a mid-answer stall {waited_stall:.2f} s"
    )
    assert ATTEMPT_TIMEOUT_S * 0.9 <= waited_failover < ATTEMPT_TIMEOUT_S + SLACK_S
    assert ATTEMPT_TIMEOUT_S * 0.9 <= waited_apology < 2 * ATTEMPT_TIMEOUT_S + SLACK_S
    assert ATTEMPT_TIMEOUT_S * 0.9 <= waited_stall < ATTEMPT_TIMEOUT_S + SLACK_S

    # Nothing said is lost, the half answer included.
    await ended(llms.stack, member.session_id)
    logged = [(r["kind"], r["text"]) for r in await rows(llms.stack, member.session_id)]
    assert logged[1:] == [
        ("user", "Quels sont les horaires ?"),
        ("agent", "Réponse du secours : Quels sont les horaires ?"),
        ("user", "Il y a un cours de yoga ce soir ?"),
        ("agent", LLM_DOWN_APOLOGY),
        ("user", "Et demain matin ?"),
        ("agent", "Réponse du primaire : Et demain matin ?"),
        ("user", "Que faut-il pour le yoga ?"),
        ("agent", "Alors pour le yoga"),
        ("agent", LLM_DOWN_APOLOGY),
        ("user", "Merci !"),
        ("agent", "Réponse du primaire : Merci !"),
    ]
    log = llms.worker_log()
    assert log_lines(log, "failed, switching to next LLM", member.session_id)
    assert log_lines(log, "failed after sending chunk", member.session_id)
    assert len(log_lines(log, "all LLMs failed this turn; apologising", member.session_id)) == 2
