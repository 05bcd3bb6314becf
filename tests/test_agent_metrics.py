"""The agent's latency summary: stages from LiveKit's metrics events, nonsense values left out."""

from __future__ import annotations

from livekit.agents import metrics

from agent.metrics import TurnLatency


def eou(delay: float, transcription: float, speech_id: str) -> metrics.EOUMetrics:
    return metrics.EOUMetrics(
        timestamp=0.0,
        end_of_utterance_delay=delay,
        transcription_delay=transcription,
        on_user_turn_completed_delay=0.0,
        speech_id=speech_id,
    )


def llm(ttft: float, speech_id: str) -> metrics.LLMMetrics:
    return metrics.LLMMetrics(
        label="llm",
        request_id="r",
        timestamp=0.0,
        duration=1.0,
        ttft=ttft,
        cancelled=False,
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


def test_a_turn_sums_to_voice_to_voice_and_a_stale_anchor_is_ignored() -> None:
    latency = TurnLatency()
    for m in (eou(0.1, 0.05, "s1"), llm(0.2, "s1"), tts(0.15, "s1")):
        latency.on_metrics(m)
    latency.on_metrics(eou(9e8, 0.05, "s2"))  # livekit-agents' stale anchor
    summary = latency.summary()
    assert summary["voice_to_voice_ms_p50"] == 450.0
    assert summary["end_of_turn_ms_p50"] == 100.0
    assert summary["llm_ms_p50"] == 200.0 and summary["tts_ms_p50"] == 150.0
