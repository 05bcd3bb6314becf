"""Barge-in in two steps: JARVIS pauses the moment the member starts talking over it, and stops
for good once the member has clearly been speaking; a cough or a dropped weight only pauses it.

Step 1, the pause, is livekit-agents' own: with ``resume_false_interruption`` it pauses the audio
output once the VAD has heard ``pause_after_s`` of speech, and resumes the same answer where it
paused when no words followed within ``resume_after_s`` of silence. A short ``pause_after_s``
alone would make every clang a stop, because livekit-agents confirms a pause only with the
member's final transcript, which comes at the end of their turn.

Step 2, the confirmation, is here: the member's voice held for ``confirm_after_s`` without a
break interrupts the paused answer at once. Gym noises are short; a spoken "attends" is not.
The run is counted here, from silero's per-window probabilities, not read from silero's own
``raw_accumulated_speech``: that one is reported before the window just scored is added (one
32 ms window late), and once speech has started it also counts windows down to the lower
deactivation threshold, so a noise that tails off keeps it growing.

Resuming where it paused is :class:`ReplayingSource`'s: livekit-agents pauses its room output by
clearing the audio source's queue and resumes past what it cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import vad as lk_vad
from livekit.agents.voice import AgentSession, AgentStateChangedEvent, SpeechHandle
from livekit.agents.voice.io import AudioOutput
from pydantic import BaseModel, Field

logger = logging.getLogger("jarvis.agent.barge_in")

VADListener = Callable[[lk_vad.VADEvent], object]  # what it returns is ignored
Publish = Callable[[dict[str, Any]], None]


class BargeInSettings(BaseModel):
    """Nested in SpeechSettings as ``barge_in`` (``JARVIS_SPEECH__BARGE_IN__PAUSE_AFTER_S`` etc.)."""

    # JARVIS pauses once the member has talked over it this long (silero's span, from its onset;
    # silero decides over 32 ms windows, so 0.03 is its second voiced window). Gym noises made
    # with sox (bursts, claps, thuds, music) never reach silero's speech threshold at all.
    pause_after_s: float = Field(default=0.03, ge=0.03, le=3.0)
    # ...and stops for good once the member's voice has held this long without a break. A spoken
    # "mmh" or "ouais" holds longer than any sensible value here (bench.barge_in's backchannels);
    # 0.15 stops 60 ms sooner but also confirms a quiet closed-mouth hum, which 0.2 did not.
    confirm_after_s: float = Field(default=0.2, ge=0.05, le=3.0)
    # Only windows silero scores at least this likely voice count towards that run (0.5: silero's
    # own activation threshold, but without its hysteresis once speech has started).
    confirm_min_probability: float = Field(default=0.5, gt=0.0, lt=1.0)
    # A pause that no words followed resumes after this much silence (livekit-agents' false interruption).
    resume_after_s: float = Field(default=1.0, ge=0.1, le=10.0)


class ObservedVAD(lk_vad.VAD):
    """A VAD that lets the barge-in controller read every inference, for the session that uses it.

    livekit-agents consumes the VAD's events itself and exposes no per-window hook; this passes
    each event on unchanged after the listeners have seen it.
    """

    def __init__(self, inner: lk_vad.VAD) -> None:
        super().__init__(capabilities=inner.capabilities)
        self._inner = inner
        self._listeners: list[VADListener] = []

    @property
    def model(self) -> str:
        return self._inner.model

    @property
    def provider(self) -> str:
        return self._inner.provider

    def add_listener(self, listener: VADListener) -> None:
        self._listeners.append(listener)

    def stream(self) -> lk_vad.VADStream:
        return _ObservedStream(self, self._inner.stream(), self._listeners)


class _ObservedStream(lk_vad.VADStream):
    def __init__(self, vad: ObservedVAD, inner: lk_vad.VADStream, listeners: list[VADListener]) -> None:
        self._inner = inner
        self._listeners = listeners
        super().__init__(vad)

    async def _main_task(self) -> None:
        forward = asyncio.create_task(self._forward_input())
        try:
            async for event in self._inner:
                for listener in self._listeners:
                    try:
                        listener(event)
                    except Exception:  # a listener's bug must not take the member's voice away
                        logger.exception("barge-in listener failed")
                self._event_ch.send_nowait(event)
        finally:
            forward.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forward
            await self._inner.aclose()

    async def _forward_input(self) -> None:
        async for item in self._input_ch:
            if isinstance(item, rtc.AudioFrame):
                self._inner.push_frame(item)
            else:
                self._inner.flush()
        self._inner.end_input()


class VoicedRun:
    """How long the member's voice has held without a break, up to the VAD window just scored."""

    def __init__(self, min_probability: float) -> None:
        self.min_probability = min_probability
        self.seconds = 0.0

    def update(self, event: lk_vad.VADEvent) -> float:
        if event.type == lk_vad.VADEventType.INFERENCE_DONE:
            if event.probability >= self.min_probability:
                self.seconds += sum(frame.duration for frame in event.frames)
            else:
                self.seconds = 0.0
        return self.seconds


class BargeIn:
    """Confirms or lets go of livekit-agents' pause for one session; logs each step and sends it
    to the kiosk (``publish``: the ``jarvis.barge_in`` data topic, which the barge-in bench reads)."""

    def __init__(self, settings: BargeInSettings, session_id: str, publish: Publish | None = None) -> None:
        self._settings = settings
        self._session_id = session_id
        self._publish = publish
        self._session: AgentSession[Any] | None = None
        self._paused: SpeechHandle | None = None
        self._confirmed: SpeechHandle | None = None
        self._watched: SpeechHandle | None = None  # the answer whose end _on_answer_done hears
        self._paused_at = 0.0
        self._voiced = VoicedRun(settings.confirm_min_probability)
        self.confirmed = 0
        self.resumed = 0

    def attach(self, session: AgentSession[Any], vad: ObservedVAD) -> None:
        self._session = session
        session.on("agent_state_changed", self._on_agent_state)
        vad.add_listener(self._on_vad)

    def _step(self, step: str, message: str, *args: object) -> None:
        logger.info("session %s: barge-in: " + message, self._session_id, *args)
        if self._publish is not None:
            self._publish({"step": step, "at": time.time()})

    def _on_agent_state(self, event: AgentStateChangedEvent) -> None:
        speech = self._session.current_speech if self._session else None
        if event.old_state == "speaking" and event.new_state == "listening" and speech and not speech.done():
            # livekit-agents paused the answer (its pause sets "listening" and keeps the handle), or
            # the answer is just ending; a pause for the member's voice comes while they speak
            if speech is not self._watched:
                # once per answer: one paused and resumed twice must still end in one step
                self._watched = speech
                speech.add_done_callback(self._on_answer_done)
            if self._session is not None and self._session.user_state == "speaking":
                self._paused, self._paused_at = speech, time.monotonic()
                self._step("paused", "JARVIS paused for the member")
        elif event.new_state == "speaking" and self._paused is not None:
            if speech is self._paused:
                self.resumed += 1
                self._step("resumed", "false alarm, JARVIS resumes after %.0f ms", self._elapsed_ms())
            self._paused = None

    def _on_answer_done(self, speech: SpeechHandle) -> None:
        if not speech.interrupted or speech is self._confirmed:
            return
        # livekit-agents' own confirmation: the member's final transcript came first
        if speech is self._paused:
            self._paused = None
            self._step("stopped", "the member's words stopped JARVIS %.0f ms after its pause", self._elapsed_ms())
        else:
            self._step("stopped", "the member's words stopped JARVIS")

    def _elapsed_ms(self) -> float:
        return 1000 * (time.monotonic() - self._paused_at)

    def _on_vad(self, event: lk_vad.VADEvent) -> None:
        voiced_s = self._voiced.update(event)
        paused = self._paused
        if paused is None or voiced_s < self._settings.confirm_after_s:
            return
        self._paused = None
        if paused.done() or paused.interrupted or not paused.allow_interruptions:
            return
        self._confirmed = paused
        paused.interrupt()
        self.confirmed += 1
        self._step(
            "confirmed", "confirmed (%.0f ms of voice), JARVIS stops %.0f ms after its pause",
            1000 * voiced_s, self._elapsed_ms(),
        )


class ReplayingSource:
    """The room output's ``rtc.AudioSource``, wrapped so that a pause loses none of JARVIS's words.

    livekit-agents (1.8) pauses its room output by clearing the source's queue, up to 200 ms of
    JARVIS's voice not yet played, and resumes past it: a cough cost the member a syllable or a
    word. This keeps the last audio it passed on; what a clear *while paused* drops is played first
    when audio flows again. A clear while playing (an interruption, a detach) drops it for good, as
    livekit-agents means it to, and so does a second clear while paused (a pause confirmed into a
    stop clears again).
    """

    KEPT_S = 0.5  # more than the room output's 200 ms queue

    def __init__(self, inner: rtc.AudioSource, paused: Callable[[], bool]) -> None:
        self._inner = inner
        self._paused = paused
        self._kept: np.ndarray = np.zeros(0, dtype=np.int16)  # the last KEPT_S of samples passed on, interleaved
        self._replay: list[rtc.AudioFrame] = []
        self.replayed_s = 0.0

    @property
    def sample_rate(self) -> int:
        return self._inner.sample_rate

    @property
    def num_channels(self) -> int:
        return self._inner.num_channels

    @property
    def queued_duration(self) -> float:
        return self._inner.queued_duration

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        replay, self._replay = self._replay, []
        for kept in replay:
            self.replayed_s += kept.duration
            await self._pass_on(kept)
        await self._pass_on(frame)

    async def _pass_on(self, frame: rtc.AudioFrame) -> None:
        # replayed audio is kept again: a second pause during it must find it at the queue's tail
        await self._inner.capture_frame(frame)
        keep = int(self.KEPT_S * self.sample_rate) * self.num_channels
        self._kept = np.concatenate([self._kept, np.frombuffer(frame.data, dtype=np.int16)])[-keep:]

    def clear_queue(self) -> None:
        dropped = round(self._inner.queued_duration * self.sample_rate) * self.num_channels
        self._inner.clear_queue()
        tail = self._kept[max(0, len(self._kept) - dropped):]
        self._replay = self._frames(tail) if dropped and self._paused() else []

    def _frames(self, samples: np.ndarray) -> list[rtc.AudioFrame]:
        step = self.sample_rate // 20 * self.num_channels  # 50 ms, the room output's own frames
        return [
            rtc.AudioFrame(chunk.tobytes(), self.sample_rate, self.num_channels, len(chunk) // self.num_channels)
            for chunk in (samples[i:i + step] for i in range(0, len(samples), step))
        ]

    async def wait_for_playout(self) -> None:
        await self._inner.wait_for_playout()

    async def aclose(self) -> None:
        await self._inner.aclose()


def _is_clear(event: asyncio.Event) -> Callable[[], bool]:
    return lambda: not event.is_set()


def replay_paused_audio(output: AudioOutput | None) -> ReplayingSource | None:
    """Wraps the audio source at the end of a session's audio output chain (``session.output.audio``
    after ``session.start``); ``None``, with a warning, when livekit-agents' room output no longer
    looks as this was written for."""
    while output is not None:
        # livekit-agents' _ParticipantAudioOutput: its source and its "not paused" event
        source, playing = getattr(output, "_audio_source", None), getattr(output, "_playback_enabled", None)
        if isinstance(source, rtc.AudioSource) and isinstance(playing, asyncio.Event):
            replaying = ReplayingSource(source, paused=_is_clear(playing))
            output._audio_source = replaying  # type: ignore[attr-defined]
            return replaying
        output = output.next_in_chain
    logger.warning("no room audio source to wrap: a resumed answer skips the audio its pause cleared")
    return None
