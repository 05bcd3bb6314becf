"""LiveKit STT for Kyutai's streaming speech-to-text: a thin client of the engine server.

Each `SpeechStream` opens one WebSocket to the server (ours, or Kyutai's Rust moshi-server: same
protocol), sends the room's audio resampled to 24 kHz mono, and turns the server's messages into
LiveKit events: START_OF_SPEECH on the first word of a turn, INTERIM_TRANSCRIPT as words arrive,
then, at the end of the turn, FINAL_TRANSCRIPT and END_OF_SPEECH.

End of turn: the pause probability of one of the model's end-of-speech heads, smoothed as Unmute
does, crossing a threshold while the member speaks. The stream then flushes the model's text delay
(a `Marker` followed by a burst of silence) so the last words and the FINAL come at once, not
half a second later. Given a `voice_heard` probe (the agent's VAD), a head that fires while the
member's voice is still heard waits, a step at a time, for it to stop. Checkpoints without the
heads end a turn after a silence without words (the agent's VAD or turn detector can flush earlier
through `flush()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from kyutai_common.client import (
    EngineHandOver,
    KyutaiProvider,
    ReplicaPool,
    can_fail_over,
    closed_error,
    connect,
    endpoints,
    log_failover,
    received_error,
)
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APITimeoutError,
    stt,
    utils,
)
from livekit.agents.language import LanguageCode
from livekit.agents.types import NOT_GIVEN, NotGivenOr, TimedString
from livekit.agents.utils import AudioBuffer, is_given
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from . import protocol
from .log import logger
from .models import FRAME_SECONDS, EndOfTurnOptions, PauseAverage, SttLanguage
from .protocol import FRAME_SAMPLES, SAMPLE_RATE
from .settings import PluginSettings

ENGINE = "Kyutai STT server"
END_MARKER_TIMEOUT_S = 5.0  # at end of input, the longest wait for the last words
# The member audio kept since the last final, replayed to another replica when the engine fails
# mid-turn (a turn is a few seconds; longer, its start is lost rather than memory held).
MAX_REPLAY_S = 30.0
# Between turns (no word since the last final), the replay keeps only the audio the engine may
# not have turned into words yet: what waits in its queue plus this, over the model's text delay
# (0.5 s for stt-1b, 2.5 s for stt-2.6b) and audio still on its way. Older audio brought no word.
REPLAY_QUIET_KEEP_S = 4.0


@dataclass
class _STTOptions:
    urls: list[str]
    api_key: str
    language: SttLanguage
    end_of_turn: EndOfTurnOptions
    voice_heard: Callable[[], bool] | None = None


class STT(KyutaiProvider, stt.STT):
    """Kyutai streaming STT through a Kyutai engine server (`python -m kyutai_stt.server`)."""

    def __init__(
        self,
        *,
        url: NotGivenOr[str] = NOT_GIVEN,
        urls: NotGivenOr[Sequence[str]] = NOT_GIVEN,
        api_key: NotGivenOr[str] = NOT_GIVEN,
        language: SttLanguage = "fr",
        end_of_turn: NotGivenOr[EndOfTurnOptions] = NOT_GIVEN,
        voice_heard: Callable[[], bool] | None = None,
        settings: NotGivenOr[PluginSettings] = NOT_GIVEN,
    ) -> None:
        """Arguments not given come from `settings` (default: `PluginSettings()`, the environment).
        `urls`: engine replicas (instead of one `url`); each stream picks the one with most room.
        `voice_heard`: whether the member's voice is audible right now (the session's VAD); an end
        of turn waits while it is, up to `end_of_turn.hold_while_voiced_s`."""
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True, interim_results=True, aligned_transcript="word", offline_recognize=True
            )
        )
        resolved_urls, resolved_key = endpoints(
            url, urls, api_key, settings if is_given(settings) else PluginSettings()
        )
        self._pool = ReplicaPool(resolved_urls, engine=ENGINE)
        self._opts = _STTOptions(
            urls=resolved_urls,
            api_key=resolved_key,
            language=language,
            end_of_turn=end_of_turn if is_given(end_of_turn) else EndOfTurnOptions(),
            voice_heard=voice_heard,
        )

    @property
    def model(self) -> str:
        return "kyutai/stt-1b-en_fr"

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> SpeechStream:
        opts = self._opts
        if is_given(language):
            opts = replace(opts, language=_language(language))
        return SpeechStream(stt=self, opts=opts, conn_options=conn_options, pool=self._pool)

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        """One-shot recognition: stream the buffer, end the input, gather the final transcripts."""
        frame = utils.merge_frames(buffer)
        stream = self.stream(language=language, conn_options=replace(conn_options, max_retry=0))
        finals: list[stt.SpeechData] = []
        async with stream:
            stream.push_frame(frame)
            stream.end_input()
            async for event in stream:
                if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                    finals.extend(event.alternatives[:1])
        words = [w for data in finals for w in (data.words or [])]
        text = " ".join(data.text for data in finals)
        data = stt.SpeechData(
            language=LanguageCode(stream.language),
            text=text,
            start_time=finals[0].start_time if finals else 0.0,
            end_time=finals[-1].end_time if finals else 0.0,
            words=words,
        )
        return stt.SpeechEvent(type=stt.SpeechEventType.FINAL_TRANSCRIPT, alternatives=[data])


def _language(language: str) -> SttLanguage:
    code = language.split("-")[0].lower()
    if code not in ("fr", "en"):
        raise ValueError(f"Kyutai stt-1b-en_fr transcribes French and English, not {language!r}")
    return "fr" if code == "fr" else "en"


@dataclass
class _Connection:
    """What one connection to the server knows; a reconnection starts afresh."""

    ws: ClientConnection
    url: str = ""
    base_samples: int = 0  # the member's sample at which this connection's audio starts (a replay)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sent_samples: int = 0  # everything sent, flush silence included: the server's time axis
    unsent: list[np.ndarray] = field(default_factory=list)  # member audio held until a whole model frame
    unsent_samples: int = 0
    inserted: list[tuple[float, float]] = field(default_factory=list)  # (server time, silence seconds)
    steps: int = 0
    speaking: bool = False
    words: list[TimedString] = field(default_factory=list)
    last_word_sample: int = 0  # sent_samples when the last word arrived
    last_word_step: int = 0
    markers: dict[int, str] = field(default_factory=dict)  # marker id -> "turn" | "flush" | "end"
    marker_at: dict[int, int] = field(default_factory=dict)  # marker id -> member samples sent before it
    next_marker: int = 1
    flushing: bool = False
    audio_since_marker: bool = False  # member audio sent since the last Marker (a flush has work)
    closing: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    usage_samples: int = 0  # member audio not yet reported as usage
    has_heads: bool | None = None
    lost_at: float | None = None  # when this connection's replica was lost (monotonic)
    replayed_steps: int = 0  # model steps over audio replayed after a failover (turn ends judged before)
    held_steps: int = 0  # steps an end of turn has waited for the member's voice to stop

    def audio_time(self, server_time: float) -> float:
        """Server time (which counts the flush silence we inserted) -> time in the member's audio.
        A time inside inserted silence is where the member's audio stopped for it."""
        inserted = sum(min(seconds, server_time - at) for at, seconds in self.inserted if at < server_time - 1e-6)
        return max(0.0, server_time - inserted)


class _ReplayBuffer:
    """The member audio sent since the last final, by member sample index, at most `max_samples`."""

    def __init__(self, max_samples: int) -> None:
        self._chunks: deque[tuple[int, np.ndarray]] = deque()
        self._max = max_samples
        self.start = 0  # member sample index of the first sample kept
        self.end = 0  # member samples sent in all

    def append(self, samples: np.ndarray) -> None:
        self._chunks.append((self.end, samples))
        self.end += samples.size
        while self._chunks and self.end - self._chunks[0][0] > self._max:
            self._chunks.popleft()
        self.start = self._chunks[0][0] if self._chunks else self.end

    def drop_before(self, index: int) -> None:
        """A final covers the audio up to `index`: no replica needs to hear it again."""
        while self._chunks and self._chunks[0][0] + self._chunks[0][1].size <= index:
            self._chunks.popleft()
        self.start = self._chunks[0][0] if self._chunks else self.end

    def samples(self) -> np.ndarray:
        return np.concatenate([c for _, c in self._chunks]) if self._chunks else np.zeros(0, np.float32)


class SpeechStream(stt.SpeechStream):
    def __init__(self, *, stt: STT, opts: _STTOptions, conn_options: APIConnectOptions, pool: ReplicaPool) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=SAMPLE_RATE)
        self._opts = opts
        self._pool = pool
        self._pause = PauseAverage(opts.end_of_turn.attack_s, opts.end_of_turn.release_s)
        self._warned_no_heads = False
        self._stream_id = uuid.uuid4().hex[:12]
        self._replay = _ReplayBuffer(int(MAX_REPLAY_S * SAMPLE_RATE))
        self._failovers = 0  # since the last final: bounded, so a sick fleet ends in an error
        self._time_base: float | None = None
        # Wall clock (time.time()) at the stream's time 0: LiveKit wants speech_start_time and
        # speech_end_time as wall-clock times, and the agent's end_of_turn reads from them.
        self._wall_base: float | None = None
        # Per mid-stream failover: (replica lost, the turn's audio replayed to the next one), monotonic s.
        self.failovers: list[tuple[float, float]] = []

    @property
    def language(self) -> SttLanguage:
        return self._opts.language

    @property
    def pause_probability(self) -> float:
        """The smoothed probability that the member has finished their turn (0 without heads)."""
        return self._pause.value

    async def _run(self) -> None:
        if self._time_base is None:
            # Word times count member audio across replicas; LiveKit's retry loop shifts
            # start_time_offset by wall time instead, which a replay would count twice.
            self._time_base = self.start_time_offset
            # The session set start_time_offset to now minus the time its audio input started,
            # which is where LiveKit anchors the transcripts' start_time / end_time.
            self._wall_base = time.time() - self._time_base
        previous: _Connection | None = None
        while True:
            try:
                conn = await self._open(previous)
            except BaseException:
                if previous is not None and (previous.words or previous.speaking):
                    # No replica took the turn over: close it with what was heard (LiveKit's
                    # retry starts anew), so the session never waits on its END_OF_SPEECH.
                    self._finish_segment(previous)
                    self._report_usage(previous)
                    self._replay.drop_before(self._replay.end)
                raise
            failing_over = False
            try:
                await self._serve(conn)
                return
            except APIError as exc:
                handed_over = isinstance(exc, EngineHandOver)  # a draining engine: not a failure
                if not can_fail_over(exc) or (not handed_over and self._failovers >= len(self._pool)):
                    raise
                # Another replica hears the turn again from the last final (immediately: the
                # member is speaking; APIConnectOptions' pauses are for when none is left).
                failing_over = True
                if handed_over:
                    self._pool.mark_down(conn.url, "draining")
                    logger.info("%s at %s is draining: stream %s moves on", ENGINE, conn.url, self._stream_id)
                else:
                    self._failovers += 1
                    self._pool.mark_down(conn.url, type(exc).__name__)
                    log_failover(ENGINE, conn.url, self._stream_id, f"lost mid-stream: {exc}")
                conn.lost_at = time.monotonic()
                previous = conn
            finally:
                conn.closing = True
                if not failing_over and (conn.words or conn.speaking):
                    # The connection is gone mid-turn: close the turn with what was heard, so the
                    # session never waits on an END_OF_SPEECH that will not come (a retry starts anew).
                    self._finish_segment(conn)
                    self._report_usage(conn)
                with contextlib.suppress(Exception):
                    await conn.ws.close()

    async def _serve(self, conn: _Connection) -> None:
        sender = asyncio.create_task(self._send_loop(conn), name="kyutai_stt.send")
        receiver = asyncio.create_task(self._receive_loop(conn), name="kyutai_stt.receive")
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # raise the first failure
            if receiver not in done:
                await receiver
        finally:
            await utils.aio.cancel_and_wait(sender, receiver)

    async def _open(self, previous: _Connection | None) -> _Connection:
        """A connection to the replica with most room; after a failure, the turn's audio replayed."""
        url, ws = await self._pool.open(self._connect, self._conn_options, stream_id=self._stream_id)
        conn = _Connection(ws=ws, url=url, base_samples=self._replay.start)
        if previous is None:
            self._pause.value = 0.0
            return conn
        # The member's turn so far: its words come again from the new replica (the interim
        # transcript restarts from the last final; START_OF_SPEECH is not repeated).
        conn.speaking = previous.speaking
        conn.usage_samples = previous.usage_samples
        audio = self._replay.samples()
        for start in range(0, audio.size, FRAME_SAMPLES):
            await self._send_audio(conn, audio[start : start + FRAME_SAMPLES])
        # The replay went out at once, far ahead of the model, and the new connection has seen no
        # Step yet (so no heads known): counted from sample 0, the quiet rule for checkpoints
        # without heads would end the turn with the first live frame, splitting it where the
        # member never paused. The replayed words come back as the model catches up.
        conn.last_word_sample = conn.sent_samples
        # The lost replica heard this audio and did not end the turn in it (else it would have
        # been final, or its Marker is sent again below): the new one must not either. It is
        # marked speaking from its first step, before the replayed words come back, so a pause
        # head high on the turn's first steps would cut the turn where the member never paused.
        conn.replayed_steps = audio.size // FRAME_SAMPLES
        self.failovers.append((previous.lost_at or time.monotonic(), time.monotonic()))
        if any(kind != "end" for kind in previous.markers.values()):
            await self._flush(conn, "turn")  # the turn had ended: end it again, at once
        return conn

    async def _connect(self, replica: str) -> ClientConnection:
        timeout = self._conn_options.timeout
        url = f"{replica}{protocol.PATH}"
        ws = await connect(url, self._opts.api_key, timeout, engine=ENGINE, max_size=2**22)
        try:
            async with asyncio.timeout(timeout):
                first = protocol.unpack(await ws.recv())  # type: ignore[arg-type]
        except TimeoutError as exc:
            await ws.close()
            raise APITimeoutError(f"{ENGINE} accepted the connection but sent no Ready") from exc
        except ConnectionClosed as exc:
            raise APIConnectionError(f"{ENGINE} closed the connection before Ready") from exc
        except protocol.ProtocolError as exc:
            await ws.close()
            raise APIConnectionError(f"{ENGINE}: not a Kyutai STT server at this address") from exc
        if first["type"] == "Ready":
            return ws
        raise await received_error(ws, ENGINE, str(first.get("message", first)))

    async def _send(self, conn: _Connection, message: dict[str, Any]) -> None:
        data = protocol.pack(message)
        async with conn.send_lock:
            try:
                await conn.ws.send(data)
            except ConnectionClosed as exc:
                if conn.closing:
                    return
                raise closed_error(ENGINE, exc, conn.request_id) from exc

    async def _send_audio(self, conn: _Connection, samples: np.ndarray) -> None:
        conn.sent_samples += samples.size
        await self._send(conn, protocol.audio(samples))

    async def _send_unsent(self, conn: _Connection) -> None:
        """The member audio held so far, as one message. The engine steps only on whole 80 ms
        frames, so sending each 20 ms room frame on its own reached the model no sooner: it cost
        four sends, four wake-ups and four decodes per step, here and in the engine."""
        if not conn.unsent:
            return
        chunks, conn.unsent, conn.unsent_samples = conn.unsent, [], 0
        await self._send_audio(conn, chunks[0] if len(chunks) == 1 else np.concatenate(chunks))

    async def _send_loop(self, conn: _Connection) -> None:
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel):
                # The words of audio just sent come only after the model's text delay: flush
                # whenever audio went in since the last Marker, not only once words are out.
                if conn.speaking or conn.words or conn.audio_since_marker:
                    await self._flush(conn, "flush")
                continue
            samples = _to_mono_float(item)
            if samples.size == 0:
                continue  # an empty frame carries nothing to transcribe
            conn.usage_samples += samples.size
            self._replay.append(samples)  # before sending: a frame lost with the engine is replayed
            conn.unsent.append(samples)
            conn.unsent_samples += samples.size
            if conn.unsent_samples >= FRAME_SAMPLES:
                await self._send_unsent(conn)
            conn.audio_since_marker = True
            if conn.has_heads is not True and conn.speaking and not conn.flushing:
                # No pause heads (moshi-server then sends no Step at all): the turn ends after a
                # stretch of audio that brought no new word.
                quiet_s = (conn.sent_samples - conn.last_word_sample) / SAMPLE_RATE
                if quiet_s >= self._opts.end_of_turn.no_heads_silence_s:
                    await self._flush(conn, "turn")
        # Input ended: push the last words out of the model, then close. (end_input() flushes
        # first: a Marker already on its way after the last audio is the end one, not a second
        # Marker and burst of silence.)
        if conn.markers and not conn.audio_since_marker:
            conn.markers[max(conn.markers)] = "end"
        else:
            await self._flush(conn, "end")
        silence = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        deadline = time.monotonic() + END_MARKER_TIMEOUT_S
        while not conn.ended.is_set() and time.monotonic() < deadline:
            # A server whose delay is longer than our flush needs more silence to reach the marker.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.ended.wait(), timeout=FRAME_SECONDS)
            if not conn.ended.is_set():
                await self._send_audio(conn, silence)
        if not conn.ended.is_set():
            logger.warning("Kyutai STT server did not return the end marker in time")
            self._finish_segment(conn)
            self._report_usage(conn)
        conn.closing = True
        await conn.ws.close()

    async def _flush(self, conn: _Connection, kind: str) -> None:
        """Send a Marker then enough silence to carry it (and the last words) through the model."""
        marker_id = conn.next_marker
        conn.next_marker += 1
        conn.markers[marker_id] = kind
        conn.marker_at[marker_id] = self._replay.end
        conn.flushing = True
        conn.audio_since_marker = False
        frames = self._opts.end_of_turn.flush_frames
        await self._send_unsent(conn)  # the member's last words go before the Marker
        await self._send(conn, protocol.marker(marker_id))
        conn.inserted.append((conn.sent_samples / SAMPLE_RATE, frames * FRAME_SECONDS))
        await self._send_audio(conn, np.zeros(frames * FRAME_SAMPLES, dtype=np.float32))

    async def _receive_loop(self, conn: _Connection) -> None:
        while True:
            try:
                raw = await conn.ws.recv()
            except ConnectionClosed as exc:
                if conn.closing or conn.ended.is_set():
                    return
                raise closed_error(ENGINE, exc, conn.request_id) from exc
            try:
                message = protocol.unpack(raw)  # type: ignore[arg-type]
            except protocol.ProtocolError as exc:
                raise APIConnectionError(f"the {ENGINE} sent an unreadable message") from exc
            kind = message["type"]
            if kind == "Word":
                self._on_word(conn, str(message["text"]), float(message["start_time"]))
            elif kind == "EndWord":
                self._on_end_word(conn, float(message["stop_time"]))
            elif kind == "Step":
                await self._on_step(conn, list(message.get("prs") or []), message.get("buffered_pcm"))
            elif kind == "Marker":
                if self._on_marker(conn, int(message["id"])):
                    return
            elif kind == "Error":
                conn.closing = True  # the engine closes the stream next: the sender must not report that
                raise await received_error(conn.ws, ENGINE, str(message.get("message", "")), conn.request_id)

    def _word_time(self, conn: _Connection, server_time: float) -> float:
        base = self.start_time_offset if self._time_base is None else self._time_base
        return conn.audio_time(server_time) + conn.base_samples / SAMPLE_RATE + base

    def _wall_time(self, stream_time: float) -> float:
        """A time in the stream's time base (word times) -> wall clock, never in the future."""
        base = time.time() - self.start_time_offset if self._wall_base is None else self._wall_base
        return min(time.time(), base + stream_time)

    def _on_word(self, conn: _Connection, text: str, server_start: float) -> None:
        start = self._word_time(conn, server_start)
        if not conn.speaking:
            conn.speaking = True
            self._emit(conn, stt.SpeechEventType.START_OF_SPEECH, speech_start_time=self._wall_time(start))
        conn.words.append(_timed(text, start, start, self.start_time_offset))
        conn.last_word_sample = conn.sent_samples
        conn.last_word_step = conn.steps
        conn.held_steps = 0
        self._emit(conn, stt.SpeechEventType.INTERIM_TRANSCRIPT, alternatives=[self._speech_data(conn)])

    def _on_end_word(self, conn: _Connection, server_stop: float) -> None:
        if conn.words:
            last = conn.words[-1]
            stop = max(float(last.start_time), self._word_time(conn, server_stop))  # type: ignore[arg-type]
            conn.words[-1] = _timed(str(last), float(last.start_time), stop, self.start_time_offset)  # type: ignore[arg-type]

    async def _on_step(self, conn: _Connection, prs: list[float], buffered_pcm: object = None) -> None:
        conn.steps += 1
        if not conn.speaking and not conn.words and not conn.markers:
            # Between turns: a replay to another replica need not repeat the silence already heard.
            waiting = buffered_pcm if isinstance(buffered_pcm, int) and buffered_pcm > 0 else 0
            self._replay.drop_before(self._replay.end - waiting - int(REPLAY_QUIET_KEEP_S * SAMPLE_RATE))
        options = self._opts.end_of_turn
        if conn.has_heads is None:
            conn.has_heads = options.head < len(prs)
            if not conn.has_heads and not self._warned_no_heads:
                self._warned_no_heads = True
                logger.info(
                    "the STT checkpoint has no end-of-speech head %d: end of turn after %.1f s without "
                    "words, or from the agent's VAD / turn detector",
                    options.head,
                    options.no_heads_silence_s,
                )
        if conn.has_heads and options.head < len(prs) and conn.steps > options.ignore_first_steps:
            self._pause.update(min(1.0, max(0.0, float(prs[options.head]))))
        if not conn.speaking or conn.flushing or conn.steps <= conn.replayed_steps:
            return
        if conn.has_heads:
            ended = self._pause.value > options.threshold
        else:  # the model's own progress since the last word (audio may have been sent long ago)
            ended = (conn.steps - conn.last_word_step) * FRAME_SECONDS >= options.no_heads_silence_s
        if ended and not self._voice_still_heard(conn):
            await self._flush(conn, "turn")

    def _voice_still_heard(self, conn: _Connection) -> bool:
        """Whether an end of turn waits one more step, the member's voice being still heard. The
        hold is counted since the turn's last word, so a head that flickers cannot stretch it."""
        heard, hold_s = self._opts.voice_heard, self._opts.end_of_turn.hold_while_voiced_s
        if heard is None or conn.held_steps >= round(hold_s / FRAME_SECONDS) or not heard():
            if conn.held_steps:
                logger.debug("end of turn held %d ms for the member's voice", conn.held_steps * FRAME_SECONDS * 1000)
            return False
        conn.held_steps += 1
        return True

    def _on_marker(self, conn: _Connection, marker_id: int) -> bool:
        """The model has caught up with a flush: the segment is final. True at the end of input."""
        kind = conn.markers.pop(marker_id, None)
        if kind is None:
            return False
        conn.flushing = bool(conn.markers)
        self._replay.drop_before(conn.marker_at.pop(marker_id, 0))
        self._failovers = 0
        self._finish_segment(conn)
        self._report_usage(conn)
        if kind == "end":
            conn.ended.set()
            return True
        return False

    def _finish_segment(self, conn: _Connection) -> None:
        if conn.words:
            self._emit(conn, stt.SpeechEventType.FINAL_TRANSCRIPT, alternatives=[self._speech_data(conn)])
        if conn.speaking:
            end_time = self._wall_time(float(conn.words[-1].end_time)) if conn.words else None  # type: ignore[arg-type]
            self._emit(conn, stt.SpeechEventType.END_OF_SPEECH, speech_end_time=end_time)
        conn.words = []
        conn.speaking = False
        conn.held_steps = 0
        self._pause.value = 0.0

    def _report_usage(self, conn: _Connection) -> None:
        if conn.usage_samples:
            usage = stt.RecognitionUsage(audio_duration=conn.usage_samples / SAMPLE_RATE)
            self._emit(conn, stt.SpeechEventType.RECOGNITION_USAGE, recognition_usage=usage)
            conn.usage_samples = 0

    def _emit(self, conn: _Connection, kind: stt.SpeechEventType, **fields: Any) -> None:
        self._event_ch.send_nowait(stt.SpeechEvent(type=kind, request_id=conn.request_id, **fields))

    def _speech_data(self, conn: _Connection) -> stt.SpeechData:
        words = list(conn.words)
        return stt.SpeechData(
            language=LanguageCode(self._opts.language),
            text=" ".join(str(w) for w in words),
            start_time=float(words[0].start_time),  # type: ignore[arg-type]
            end_time=float(words[-1].end_time),  # type: ignore[arg-type]
            confidence=1.0,
            words=words,
            metadata={"pause_probability": self._pause.value},
        )


def _timed(text: str, start: float, end: float, offset: float) -> TimedString:
    return TimedString(text, start_time=start, end_time=end, start_time_offset=offset)


def _to_mono_float(frame: rtc.AudioFrame) -> np.ndarray:
    samples = np.frombuffer(frame.data, dtype=np.int16)
    if samples.size == 0:
        return np.zeros(0, dtype=np.float32)
    if frame.num_channels > 1:
        samples = samples.reshape(-1, frame.num_channels).mean(axis=1)
    return (samples.astype(np.float32) / 32768.0).astype(np.float32)
