"""LiveKit TTS for Kyutai's streaming TTS: speaks the LLM's words while they are still arriving.

Each segment is one WebSocket stream to the engine (ours, or Kyutai's moshi-server) at
/api/tts_streaming: words go out as soon as the French normaliser completes them, audio and
word timestamps come back as the engine produces them. One request id per segment; closing
the stream (an interruption) closes the socket, which frees the engine's slot within a frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import websockets
from kyutai_common.client import (
    KyutaiProvider,
    ReplicaPool,
    can_fail_over,
    connect,
    endpoints,
    log_failover,
    received_error,
)
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APITimeoutError,
    tts,
    utils,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr, TimedString
from livekit.agents.utils import is_given
from websockets.asyncio.client import ClientConnection

from . import protocol
from .models import NUM_CHANNELS, SAMPLE_RATE
from .normalize import FrenchNormalizer
from .settings import PluginSettings

ChunkedStream = tts.ChunkedStream
ENGINE = "Kyutai TTS"


@dataclass(frozen=True, slots=True)
class _Options:
    urls: tuple[str, ...]
    api_key: str
    voice: str
    cfg_alpha: float | None
    temperature: float | None
    seed: int | None
    normalize: bool
    audio_timeout_s: float


class TTS(KyutaiProvider, tts.TTS):
    def __init__(
        self,
        *,
        url: NotGivenOr[str] = NOT_GIVEN,
        urls: NotGivenOr[Sequence[str]] = NOT_GIVEN,
        api_key: NotGivenOr[str] = NOT_GIVEN,
        voice: NotGivenOr[str] = NOT_GIVEN,
        cfg_alpha: NotGivenOr[float | None] = NOT_GIVEN,
        temperature: NotGivenOr[float | None] = NOT_GIVEN,
        seed: int | None = None,
        normalize: bool = True,
        settings: NotGivenOr[PluginSettings] = NOT_GIVEN,
    ) -> None:
        """`voice` is a kyutai/tts-voices name or a local `.safetensors` embedding file.
        `urls`: engine replicas (instead of one `url`): each segment goes to the one with most room,
        and moves to another, from the first word not yet played, if its engine fails.
        Arguments not given come from `settings` (default: `PluginSettings()`, the environment);
        `cfg_alpha` / `temperature` None: the engine's default."""
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=True),
            sample_rate=SAMPLE_RATE,
            num_channels=NUM_CHANNELS,
        )
        settings = settings if is_given(settings) else PluginSettings()
        resolved_urls, resolved_key = endpoints(url, urls, api_key, settings)
        self._pool = ReplicaPool(resolved_urls, engine=ENGINE)
        self._opts = _Options(
            urls=tuple(resolved_urls),
            api_key=resolved_key,
            voice=voice if is_given(voice) else settings.voice,
            cfg_alpha=cfg_alpha if is_given(cfg_alpha) else settings.cfg_alpha,
            temperature=temperature if is_given(temperature) else settings.temperature,
            seed=seed,
            normalize=normalize,
            audio_timeout_s=settings.audio_timeout_s,
        )
        self._voice_message: protocol.VoiceIn | None = None

    @classmethod
    def for_gym(cls, gym_id: str, settings: NotGivenOr[PluginSettings] = NOT_GIVEN, **kwargs: object) -> TTS:
        """The gym's own voice when its settings name one, else the French default."""
        settings = settings if is_given(settings) else PluginSettings()
        return cls(voice=settings.gym_voices.get(gym_id, settings.voice), settings=settings, **kwargs)  # type: ignore[arg-type]

    @property
    def model(self) -> str:
        return "kyutai-tts"

    @property
    def voice(self) -> str:
        """The voice this TTS speaks with (what audio made once, as the agent's apologies, is keyed on)."""
        return self._opts.voice

    def update_options(
        self,
        *,
        voice: NotGivenOr[str] = NOT_GIVEN,
        cfg_alpha: NotGivenOr[float | None] = NOT_GIVEN,
        temperature: NotGivenOr[float | None] = NOT_GIVEN,
    ) -> None:
        self._opts = replace(
            self._opts,
            voice=voice if is_given(voice) else self._opts.voice,
            cfg_alpha=cfg_alpha if is_given(cfg_alpha) else self._opts.cfg_alpha,
            temperature=temperature if is_given(temperature) else self._opts.temperature,
        )
        self._voice_message = None

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return self._synthesize_with_stream(text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> SynthesizeStream:
        return SynthesizeStream(tts=self, conn_options=conn_options)

    def _stream_request(self, replica: str | None = None) -> tuple[str, protocol.VoiceIn | None]:
        """A replica's (default: the first) stream URL and, for a local voice file, the Voice to send first."""
        opts = self._opts
        replica = replica or opts.urls[0]
        local_voice = opts.voice.endswith(".safetensors")
        query = protocol.StreamQuery(
            voice=None if local_voice else opts.voice,
            cfg_alpha=opts.cfg_alpha,
            seed=opts.seed,
            temperature=opts.temperature,
        )
        url = f"{replica}{protocol.PATH}?{urlencode(query.to_params())}"
        if local_voice and self._voice_message is None:
            self._voice_message = _voice_message(Path(opts.voice))
        return url, self._voice_message if local_voice else None


def _voice_message(path: Path) -> protocol.VoiceIn:
    from safetensors.numpy import load_file

    try:
        embedding = load_file(str(path))["speaker_wavs"]
    except (OSError, KeyError, ValueError) as exc:
        raise APIError(f"unreadable voice embedding file {path.name}", retryable=False) from exc
    return protocol.VoiceIn(embedding.astype(np.float32).ravel().tolist(), list(embedding.shape))


class SynthesizeStream(tts.SynthesizeStream):
    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._kyutai = tts
        # When the first audio arrived from the engine and when the first frame left for
        # LiveKit (monotonic seconds): the plugin's own share of time to first audio.
        self.first_audio_received_at: float | None = None
        self.first_frame_emitted_at: float | None = None
        self.first_word_sent_at: float | None = None
        # Per mid-segment failover: (engine lost, first audio from the next replica) in monotonic
        # seconds, and the word it resumed from: what tests and benches report.
        self.failovers: list[tuple[float, float]] = []
        self.resumed_from: list[int] = []
        # Every word sent to the engines and every word timed back, in order (for tests).
        self.sent_words: list[str] = []

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=SAMPLE_RATE,
            num_channels=NUM_CHANNELS,
            mime_type="audio/pcm",
            frame_size_ms=80,  # one engine frame: audio is passed on as soon as it comes
            stream=True,
        )
        segment: _Segment | None = None
        try:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    if segment is not None:
                        await segment.finish()
                        segment = None
                    continue
                if segment is None:
                    segment = await self._open_segment(output_emitter)
                await segment.push(item)
            if segment is not None:
                await segment.finish()
                segment = None
        finally:
            if segment is not None:
                await segment.abort()

    async def _open_segment(self, output_emitter: tts.AudioEmitter) -> _Segment:
        segment_id = utils.shortuuid()
        url, ws = await self._kyutai._pool.open(
            lambda replica: self._open_link(replica, segment_id), self._conn_options, stream_id=segment_id
        )
        segment = _Segment(self, ws, url, output_emitter, segment_id)
        segment.start()
        return segment

    async def _open_link(self, replica: str, segment_id: str) -> ClientConnection:
        """One engine stream, Ready (and the voice sent): what a segment speaks through."""
        url, voice = self._kyutai._stream_request(replica)
        ws = await connect(
            url, self._kyutai._opts.api_key, self._conn_options.timeout, engine=ENGINE, request_id=segment_id
        )
        try:
            try:
                raw = await asyncio.wait_for(ws.recv(), self._conn_options.timeout)
                first = protocol.decode_server(raw if isinstance(raw, bytes) else raw.encode())
            except protocol.ProtocolError as exc:
                raise APIConnectionError("Kyutai TTS: not a TTS engine at this address") from exc
            except TimeoutError as exc:
                raise APITimeoutError("Kyutai TTS: no Ready from the engine") from exc
            except websockets.ConnectionClosed as exc:
                raise APIConnectionError("Kyutai TTS closed the connection before Ready") from exc
            if isinstance(first, protocol.ErrorOut):
                raise await received_error(ws, ENGINE, first.message, segment_id)
            if not isinstance(first, protocol.Ready):
                raise APIConnectionError(f"Kyutai TTS: expected Ready, got {type(first).__name__}")
            if voice is not None:
                await ws.send(protocol.encode(voice))
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)
            raise
        return ws


class _Segment:
    """One segment of speech: words out, audio and timestamps in, concurrently, through one engine
    stream at a time. If that engine fails mid-segment, another replica takes over from the first
    word whose audio has not been pushed to the emitter in full (known from the Text timestamps):
    the member hears at most the start of that word twice, and no word is lost."""

    def __init__(
        self, stream: SynthesizeStream, ws: ClientConnection, url: str, emitter: tts.AudioEmitter, segment_id: str
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._url = url
        self._emitter = emitter
        self._segment_id = segment_id
        self._words: FrenchNormalizer | _PlainWords = (
            FrenchNormalizer() if stream._kyutai._opts.normalize else _PlainWords()
        )
        self._receiver: asyncio.Task[None] | None = None
        # Sends and a failover's re-sends take turns: a word is recorded and sent under the lock.
        self._lock = asyncio.Lock()
        self._sent: list[str] = []  # every word sent, as the engine counts them (one Text out each)
        self._eos = False
        self._stops: list[float] = []  # per word timed so far: where its audio ends, segment seconds
        self._pushed_s = 0.0  # segment audio pushed to the emitter
        self._shown = 0  # words whose timed transcript went to the emitter
        self._link_first_word = 0  # the word the current engine stream started from
        self._link_words = 0  # Text timestamps received on the current engine stream
        self._link_offset_s = 0.0  # segment seconds at which the current engine stream's audio starts
        self._lost_at: float | None = None

    def start(self) -> None:
        self._emitter.start_segment(segment_id=self._segment_id)
        self._receiver = asyncio.create_task(self._receive_all(), name="kyutai_tts.receive")

    async def push(self, text: str) -> None:
        for word in self._words.push(text):
            await self._send_word(word)

    async def _send_word(self, word: str) -> None:
        self._raise_if_receiver_failed()
        if self._stream.first_word_sent_at is None:
            self._stream.first_word_sent_at = time.monotonic()
        self._stream._mark_started()
        async with self._lock:
            for token in word.split():
                self._sent.append(token)
                self._stream.sent_words.append(token)
                await self._send(protocol.TextIn(token))

    async def finish(self) -> None:
        """End of the segment's text: send what is left, Eos, and wait for the last audio."""
        for word in self._words.flush():
            await self._send_word(word)
        async with self._lock:
            self._eos = True
            await self._send(protocol.EosIn())
        assert self._receiver is not None
        await self._receiver
        self._emitter.end_segment()
        await self._ws.close()

    async def abort(self) -> None:
        """Interruption or failure: drop the stream now (the engine frees the slot next frame)."""
        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(BaseException):
                await self._receiver
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(), 1.0)

    def _raise_if_receiver_failed(self) -> None:
        if self._receiver is not None and self._receiver.done() and not self._receiver.cancelled():
            error = self._receiver.exception()
            if error is not None:
                raise error

    async def _send(self, message: protocol.ClientMessage) -> None:
        try:
            await self._ws.send(protocol.encode(message))
        except websockets.ConnectionClosed:
            # The receiver sees the same closure and either fails over (re-sending every word
            # not yet played, this one included) or raises the engine's error.
            pass

    async def _receive_all(self) -> None:
        """Receive until the segment's audio is complete, moving to another replica if the engine fails."""
        failovers = 0
        while True:
            try:
                await self._receive(self._ws)
                return
            except APIError as exc:
                if not can_fail_over(exc) or failovers >= len(self._stream._kyutai._pool):
                    raise
                failovers += 1
                await self._fail_over(exc)

    async def _fail_over(self, error: APIError) -> None:
        pool = self._stream._kyutai._pool
        options = self._stream._conn_options
        self._lost_at = time.monotonic()
        pool.mark_down(self._url, type(error).__name__)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(), 0.2)
        async with self._lock:
            # The first word whose audio is not all out yet (its stop time unknown, or past the
            # audio pushed): a new engine stream speaks from there.
            resume = next((i for i, stop in enumerate(self._stops) if stop > self._pushed_s + 1e-3), len(self._stops))
            log_failover(
                ENGINE,
                self._url,
                self._segment_id,
                f"lost mid-segment ({error}); resuming at word {resume} of {len(self._sent)}",
            )
            # LiveKit's retry loop cannot retry a segment whose audio has started: the pauses and
            # attempts of APIConnectOptions are spent here instead.
            url, ws = await pool.open(
                lambda replica: self._stream._open_link(replica, self._segment_id),
                options,
                stream_id=self._segment_id,
                rounds=options.max_retry + 1,
            )
            self._ws, self._url = ws, url
            self._link_first_word, self._link_words, self._link_offset_s = resume, 0, self._pushed_s
            del self._stops[resume:]
            self._stream.resumed_from.append(resume)
            for token in self._sent[resume:]:
                await self._send(protocol.TextIn(token))
            if self._eos:
                await self._send(protocol.EosIn())

    async def _receive(self, ws: ClientConnection) -> None:
        timeout = self._stream._kyutai._opts.audio_timeout_s
        stream = self._stream
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout if self._sent else None)
            except TimeoutError as exc:
                raise APITimeoutError("Kyutai TTS: no audio from the engine") from exc
            except websockets.ConnectionClosedOK:
                return  # the engine closes the stream once its audio is complete
            except websockets.ConnectionClosed as exc:
                raise APIConnectionError("Kyutai TTS connection lost") from exc
            if isinstance(raw, str):
                continue
            message = protocol.decode_server(raw)
            if isinstance(message, protocol.Audio):
                now = time.monotonic()
                if stream.first_audio_received_at is None:
                    stream.first_audio_received_at = now
                if self._lost_at is not None:
                    stream.failovers.append((self._lost_at, now))
                    self._lost_at = None
                pcm = np.asarray(message.pcm, dtype=np.float32)
                self._emitter.push((np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes())
                self._pushed_s += pcm.size / SAMPLE_RATE
                if stream.first_frame_emitted_at is None:
                    stream.first_frame_emitted_at = time.monotonic()
            elif isinstance(message, protocol.TextOut):
                index = self._link_first_word + self._link_words
                self._link_words += 1
                start, stop = self._link_offset_s + message.start_s, self._link_offset_s + message.stop_s
                if index < len(self._stops):
                    self._stops[index] = stop
                else:
                    self._stops.append(stop)
                if index >= self._shown:  # a word re-spoken after a failover is not shown twice
                    self._shown = index + 1
                    self._emitter.push_timed_transcript(
                        TimedString(f"{message.text} ", start_time=start, end_time=stop)
                    )
            elif isinstance(message, protocol.ErrorOut):
                raise await received_error(ws, ENGINE, message.message, self._segment_id)


class _PlainWords:
    """Without normalisation, whole words still go one by one: LLM deltas cut words anywhere."""

    def __init__(self) -> None:
        self._buffer = ""

    def push(self, delta: str) -> list[str]:
        self._buffer += delta
        *complete, self._buffer = self._buffer.split(" ")
        return [word for chunk in complete for word in chunk.split()]

    def flush(self) -> list[str]:
        words, self._buffer = self._buffer.split(), ""
        return words
