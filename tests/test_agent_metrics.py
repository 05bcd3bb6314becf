"""The agent's per-turn figures: stage times by speech id, exported only for answers the member heard."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from livekit.agents import metrics
from livekit.agents.llm import ChatMessage

from agent.metrics import TurnLatency


def eou(delay: float, transcription: float, speech_id: str, at: float = 1000.0) -> metrics.EOUMetrics:
    return metrics.EOUMetrics(
        timestamp=at,
        end_of_utterance_delay=delay,
        transcription_delay=transcription,
        on_user_turn_completed_delay=0.0,
        speech_id=speech_id,
    )


def llm(ttft: float, speech_id: str, cancelled: bool = False) -> metrics.LLMMetrics:
    return metrics.LLMMetrics(
        label="llm",
        request_id="r",
        timestamp=0.0,
        duration=1.0,
        ttft=ttft,
        cancelled=cancelled,
        completion_tokens=1,
        prompt_tokens=1,
        prompt_cached_tokens=0,
        total_tokens=2,
        tokens_per_second=1.0,
        speech_id=speech_id,
    )


def tts(ttfb: float, speech_id: str) -> metrics.TTSMetrics:
    return metrics.TTSMetrics(
        label="tts",
        request_id="r",
        timestamp=0.0,
        ttfb=ttfb,
        duration=1.0,
        audio_duration=1.0,
        cancelled=False,
        characters_count=10,
        streamed=True,
        speech_id=speech_id,
    )


@dataclass
class FakeHandle:
    """The parts of livekit's SpeechHandle the collector reads."""

    id: str
    scheduled: bool = True
    interrupted: bool = False
    chat_items: list[Any] = field(default_factory=list)


def answer(report: dict[str, Any]) -> ChatMessage:
    return ChatMessage(role="assistant", content=["Voici comment faire un squat."], metrics=report)


def test_a_heard_answer_is_exported_with_its_own_stage_times_and_no_text() -> None:
    published: list[dict[str, Any]] = []
    latency = TurnLatency(publish=published.append)
    # the preemptive run's cancelled LLM call must not count as the turn's TTFT
    for m in (eou(0.1, 0.05, "s1", at=1000.0), llm(0.9, "s1", cancelled=True), llm(0.2, "s1"), tts(0.15, "s1")):
        latency.on_metrics(m)
    latency.on_speech_done(FakeHandle("s1", chat_items=[answer({"started_speaking_at": 1000.5})]))
    (turn,) = latency.turns()
    assert turn == {
        "speech_id": "s1", "end_of_turn_at": 1000.0, "user_stopped_at": 1000.05, "playout_at": 1000.5,
        "end_of_turn_ms": 100.0, "stt_final_ms": 50.0, "llm_ttft_ms": 200.0, "tts_ttfa_ms": 150.0,
        "agent_v2v_ms": 450.0, "interrupted": False,
    }
    assert published == [turn]
    assert "squat" not in repr(published)


def test_livekits_per_message_figures_win_over_the_events() -> None:
    latency = TurnLatency()
    for m in (eou(0.0, 0.0, "s1"), llm(0.5, "s1"), tts(0.5, "s1")):
        latency.on_metrics(m)
    report = {"started_speaking_at": 2000.0, "llm_node_ttft": 0.21, "tts_node_ttfb": 0.31, "e2e_latency": 0.6}
    latency.on_speech_done(FakeHandle("s1", chat_items=[answer(report)]))
    (turn,) = latency.turns()
    assert (turn["llm_ttft_ms"], turn["tts_ttfa_ms"], turn["agent_v2v_ms"]) == (210.0, 310.0, 600.0)
    assert turn["user_stopped_at"] == 1999.4


def test_work_that_never_reached_the_member_is_counted_apart() -> None:
    latency = TurnLatency()
    # a preemptive run discarded: never scheduled, never heard
    latency.on_metrics(llm(0.3, "pre"))
    latency.on_speech_done(FakeHandle("pre", scheduled=False))
    # an answer stopped before its first audio frame
    latency.on_metrics(eou(0.1, 0.05, "cut"))
    latency.on_speech_done(FakeHandle("cut"))
    # the greeting: heard, but it answers no member turn
    latency.on_speech_done(FakeHandle("hello", chat_items=[answer({"started_speaking_at": 10.0})]))
    # an answer interrupted once the member had heard it begin: a turn, flagged
    latency.on_metrics(eou(0.1, 0.05, "barge"))
    latency.on_speech_done(FakeHandle("barge", interrupted=True, chat_items=[answer({"started_speaking_at": 20.0})]))
    summary = latency.summary()
    assert [t["speech_id"] for t in summary["turns"]] == ["barge"]
    assert summary["turns"][0]["interrupted"] is True
    assert summary["turns"][0]["llm_ttft_ms"] is None  # not reported: null, never 0
    assert summary["counts"] == {
        "answered": 1, "interrupted": 1, "cancelled": 1, "preemptive_discarded": 1, "other_speech": 1,
    }


def test_a_stale_anchor_is_ignored() -> None:
    latency = TurnLatency()
    for m in (eou(9e8, 0.05, "s2"), llm(0.2, "s2"), tts(0.15, "s2")):  # livekit-agents' stale anchor
        latency.on_metrics(m)
    latency.on_speech_done(FakeHandle("s2", chat_items=[answer({"started_speaking_at": 5.0})]))
    (turn,) = latency.turns()
    assert turn["end_of_turn_ms"] is None and turn["agent_v2v_ms"] is None
    summary = latency.summary()
    assert summary["llm_ttft_ms_p50"] == 200.0 and "end_of_turn_ms_p50" not in summary
