"""The worker's metrics: each voice turn's stage times, exported per turn, and Prometheus.

Each job (session) runs in its own process: livekit-agents serves every process's samples from
one port through prometheus_client's multiprocess mode (``JARVIS_PROMETHEUS_PORT``).

:class:`TurnLatency` keeps, per speech id, the stage times LiveKit reports for it and, once
the speech is done, exports one record per turn whose answer reached the member (its first
audio frame went out). Work that never reached the member is only counted:

- ``cancelled``: an answer to a member turn that was stopped before its first audio frame;
- ``preemptive_discarded``: a preemptive LLM run (started on interim words) that was thrown
  away because the final transcript differed;
- ``other_speech``: speech that answers no member turn (the greeting, a ``say``).

An answer the member interrupted after it began playing did reach the member: it is a turn,
with ``"interrupted": true``, and also counted in ``interrupted``.

One turn record (:func:`TurnLatency.turns`, the ``jarvis.turn_metrics`` data packets and
``voice_sessions.latency_summary["turns"]``): ids and numbers only, never transcript text::

    {"speech_id": "speech_…", "end_of_turn_at": 1717000000.12, "user_stopped_at": 1717000000.05,
     "playout_at": 1717000000.71, "end_of_turn_ms": 4.0, "stt_final_ms": 2.0, "llm_ttft_ms": 230.5,
     "tts_ttfa_ms": 310.2, "agent_v2v_ms": 660.0, "interrupted": false}

``*_at`` are wall-clock seconds (``time.time()``): ``end_of_turn_at`` when the agent committed the
member's turn, ``playout_at`` when the answer's first audio frame went out to the room,
``user_stopped_at`` when the agent heard the member stop (``playout_at - agent_v2v_ms``). A
bench matches a turn to the kiosk's utterance with them (same host: same clock). Any stage
LiveKit did not report is ``null``. The data packet also carries ``member_audio_jitter``: the
jitter buffer the member's audio has waited in so far (``jarvis.audio_stats.JitterBuffer``), a
part of the voice-to-voice time none of the stages above sees.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc
from livekit.agents import metrics as lk_metrics
from livekit.agents.llm import ChatMessage
from prometheus_client import Counter, Gauge, Histogram

from jarvis.audio_stats import room_audio_jitter

# 50 ms resolution up to 1 s, where the turn budget is decided; coarser beyond.
_BUCKETS = (*(round(0.05 * i, 2) for i in range(1, 21)), 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)

VOICE_LATENCY = Histogram(
    "jarvis_voice_latency_seconds",
    "Latency of each stage of a voice turn that reached the member (end_of_turn, stt, llm, tts, voice_to_voice)",
    ["stage"],
    buckets=_BUCKETS,
)
SESSIONS_ACTIVE = Gauge(
    "jarvis_voice_sessions_active", "Kiosk sessions in progress", multiprocess_mode="livesum"
)
ERRORS = Counter("jarvis_voice_errors_total", "Errors by kind (stt, llm, tts, tool, database, …)", ["type"])

# The data topic a kiosk (or a bench) listens on for each finished turn's record.
TURN_METRICS_TOPIC = "jarvis.turn_metrics"
# ...and for each barge-in step: {"step": "paused" | "confirmed" | "resumed" | "stopped", "at": time.time()}.
BARGE_IN_TOPIC = "jarvis.barge_in"
MAX_STAGE_S = 60.0
# Record key -> Prometheus stage label.
_STAGE_LABELS = {
    "end_of_turn_ms": "end_of_turn",
    "stt_final_ms": "stt",
    "llm_ttft_ms": "llm",
    "tts_ttfa_ms": "tts",
    "agent_v2v_ms": "voice_to_voice",
}
logger = logging.getLogger("jarvis.agent.metrics")


def kiosk_publisher(
    room: rtc.Room | None, topic: str, session_id: str, *, audio_jitter: bool = False
) -> Callable[[dict[str, Any]], None]:
    """Sends records to the room's kiosk on ``topic``, off the caller's path; a kiosk that left
    misses a record, nothing more. With ``audio_jitter`` each record also carries the jitter
    buffer the member's audio has waited in so far (``member_audio_jitter``)."""
    sending: set[asyncio.Task[None]] = set()

    def publish(record: dict[str, Any]) -> None:
        if room is None or not room.isconnected():
            return

        async def send() -> None:
            try:
                sent = record
                if audio_jitter:
                    sent = {**record, "member_audio_jitter": [j.as_dict() for j in await room_audio_jitter(room)]}
                await room.local_participant.publish_data(json.dumps(sent), reliable=True, topic=topic)
            except Exception as exc:
                logger.debug("session %s: %s record not sent (%s)", session_id, topic, type(exc).__name__)

        task = asyncio.get_running_loop().create_task(send())
        # Held until done: the loop keeps only weak references to tasks.
        sending.add(task)
        task.add_done_callback(sending.discard)

    return publish


def _sane(seconds: float | None, what: str) -> float | None:
    if seconds is None or seconds < 0:
        return None
    if seconds > MAX_STAGE_S:
        # livekit-agents reports a nonsense delay when its "user stopped speaking" anchor is
        # stale (seen: 9e8 s); one such value would wreck the session's figures.
        logger.warning("ignoring %s latency of %.1f s", what, seconds)
        return None
    return seconds


def _first(a: float | None, b: float | None) -> float | None:
    return a if a is not None else b


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


@dataclass
class _Speech:
    """What LiveKit reported for one speech id, in seconds."""

    end_of_turn: float | None = None
    stt: float | None = None
    end_of_turn_at: float | None = None
    llm: float | None = None
    tts: float | None = None
    user_turn: bool = False  # an EOU was reported for it: it answers a member turn


@dataclass
class TurnLatency:
    """One session's turns: collects stage times by speech id, exports a record per finished turn.

    Wire ``on_metrics`` to ``metrics_collected`` and ``on_speech_created`` to
    ``speech_created``; ``publish`` (if given) gets each turn record as it finishes.
    """

    publish: Callable[[dict[str, Any]], None] | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("answered", "interrupted", "cancelled", "preemptive_discarded", "other_speech"), 0
        )
    )
    _speeches: dict[str, _Speech] = field(default_factory=dict)
    _turns: list[dict[str, Any]] = field(default_factory=list)

    def _speech(self, speech_id: str) -> _Speech:
        return self._speeches.setdefault(speech_id, _Speech())

    def on_metrics(self, collected: Any) -> None:
        m = collected.metrics if hasattr(collected, "metrics") else collected
        speech_id = getattr(m, "speech_id", None)
        if speech_id is None:
            return
        if isinstance(m, lk_metrics.EOUMetrics):
            s = self._speech(speech_id)
            s.user_turn = True
            s.end_of_turn = _sane(m.end_of_utterance_delay, "end_of_turn")
            s.stt = _sane(m.transcription_delay, "stt")
            s.end_of_turn_at = m.timestamp
        elif isinstance(m, lk_metrics.LLMMetrics) and not m.cancelled:
            s = self._speech(speech_id)
            # A speech's later LLM steps (after a tool call) are not what the member waited for.
            if s.llm is None:
                s.llm = _sane(m.ttft, "llm")
        elif isinstance(m, lk_metrics.TTSMetrics):
            s = self._speech(speech_id)
            if s.tts is None:
                s.tts = _sane(m.ttfb, "tts")

    def on_speech_created(self, event: Any) -> None:
        event.speech_handle.add_done_callback(self.on_speech_done)

    def on_speech_done(self, handle: Any) -> None:
        """Classify a finished speech; export it when its answer reached the member."""
        s = self._speeches.pop(handle.id, _Speech())
        played = next(
            (
                item for item in handle.chat_items
                if isinstance(item, ChatMessage) and item.role == "assistant"
                and "started_speaking_at" in (item.metrics or {})
            ),
            None,
        )
        if played is None:
            # Never heard. A preemptive run that was discarded was never scheduled.
            if not handle.scheduled:
                self.counts["preemptive_discarded"] += 1
            elif s.user_turn:
                self.counts["cancelled"] += 1
            else:
                self.counts["other_speech"] += 1
            return
        if not s.user_turn:
            self.counts["other_speech"] += 1
            return
        self._finish_turn(handle.id, s, played.metrics, bool(handle.interrupted))

    def _finish_turn(self, speech_id: str, s: _Speech, report: Any, interrupted: bool) -> None:
        playout_at = float(report["started_speaking_at"])
        # The answer's own figures when LiveKit has them (its first segment), else the events'.
        llm = _first(_sane(report.get("llm_node_ttft"), "llm"), s.llm)
        tts = _first(_sane(report.get("tts_node_ttfb"), "tts"), s.tts)
        v2v = _sane(report.get("e2e_latency"), "voice_to_voice")
        if v2v is None and None not in (s.end_of_turn, llm, tts):
            # end_of_turn already includes waiting for the STT final: stt is not added twice
            v2v = (s.end_of_turn or 0.0) + (llm or 0.0) + (tts or 0.0)
        turn: dict[str, Any] = {
            "speech_id": speech_id,
            "end_of_turn_at": None if s.end_of_turn_at is None else round(s.end_of_turn_at, 3),
            "user_stopped_at": None if v2v is None else round(playout_at - v2v, 3),
            "playout_at": round(playout_at, 3),
            "end_of_turn_ms": _ms(s.end_of_turn),
            "stt_final_ms": _ms(s.stt),
            "llm_ttft_ms": _ms(llm),
            "tts_ttfa_ms": _ms(tts),
            "agent_v2v_ms": _ms(v2v),
            "interrupted": interrupted,
        }
        self._turns.append(turn)
        self.counts["answered"] += 1
        self.counts["interrupted"] += interrupted
        for key, stage in _STAGE_LABELS.items():
            if turn[key] is not None:
                VOICE_LATENCY.labels(stage).observe(turn[key] / 1000)
        if self.publish is not None:
            try:
                self.publish(turn)
            except Exception as exc:  # the figures must never take the conversation down
                logger.warning("turn metrics not published (%s)", type(exc).__name__)

    def turns(self) -> list[dict[str, Any]]:
        return list(self._turns)

    def summary(self) -> dict[str, Any]:
        """For voice_sessions.latency_summary: the turns, the counts and each stage's median."""
        out: dict[str, Any] = {"turns": self.turns(), "counts": dict(self.counts)}
        for key in _STAGE_LABELS:
            values = [t[key] for t in self._turns if t[key] is not None]
            if values:
                out[f"{key.removesuffix('_ms')}_ms_p50"] = round(statistics.median(values), 1)
        return out
