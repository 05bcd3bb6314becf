"""The TTS engine server: `python -m kyutai_tts.server` (one process per GPU, CPU when none).

Speaks Kyutai's moshi-server protocol at /api/tts_streaming (see `protocol.py`), so Kyutai's
own clients work against it and our plugin works against moshi-server. Also serves
GET /api/health (200 once warmed up) and GET /metrics (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from kyutai_common.checkpoint import checkpoint_info, resolve_device, resolve_dtype
from kyutai_common.runtime import freeze_startup_objects, log_slow_collections
from kyutai_common.settings import check_api_keys
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import HTTPConnection

from . import protocol
from .engine import Conditioning, EngineError, EngineFull, RequestError, StreamHandle, TTSEngine
from .settings import EngineSettings
from .voices import VoiceBank

logger = logging.getLogger("kyutai_tts.server")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.streams_in_use = Gauge("kyutai_tts_streams_in_use", "Streams holding a slot", registry=self.registry)
        self.max_streams = Gauge("kyutai_tts_max_streams", "Slots in the batch", registry=self.registry)
        self.streams = Counter("kyutai_tts_streams_total", "Streams opened", registry=self.registry)
        self.rejected = Counter("kyutai_tts_rejected_total", "Connections refused", ["reason"], registry=self.registry)
        for reason in ("auth", "bad_request", "full", "engine", "draining"):
            self.rejected.labels(reason)  # exported at 0 from the start
        self.step_seconds = Histogram(
            "kyutai_tts_step_seconds",
            "One batched model step (LM + Mimi decode)",
            buckets=(0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.2, 0.5),
            registry=self.registry,
        )
        self.batch_streams = Histogram(
            "kyutai_tts_batch_streams",
            "Streams stepped together",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.first_audio_seconds = Histogram(
            "kyutai_tts_first_audio_seconds",
            "From a stream's first word to its first audio frame",
            buckets=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.0),
            registry=self.registry,
        )

    def on_step(self, seconds: float, streams: int) -> None:
        self.step_seconds.observe(seconds)
        self.batch_streams.observe(streams)


class MessageTooBig(RequestError):
    """A message over `max_message_bytes` (close 1009)."""


def close_code(error: Exception) -> int:
    """Whose fault an error is, as the WebSocket close code after its `Error` (see kyutai_common.protocol)."""
    if isinstance(error, EngineFull):
        return protocol.CLOSE_FULL
    if isinstance(error, MessageTooBig):
        return protocol.CLOSE_TOO_BIG
    if isinstance(error, RequestError | protocol.ProtocolError):
        return protocol.CLOSE_CLIENT_ERROR
    return protocol.CLOSE_ENGINE_ERROR


@dataclass
class _Sink:
    """Hands the engine thread's domain events to this connection's event loop, as protocol messages."""

    loop: asyncio.AbstractEventLoop
    max_queue: int
    # Messages to send (Audio as its float32 array until sent: 4 bytes a sample, not a float
    # object's 32); an int ends the stream with that WebSocket close code.
    queue: asyncio.Queue[protocol.ServerMessage | np.ndarray | int] = field(default_factory=asyncio.Queue)
    # Set once `max_queue` messages wait: the client does not read, and is dropped.
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)
    first_audio_at: float | None = None

    def _put(self, message: protocol.ServerMessage | np.ndarray | int) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: the connection is gone anyway
            self.loop.call_soon_threadsafe(self._deliver, message)

    def _deliver(self, message: protocol.ServerMessage | np.ndarray | int) -> None:
        if self.queue.qsize() >= self.max_queue:
            self.overflowed.set()  # nothing more is queued: the connection is being dropped
            return
        self.queue.put_nowait(message)

    def audio(self, pcm: np.ndarray) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        self._put(pcm)

    def word(self, text: str, start_s: float, stop_s: float) -> None:
        self._put(protocol.TextOut(text, start_s, stop_s))

    def finished(self) -> None:
        self._put(protocol.CLOSE_NORMAL)

    def failed(self, error: Exception) -> None:
        # One line per ended stream, whichever thread ended it (error texts never quote the member's text).
        logger.info("ending a stream (%s, close %d): %s", type(error).__name__, close_code(error), str(error)[:120])
        self._put(protocol.ErrorOut(str(error)))
        self._put(close_code(error))


class TTSService:
    """Glue between WebSocket connections and the engine."""

    def __init__(self, engine: TTSEngine, voices: VoiceBank, settings: EngineSettings, model_name: str) -> None:
        self.engine = engine
        self.voices = voices
        self.settings = settings
        self.model_name = model_name
        self.metrics = Metrics()
        self.metrics.max_streams.set(engine.max_streams)
        engine.on_step = self.metrics.on_step
        self._conditionings: dict[tuple[str, float | None], Conditioning] = {}
        self.draining = False  # SIGTERM: refuse new streams, let live ones finish (see DrainingServer)
        self.live_streams = 0  # connections holding a stream, counted here: the engine frees slots a step later

    async def conditioning(self, voice: str | None, cfg_alpha: float | None) -> Conditioning:
        key = (voice or self.settings.default_voice, cfg_alpha)
        cached = self._conditionings.get(key)
        if cached is None:
            cached = await asyncio.to_thread(self.voices.conditioning, self.engine, key[0], cfg_alpha)
            self._conditionings[key] = cached
        return cached

    def authorised(self, connection: HTTPConnection) -> bool:
        """Streams and /metrics take the same key (Prometheus sends it as `params: {auth_id: [...]}`)."""
        keys = self.settings.api_keys
        offered = connection.headers.get(protocol.API_KEY_HEADER) or connection.query_params.get(
            protocol.API_KEY_QUERY
        )
        if not keys or offered in keys:
            return True
        logger.info("refused %s: missing or wrong API key", connection.url.path)
        return False

    async def handle(self, websocket: WebSocket) -> None:
        if not self.authorised(websocket):
            self.metrics.rejected.labels("auth").inc()
            await websocket.close(code=1008)  # before accept: the client sees HTTP 403
            return
        await websocket.accept()
        if self.draining:
            # Refused as a full engine is: the plugins retry on another replica.
            self.metrics.rejected.labels("draining").inc()
            await self._refuse(websocket, EngineFull(protocol.DRAINING))
            return
        try:
            query = protocol.StreamQuery.parse(dict(websocket.query_params))
            cfg_alpha = query.cfg_alpha if query.cfg_alpha is not None else self.settings.cfg_alpha
            conditioning = await self.conditioning(query.voice, cfg_alpha)
        except (protocol.ProtocolError, EngineError) as exc:
            self.metrics.rejected.labels("bad_request").inc()
            await self._refuse(websocket, exc)
            return
        sink = _Sink(asyncio.get_running_loop(), self.settings.max_outgoing_messages)
        temperature = query.temperature if query.temperature is not None else self.settings.temperature
        try:
            handle = self.engine.open(sink, temperature=temperature, seed=query.seed, conditioning=conditioning)
        except EngineError as exc:
            self.metrics.rejected.labels("full" if isinstance(exc, EngineFull) else "engine").inc()
            await self._refuse(websocket, exc)
            return
        self.metrics.streams.inc()
        self.metrics.streams_in_use.inc()
        self.live_streams += 1
        try:
            await websocket.send_bytes(protocol.encode(protocol.Ready()))
            await self._serve_bounded(websocket, handle, sink, cfg_alpha)
        finally:
            handle.close()  # frees the slot at the next step, whatever ended the connection
            self.metrics.streams_in_use.dec()
            self.live_streams -= 1

    async def _refuse(self, websocket: WebSocket, error: Exception) -> None:
        with contextlib.suppress(Exception):
            await websocket.send_bytes(protocol.encode(protocol.ErrorOut(str(error))))
            await websocket.close(code=close_code(error))

    async def _serve_bounded(self, websocket: WebSocket, handle: StreamHandle, sink: _Sink, cfg_alpha: float) -> None:
        """`_serve`, dropped when the client does not read: its sends block (uvicorn's write buffer
        is full), so the outgoing queue fills up; the stream is ended rather than buffered."""
        serving = asyncio.create_task(self._serve(websocket, handle, sink, cfg_alpha))
        overflow = asyncio.create_task(sink.overflowed.wait())
        try:
            await asyncio.wait({serving, overflow}, return_when=asyncio.FIRST_COMPLETED)
            stuck = not serving.done()  # the queue filled while a send was blocked
        finally:
            overflow.cancel()
            if not serving.done():
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
        if not stuck:
            return
        handle.close()
        self.metrics.rejected.labels("slow_client").inc()
        logger.info("dropping a stream: its client left %d messages unread (close 1008)", sink.max_queue)
        # The goodbye may never get through a client that does not read: bounded, then uvicorn drops it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._refuse(websocket, RequestError("client reads too slowly")), 1.0)

    async def _serve(self, websocket: WebSocket, handle: StreamHandle, sink: _Sink, cfg_alpha: float) -> None:
        first_word_at: list[float] = []
        receiver = asyncio.create_task(self._receive(websocket, handle, sink, cfg_alpha, first_word_at))
        try:
            while True:
                getter = asyncio.ensure_future(sink.queue.get())
                if not receiver.done():
                    await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        if receiver.exception() is not None or receiver.result():
                            return  # the client went away: stop the stream now
                        continue  # a bad message: its Error is queued, send it
                message = await getter
                if isinstance(message, int):
                    await websocket.close(code=message)
                    return
                if isinstance(message, np.ndarray):
                    message = protocol.Audio(message.tolist())
                if isinstance(message, protocol.Audio) and first_word_at and sink.first_audio_at is not None:
                    self.metrics.first_audio_seconds.observe(max(0.0, sink.first_audio_at - first_word_at[0]))
                    first_word_at.clear()
                await websocket.send_bytes(protocol.encode(message))
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        finally:
            receiver.cancel()

    async def _receive(
        self, websocket: WebSocket, handle: StreamHandle, sink: _Sink, cfg_alpha: float, first_word_at: list[float]
    ) -> bool:
        """Feeds the client's messages to the engine until the client leaves (True) or sends
        something invalid (False: the Error is queued and the stream closed)."""
        settings = self.settings
        ended = False
        text_chars = 0
        loop = asyncio.get_running_loop()
        # Only real text moves the deadline: empty Text or Voice messages would hold a slot forever.
        deadline = loop.time() + settings.idle_timeout_s
        while True:
            try:
                async with asyncio.timeout_at(None if ended else deadline):
                    frame = await websocket.receive()
            except TimeoutError:
                return self._end(handle, sink, RequestError(f"no text for {settings.idle_timeout_s:g} s"))
            except (WebSocketDisconnect, RuntimeError):
                return True
            if frame["type"] == "websocket.disconnect":
                return True
            data: bytes | str | None = frame.get("bytes") if frame.get("bytes") is not None else frame.get("text")
            if data is None or ended:
                continue  # after Eos, moshi-server ignores input too; we keep reading to see a close
            try:
                # Checked before decoding (uvicorn's ws_max_size refuses larger frames first in main()).
                size = len(data) if isinstance(data, bytes) else len(data.encode())
                if size > settings.max_message_bytes:
                    raise MessageTooBig(f"message over {settings.max_message_bytes} bytes")
                message = protocol.decode_client(data)
                if isinstance(message, protocol.TextIn):
                    # Bounded before moshi's parser sees it: it is quadratic in one text's length.
                    if len(message.text) > settings.max_text_chars:
                        raise RequestError(f"a Text holds more than {settings.max_text_chars} characters")
                    text_chars += len(message.text)
                    if text_chars > settings.max_stream_text_chars:
                        raise RequestError(f"a stream's text is over {settings.max_stream_text_chars} characters")
                    if message.text.strip():
                        deadline = loop.time() + settings.idle_timeout_s
                    if not first_word_at:
                        first_word_at.append(time.monotonic())
                    handle.push_text(message.text)
                elif isinstance(message, protocol.VoiceIn):
                    embedding = torch.tensor(message.embeddings, dtype=torch.float32).reshape(message.shape)
                    conditioning = await asyncio.to_thread(self.engine.conditioning_for, embedding, cfg_alpha)
                    handle.set_voice(conditioning)
                else:
                    handle.end_text()
                    ended = True
            except (protocol.ProtocolError, EngineError) as exc:
                return self._end(handle, sink, exc)
            except Exception as exc:  # a bug on one stream's input ends that stream, never the server
                logger.exception("unexpected error on a stream's input")
                return self._end(handle, sink, EngineError(f"server error ({type(exc).__name__})"))

    def _end(self, handle: StreamHandle, sink: _Sink, error: Exception) -> bool:
        """Ends one stream on its own input: Error, then the close code saying whose fault it was."""
        handle.close()
        engine_fault = close_code(error) == protocol.CLOSE_ENGINE_ERROR
        self.metrics.rejected.labels("engine" if engine_fault else "bad_request").inc()
        sink.failed(error)
        return False


def create_app(service: TTSService) -> FastAPI:
    app = FastAPI(title="Kyutai TTS engine", docs_url=None, redoc_url=None)

    @app.get("/api/health")
    async def health() -> JSONResponse:
        alive = service.engine.alive
        # 503 while draining too: load balancers and the workers' engine poll drop this replica.
        status = "engine stopped" if not alive else "draining" if service.draining else "ok"
        return JSONResponse(
            status_code=200 if status == "ok" else 503,
            content={
                "status": status,
                "model": service.model_name,
                "max_streams": service.engine.max_streams,
                "streams_in_use": service.engine.streams_in_use,
            },
        )

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if not service.authorised(request):
            return Response("invalid api key\n", status_code=401, media_type="text/plain")
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.websocket(protocol.PATH)
    async def tts_streaming(websocket: WebSocket) -> None:
        await service.handle(websocket)

    return app


# ----- start-up ---------------------------------------------------------------------------------


def build_service(settings: EngineSettings) -> TTSService:
    """The one way to build the service from settings: load, warm up, start the engine thread
    (blocking: call off the loop). `running_service` also stops it."""
    from moshi.models.tts import TTSModel

    device = resolve_device(settings.device)
    info = checkpoint_info(settings.checkpoint)
    n_q = settings.n_q or int((info.raw_config or {}).get("dep_q", 32))
    tts_model = TTSModel.from_checkpoint_info(
        info,
        n_q=n_q,
        device=device,
        dtype=resolve_dtype(settings.dtype, device),
        voice_repo=settings.voice_repo,
        max_padding=settings.max_padding,
        initial_padding=settings.initial_padding,
        final_padding=settings.final_padding,
        padding_bonus=settings.padding_bonus,
        temp=settings.temperature,
    )
    voices = VoiceBank(tts_model, settings.voice_dir, allow_hub=settings.allow_hub_voices)
    default_voice = voices.embedding(settings.default_voice)
    engine = TTSEngine(
        tts_model,
        max_streams=settings.max_streams,
        default_voice=default_voice,
        default_cfg_alpha=settings.cfg_alpha,
        top_k=settings.top_k,
        top_k_text=settings.top_k_text,
        padding_between=settings.padding_between,
        max_steps=settings.max_steps,
        cuda_graphs=settings.cuda_graphs,
    )
    engine.warmup(settings.warmup_steps)
    engine.start()
    return TTSService(engine, voices, settings, model_name=settings.checkpoint)


@contextlib.contextmanager
def running_service(settings: EngineSettings) -> Iterator[TTSService]:
    service = build_service(settings)
    try:
        yield service
    finally:
        service.engine.stop()


class DrainingServer(uvicorn.Server):
    """uvicorn, but SIGTERM drains first: uvicorn's own shutdown closes every WebSocket at once
    (1012) and then re-raises SIGTERM, so the process would neither finish live streams nor exit 0.

    The signal handler only sets a flag; the drain runs in uvicorn's 100 ms tick, on the loop.
    """

    def __init__(self, config: uvicorn.Config, service: TTSService, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.service = service
        self.drain_timeout_s = drain_timeout_s
        self._sigterms = 0
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM:
            super().handle_exit(sig, frame)
            return
        self._sigterms += 1
        if self._sigterms > 1:  # a second SIGTERM: stop now, cutting what is still live
            self.should_exit = True
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._sigterms and self._drain_deadline is None:
            self.service.draining = True
            self._drain_deadline = time.monotonic() + self.drain_timeout_s
            logger.info(
                "draining: %d live stream(s), waiting up to %g s", self.service.live_streams, self.drain_timeout_s
            )
        if self._drain_deadline is not None and (
            self.service.live_streams == 0 or time.monotonic() >= self._drain_deadline or self.force_exit
        ):
            logger.info("drained: %d live stream(s) left", self.service.live_streams)
            return True
        return await super().on_tick(counter)


def main() -> None:
    settings = EngineSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    check_api_keys(settings, logger)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    logger.info("loading %s (max_streams %d, torch threads %d)", settings.checkpoint, settings.max_streams,
                torch.get_num_threads())
    with running_service(settings) as service:
        freeze_startup_objects(logger)
        log_slow_collections(logger)
        logger.info("ready on %s:%d%s", settings.host, settings.port, protocol.PATH)
        config = uvicorn.Config(
            create_app(service),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            ws="websockets-sansio",
            # Larger frames are refused by the WebSocket layer from their header (close 1009).
            ws_max_size=settings.max_message_bytes,
        )
        server = DrainingServer(config, service, settings.drain_timeout_s)

        def engine_crashed() -> None:  # engine thread: uvicorn polls the flag every 100 ms
            logger.critical("engine thread died: exiting so the supervisor restarts the engine")
            server.should_exit = True

        service.engine.on_crash = engine_crashed
        server.run()
    if service.engine.crashed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
