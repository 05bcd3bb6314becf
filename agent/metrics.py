"""The worker's Prometheus metrics, under the names the gym's dashboards already use.

Each job (session) runs in its own process: livekit-agents serves every process's samples from
one port through prometheus_client's multiprocess mode (``JARVIS_PROMETHEUS_PORT``).
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from typing import Any

from livekit.agents import metrics as lk_metrics
from prometheus_client import Counter, Gauge, Histogram

_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)

VOICE_LATENCY = Histogram(
    "jarvis_voice_latency_seconds",
    "Latency of each stage of a voice turn (end_of_turn, stt, llm, tts, transport, voice_to_voice)",
    ["stage"],
    buckets=_BUCKETS,
)
SESSIONS_ACTIVE = Gauge(
    "jarvis_voice_sessions_active", "Kiosk sessions in progress", multiprocess_mode="livesum"
)
ERRORS = Counter("jarvis_voice_errors_total", "Errors by kind (stt, llm, tts, tool, database, …)", ["type"])

STAGES = ("end_of_turn", "stt", "llm", "tts")
MAX_STAGE_S = 60.0
logger = logging.getLogger("jarvis.agent.metrics")


class TurnLatency:
    """Collects one session's per-stage latencies from AgentSession's ``metrics_collected``.

    The agent sees end of turn, STT final, LLM time to first token and TTS time to first audio;
    their sum is its voice-to-voice estimate. Transport is only seen by the kiosk.
    """

    def __init__(self) -> None:
        self.stages: dict[str, list[float]] = defaultdict(list)
        self._turns: dict[str, dict[str, float]] = defaultdict(dict)

    def on_metrics(self, collected: Any) -> None:
        m = collected.metrics if hasattr(collected, "metrics") else collected
        speech_id = getattr(m, "speech_id", None)
        if isinstance(m, lk_metrics.EOUMetrics):
            self._record("end_of_turn", m.end_of_utterance_delay, speech_id)
            self._record("stt", m.transcription_delay, speech_id)
        elif isinstance(m, lk_metrics.LLMMetrics) and m.ttft >= 0:
            self._record("llm", m.ttft, speech_id)
        elif isinstance(m, lk_metrics.TTSMetrics) and m.ttfb >= 0:
            self._record("tts", m.ttfb, speech_id)
        elif isinstance(m, lk_metrics.STTMetrics | lk_metrics.VADMetrics):
            return

    def _record(self, stage: str, seconds: float, speech_id: str | None) -> None:
        if not 0.0 <= seconds <= MAX_STAGE_S:
            # livekit-agents reports a nonsense delay when its "user stopped speaking" anchor is
            # stale (seen: 9e8 s); one such value would wreck the session's summary.
            logger.warning("ignoring %s latency of %.1f s", stage, seconds)
            return
        VOICE_LATENCY.labels(stage).observe(seconds)
        self.stages[stage].append(seconds)
        if speech_id is None:
            return
        turn = self._turns[speech_id]
        turn[stage] = seconds
        if all(s in turn for s in STAGES) and "voice_to_voice" not in turn:
            # end_of_turn already includes waiting for the STT final, so stt is not added twice
            total = turn["end_of_turn"] + turn["llm"] + turn["tts"]
            turn["voice_to_voice"] = total
            VOICE_LATENCY.labels("voice_to_voice").observe(total)
            self.stages["voice_to_voice"].append(total)

    def summary(self) -> dict[str, float]:
        """Median milliseconds per stage, for voice_sessions.latency_summary."""
        return {
            f"{stage}_ms_p50": round(1000 * statistics.median(values), 1)
            for stage, values in self.stages.items()
            if values
        }
