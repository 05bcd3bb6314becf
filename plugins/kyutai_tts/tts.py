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
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import websockets
from kyutai_common.client import CLOSE_WAIT_S, KyutaiProvider, connect, endpoint, received_error
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
    url: str
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
        api_key: NotGivenOr[str] = NOT_GIVEN,
        voice: NotGivenOr[str] = NOT_GIVEN,
        cfg_alpha: NotGivenOr[float | None] = NOT_GIVEN,
        temperature: NotGivenOr[float | None] = NOT_GIVEN,
        seed: int | None = None,
        normalize: bool = True,
        settings: NotGivenOr[PluginSettings] = NOT_GIVEN,
    ) -> None:
        """`voice` is a kyutai/tts-voices name or a local `.safetensors` embedding file.
        Arguments not given come from `settings` (default: `PluginSettings()`, the environment);
        `cfg_alpha` / `temperature` None: the engine's default."""
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=True),
            sample_rate=SAMPLE_RATE,
            num_channels=NUM_CHANNELS,
        )
        settings = settings if is_given(settings) else PluginSettings()
        resolved_url, resolved_key = endpoint(url, api_key, settings)
        self._opts = _Options(
            url=resolved_url,
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

    def _stream_request(self) -> tuple[str, protocol.VoiceIn | None]:
        """The stream URL and, for a local voice file, the Voice message to send first."""
        opts = self._opts
        local_voice = opts.voice.endswith(".safetensors")
        query = protocol.StreamQuery(
            voice=None if local_voice else opts.voice,
            cfg_alpha=opts.cfg_alpha,
            seed=opts.seed,
            temperature=opts.temperature,
        )
        url = f"{opts.url}{protocol.PATH}?{urlencode(query.to_params())}"
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
        url, voice = self._kyutai._stream_request()
        segment_id = utils.shortuuid()
        ws = await connect(
            url, self._kyutai._opts.api_key, self._conn_options.timeout, engine=ENGINE, request_id=segment_id
        )
        segment = _Segment(self, ws, output_emitter, segment_id)
        try:
            await segment.start(voice)
        except BaseException:
            await segment.abort()
            raise
        return segment


class _Segment:
    """One engine stream: words out, audio and timestamps in, concurrently."""

    def __init__(
        self, stream: SynthesizeStream, ws: ClientConnection, emitter: tts.AudioEmitter, segment_id: str
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._emitter = emitter
        self._segment_id = segment_id
        self._words: FrenchNormalizer | _PlainWords = (
            FrenchNormalizer() if stream._kyutai._opts.normalize else _PlainWords()
        )
        self._receiver: asyncio.Task[None] | None = None
        self._sent_words = 0

    async def start(self, voice: protocol.VoiceIn | None) -> None:
        timeout = self._stream._conn_options.timeout
        try:
            raw = await asyncio.wait_for(self._ws.recv(), timeout)
            first = protocol.decode_server(raw if isinstance(raw, bytes) else raw.encode())
        except protocol.ProtocolError as exc:
            raise APIConnectionError("Kyutai TTS: not a TTS engine at this address") from exc
        except TimeoutError as exc:
            raise APITimeoutError("Kyutai TTS: no Ready from the engine") from exc
        except websockets.ConnectionClosed as exc:
            raise APIConnectionError("Kyutai TTS closed the connection before Ready") from exc
        if isinstance(first, protocol.ErrorOut):
            raise await received_error(self._ws, ENGINE, first.message, self._segment_id)
        if not isinstance(first, protocol.Ready):
            raise APIConnectionError(f"Kyutai TTS: expected Ready, got {type(first).__name__}")
        if voice is not None:
            await self._send(voice)
        self._emitter.start_segment(segment_id=self._segment_id)
        self._receiver = asyncio.create_task(self._receive(), name="kyutai_tts.receive")

    async def push(self, text: str) -> None:
        for word in self._words.push(text):
            await self._send_word(word)

    async def _send_word(self, word: str) -> None:
        self._raise_if_receiver_failed()
        if self._stream.first_word_sent_at is None:
            self._stream.first_word_sent_at = time.monotonic()
        self._stream._mark_started()
        await self._send(protocol.TextIn(word))
        self._sent_words += 1

    async def finish(self) -> None:
        """End of the segment's text: send what is left, Eos, and wait for the last audio."""
        for word in self._words.flush():
            await self._send_word(word)
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
        except websockets.ConnectionClosed as exc:
            if self._receiver is not None:
                # An engine Error closes the stream: let the receiver turn it into its error first.
                await asyncio.wait({self._receiver}, timeout=CLOSE_WAIT_S + 0.5)
            self._raise_if_receiver_failed()
            raise APIConnectionError("Kyutai TTS connection lost while sending text") from exc

    async def _receive(self) -> None:
        timeout = self._stream._kyutai._opts.audio_timeout_s
        stream = self._stream
        while True:
            try:
                raw = await asyncio.wait_for(self._ws.recv(), timeout if self._sent_words else None)
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
                if stream.first_audio_received_at is None:
                    stream.first_audio_received_at = time.monotonic()
                pcm = np.asarray(message.pcm, dtype=np.float32)
                self._emitter.push((np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes())
                if stream.first_frame_emitted_at is None:
                    stream.first_frame_emitted_at = time.monotonic()
            elif isinstance(message, protocol.TextOut):
                self._emitter.push_timed_transcript(
                    TimedString(f"{message.text} ", start_time=message.start_s, end_time=message.stop_s)
                )
            elif isinstance(message, protocol.ErrorOut):
                raise await received_error(self._ws, ENGINE, message.message, self._segment_id)


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
