"""The STT engine server: `python -m kyutai_stt.server` (one process per GPU; CPU when none).

It speaks Kyutai's own streaming protocol at /api/asr-streaming (see `protocol`), so Kyutai's
clients and our plugin both work against it, and serves /api/health and /metrics (Prometheus).

One model loop steps every stream that has a full 80 ms frame waiting, all in one batch, in a
worker thread; it runs as fast as frames arrive, so a backlog (the silence prefix, a flush, a
client sending faster than real time) drains at model speed. Streams only meet in that batch:
a slow reader, a silent or vanished client only ever affects its own slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import torch
from kyutai_common.runtime import freeze_startup_objects, log_slow_collections
from kyutai_common.settings import check_api_keys
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import protocol
from .engine import EndWord, SlotOutput, StepStats, SttEngine, Word, load_checkpoint
from .settings import EngineSettings

logger = logging.getLogger("kyutai_stt.server")

# How long a client may take to accept the close of its stream before its connection is dropped.
CLOSE_S = 2.0

LOGGED_CHARS = 120  # a client's error text is cut to this in logs and Error messages
# While draining, a stream with no word since its last final (or its start) for this long is
# between two of the member's turns: it is handed over then (see SttServer.drain). One whose
# client never ends its turns (no Marker) is handed over after DRAIN_WORDLESS_S without a word.
DRAIN_QUIET_S = 1.0
DRAIN_WORDLESS_S = 3.0
# At most this many steps go to the model thread at once (a flush is the model's text delay, 7 steps,
# plus one): a real-time stream's next frame waits at most this many steps behind a backlog.
MAX_BURST_STEPS = 8


class Metrics:
    """The engine's Prometheus metrics, in a registry of its own (several servers may share a process)."""

    def __init__(self, max_streams: int) -> None:
        self.registry = CollectorRegistry()
        self.streams_in_use = Gauge(
            "kyutai_stt_streams_in_use", "Streams holding a batch slot", registry=self.registry
        )
        self.max_streams = Gauge("kyutai_stt_max_streams", "Batch slots", registry=self.registry)
        self.max_streams.set(max_streams)
        self.step_seconds = Histogram(
            "kyutai_stt_step_seconds",
            "Time of one batched model step (Mimi encode + LM step)",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.2, 0.5, 1.0),
            registry=self.registry,
        )
        self.frames_over_budget = Counter(
            "kyutai_stt_frames_over_budget_total",
            "Steps that took longer than the 80 ms of audio they process",
            registry=self.registry,
        )
        # The end of a member's turn waits on this: a client's Marker (the plugin sends one, then a burst
        # of silence, when the turn ends) comes back once the model has stepped through its text delay.
        self.marker_wait_seconds = Histogram(
            "kyutai_stt_marker_wait_seconds",
            "From a Marker's arrival to its return (an end of turn's flush through the model)",
            buckets=(0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "kyutai_stt_queue_depth", "Audio frames waiting for the model, all streams", registry=self.registry
        )
        self.connections = Counter(
            "kyutai_stt_connections_total", "Stream connections by outcome", ["result"], registry=self.registry
        )
        self.errors = Counter(
            "kyutai_stt_errors_total", "Streams ended by an error, by type", ["type"], registry=self.registry
        )


@dataclass(eq=False)
class Stream:
    """One client connection and its batch slot."""

    slot: int
    frame_size: int
    pending: deque[np.ndarray] = field(default_factory=deque)  # whole frames waiting for the model
    partial: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    frames_received: int = 0
    pending_since: float = 0.0  # when the oldest waiting frame arrived (monotonic)
    steps: int = 0
    # (step to reach, marker id, when it arrived: monotonic)
    markers: deque[tuple[int, int, float]] = field(default_factory=deque)
    last_word_step: int = 0  # `steps` when the last Word was sent
    words_since_marker: bool = False  # a Word was sent since the last Marker went back (a turn is open)
    # The end of the last Word sent while no EndWord closed it yet: a Marker closes it with that
    # time, so the turn's final carries where its last word ended (the model's EndWord would
    # only come with the next word, after the turn).
    open_word_end: float | None = None
    # Messages to send; an int ends the stream with that WebSocket close code.
    out: asyncio.Queue[dict[str, Any] | int] = field(default_factory=asyncio.Queue)
    closed: bool = False
    opened_at: float = field(default_factory=time.monotonic)

    def age_s(self) -> float:
        return time.monotonic() - self.opened_at

    def add_audio(self, pcm: np.ndarray) -> None:
        samples = np.concatenate([self.partial, pcm]) if self.partial.size else pcm
        whole = samples.size // self.frame_size * self.frame_size
        if whole and not self.pending:
            self.pending_since = time.monotonic()
        for start in range(0, whole, self.frame_size):
            self.pending.append(samples[start : start + self.frame_size].copy())
        self.frames_received += whole // self.frame_size
        self.partial = samples[whole:].copy()

    @property
    def buffered_samples(self) -> int:
        return len(self.pending) * self.frame_size + self.partial.size


class SttServer:
    """The network service around one `SttEngine`."""

    def __init__(self, settings: EngineSettings, engine: SttEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = Metrics(engine.max_streams)
        self.streams: dict[int, Stream] = {}
        # Every engine call runs in this one thread: the model and its slots are not thread-safe.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kyutai-stt-model")
        self._audio_ready = asyncio.Event()
        self._server: Server | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        self.model_failed = False  # the model loop died: the process must exit non-zero (see run)
        self.on_model_failure: Callable[[], None] | None = None  # called once when it does
        self.draining = False  # SIGTERM: refuse new streams, let live ones finish (see drain)
        self._stream_ended = asyncio.Event()
        self._step_s = 0.0  # a batched step's time, smoothed: what stepping each stream alone would cost

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets = list(self._server.sockets)
        return int(sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._model_loop(), name="kyutai-stt-model-loop")
        self._loop_task.add_done_callback(self._on_model_loop_done)
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            process_request=self._process_request,
            # Larger messages are refused by the library before they are read whole (close 1009).
            max_size=self.settings.max_message_bytes,
            max_queue=4,  # frames read ahead per connection: at most 4 x max_size buffered
            ping_interval=10,
            ping_timeout=20,
            close_timeout=2,
        )
        logger.info("listening on ws://%s:%d%s", self.settings.host, self.port, protocol.PATH)

    async def stop(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self._executor.shutdown(wait=True)

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new streams and wait, up to `timeout_s`, for the live ones to end; True if they all did.
        The listener stays open meanwhile so health answers "draining" and new streams get 1013.

        An STT stream lasts a whole session, so waiting for it to end would only end at the bound,
        cutting the member mid-sentence. Instead each live stream is handed over at its next turn
        boundary: when the Marker that closes a turn goes back (the client has its final), or when
        no word came since the last one for DRAIN_QUIET_S. It is closed with CLOSE_RESTART, and the
        client reconnects to another replica, replaying what it sent since its last final."""
        self.draining = True
        logger.info("draining: %d live stream(s), waiting up to %g s", len(self.streams), timeout_s)
        for stream in list(self.streams.values()):
            self._hand_over_if_between_turns(stream)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.streams:
                    self._stream_ended.clear()
                    await self._stream_ended.wait()
        logger.info("drained: %d live stream(s) left", len(self.streams))
        return not self.streams

    def _on_model_loop_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        logger.critical("model loop died: exiting so the supervisor restarts the engine", exc_info=task.exception())
        self.model_failed = True
        if self.on_model_failure is not None:
            self.on_model_failure()

    async def _run_in_model_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # HTTP side: health, metrics, authentication

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == "/api/health":
            body = {
                "status": "draining" if self.draining else "ok",
                "streams_in_use": len(self.streams),
                "max_streams": self.engine.max_streams,
                "pause_heads": self.engine.checkpoint.has_pause_heads,
            }
            # 503 while draining: load balancers and the workers' engine poll drop this replica.
            status = HTTPStatus.SERVICE_UNAVAILABLE if self.draining else HTTPStatus.OK
            response = connection.respond(status, json.dumps(body) + "\n")
            response.headers["Content-Type"] = "application/json"
            return response
        if path not in (protocol.PATH, "/metrics"):
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        # Streams and metrics take the same key (Prometheus sends it as `params: {auth_id: [...]}`).
        if self.settings.api_keys:
            key: str | None = request.headers.get(protocol.API_KEY_HEADER)
            if key is None:
                keys = parse_qs(query).get(protocol.API_KEY_QUERY, [])
                key = keys[0] if keys else None
            if key not in self.settings.api_keys:
                self.metrics.connections.labels("unauthorized").inc()
                logger.info("refused %s: missing or wrong API key", path)
                return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid api key\n")
        if path == "/metrics":
            response = connection.respond(HTTPStatus.OK, generate_latest(self.metrics.registry).decode())
            response.headers["Content-Type"] = "text/plain; version=0.0.4"
            return response
        return None

    # WebSocket side: one stream per connection

    async def _handle(self, websocket: ServerConnection) -> None:
        if self.draining:
            # Refused as a full engine is: the plugins retry on another replica.
            self.metrics.connections.labels("draining").inc()
            with contextlib.suppress(ConnectionClosed):
                await websocket.send(protocol.pack(protocol.error(protocol.DRAINING)))
            await close_connection(websocket, protocol.CLOSE_FULL, protocol.DRAINING)
            return
        slot = await self._run_in_model_thread(self.engine.open_slot)
        if slot is None:
            self.metrics.connections.labels("full").inc()
            logger.warning("no free slot (%d streams)", self.engine.max_streams)
            with contextlib.suppress(ConnectionClosed):
                await websocket.send(protocol.pack(protocol.error(protocol.NO_FREE_CHANNELS)))
            await close_connection(websocket, protocol.CLOSE_FULL, protocol.NO_FREE_CHANNELS)
            return
        self.metrics.connections.labels("accepted").inc()
        stream = Stream(slot=slot, frame_size=self.engine.frame_size)
        if self.engine.prefix_frames:
            stream.add_audio(np.zeros(self.engine.prefix_frames * self.engine.frame_size, dtype=np.float32))
        self.streams[slot] = stream
        self.metrics.streams_in_use.set(len(self.streams))
        sender = asyncio.create_task(self._send_loop(websocket, stream))
        stream.out.put_nowait(protocol.ready())
        self._audio_ready.set()
        try:
            await self._receive_loop(websocket, stream)
        finally:
            # Free the slot first: the goodbye below may wait on a client that no longer reads.
            stream.closed = True
            self.streams.pop(slot, None)
            self.metrics.streams_in_use.set(len(self.streams))
            self._stream_ended.set()
            if not self._closing:
                await self._run_in_model_thread(self.engine.close_slot, slot)
            else:
                self.engine.close_slot(slot)
            logger.info("stream on slot %d ended after %d steps", slot, stream.steps)
            stream.out.put_nowait(protocol.CLOSE_NORMAL)
            with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                await asyncio.wait_for(sender, timeout=2.0)
            sender.cancel()
            await close_connection(websocket)

    def _fail(self, stream: Stream, kind: str, message: str, close_code: int = protocol.CLOSE_CLIENT_ERROR) -> None:
        """End one stream with an Error its client can act on; the close code after it says
        whether the client caused it (the default) or the engine did."""
        self.metrics.errors.labels(kind).inc()
        message = message[:LOGGED_CHARS]
        logger.info("ending stream on slot %d (%s, close %d): %s", stream.slot, kind, close_code, message)
        stream.closed = True
        stream.out.put_nowait(protocol.error(message))
        stream.out.put_nowait(close_code)

    def _overflow(self, stream: Stream) -> None:
        """Too much of one stream's audio waits for the model: whose fault is it?"""
        waiting_s = stream.buffered_samples / protocol.SAMPLE_RATE
        ahead_s = stream.frames_received * stream.frame_size / protocol.SAMPLE_RATE - stream.age_s()
        # A client may run ahead of the clock by a replayed turn (a plugin failing over sends up
        # to 30 s at once), not by half the buffer: then it floods us. Otherwise it sends in real
        # time and the model is the one behind (an overloaded engine): retryable, so the plugin
        # moves the stream to a replica with room instead of the session losing its STT.
        if ahead_s > self.settings.max_buffered_s / 2:
            self._fail(stream, "overflow", f"audio {ahead_s:.0f} s ahead of real time: send in real time")
        else:
            self._fail(stream, "behind", f"engine overloaded: {waiting_s:.0f} s of audio waiting", protocol.CLOSE_FULL)

    async def _receive_loop(self, websocket: ServerConnection, stream: Stream) -> None:
        max_buffered = int(self.settings.max_buffered_s * protocol.SAMPLE_RATE)
        loop = asyncio.get_running_loop()
        # Only real audio moves the deadline: empty Audio, Init or Markers would hold a slot forever.
        deadline = loop.time() + self.settings.idle_timeout_s
        while not stream.closed:
            try:
                data = await asyncio.wait_for(websocket.recv(), timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                if stream.pending:  # the client is ahead of the model, not idle: wait for the model
                    deadline = loop.time() + self.settings.idle_timeout_s
                    continue
                self._fail(stream, "idle", f"no audio for {self.settings.idle_timeout_s:g} s")
                return
            except ConnectionClosed as exc:
                if exc.sent is not None and exc.sent.code == protocol.CLOSE_TOO_BIG:
                    self.metrics.errors.labels("too_big").inc()
                    logger.info("ending stream on slot %d: message over %d bytes (close 1009)",
                                stream.slot, self.settings.max_message_bytes)
                return
            try:
                if len(data) > self.settings.max_message_bytes:  # the library's max_size already bounds it
                    raise protocol.ProtocolError(f"message over {self.settings.max_message_bytes} bytes")
                message = protocol.parse_client_message(data)
                if isinstance(message, protocol.AudioIn):
                    if message.pcm.size == 0:
                        continue
                    deadline = loop.time() + self.settings.idle_timeout_s
                    stream.add_audio(message.pcm)
                    if stream.buffered_samples > max_buffered:
                        self._overflow(stream)
                        return
                    self._audio_ready.set()
                elif isinstance(message, protocol.MarkerIn):
                    if len(stream.markers) >= self.settings.max_pending_markers:
                        self._fail(stream, "markers", f"more than {self.settings.max_pending_markers} markers waiting")
                        return
                    # Back once every frame received so far went through the model and its delay.
                    due = stream.frames_received + self.engine.delay_steps
                    stream.markers.append((due, message.id, time.monotonic()))
                    self._emit_markers(stream)
            except protocol.ProtocolError as exc:
                self._fail(stream, "protocol", str(exc))
                return
            except Exception as exc:  # a bug on one stream's input ends that stream, never the server
                logger.exception("unexpected error on the input of slot %d", stream.slot)
                self._fail(stream, "internal", f"server error: {type(exc).__name__}", protocol.CLOSE_ENGINE_ERROR)
                return

    async def _send_loop(self, websocket: ServerConnection, stream: Stream) -> None:
        while True:
            message = await stream.out.get()
            if isinstance(message, int):
                # Ending the connection also ends the receive loop, which frees the slot.
                await close_connection(websocket, message)
                return
            try:
                await websocket.send(protocol.pack(message))
            except ConnectionClosed:
                stream.closed = True
                return

    def _emit_markers(self, stream: Stream) -> None:
        echoed = False
        while stream.markers and stream.steps >= stream.markers[0][0]:
            if stream.open_word_end is not None:
                stream.out.put_nowait(protocol.end_word(stream.open_word_end))
                stream.open_word_end = None
            _, marker_id, arrived = stream.markers.popleft()
            stream.out.put_nowait(protocol.marker(marker_id))
            self.metrics.marker_wait_seconds.observe(time.monotonic() - arrived)
            echoed = True
        if echoed:
            stream.words_since_marker = False
            if self.draining and not stream.markers and not stream.closed:
                self._hand_over(stream, "turn ended")

    def _hand_over_if_between_turns(self, stream: Stream) -> None:
        quiet_s = (stream.steps - stream.last_word_step) / self.engine.frame_rate
        if stream.closed or stream.markers:
            return
        if quiet_s >= (DRAIN_WORDLESS_S if stream.words_since_marker else DRAIN_QUIET_S):
            self._hand_over(stream, "between turns")

    def _hand_over(self, stream: Stream, why: str) -> None:
        """Draining: end the stream cleanly so its client goes on on another replica."""
        self.metrics.connections.labels("handed_over").inc()
        logger.info("draining: handing the stream on slot %d over (%s)", stream.slot, why)
        stream.closed = True
        stream.out.put_nowait(protocol.CLOSE_RESTART)

    # The model loop

    async def _model_loop(self) -> None:
        budget = 1.0 / self.engine.frame_rate
        batch_wait = self.settings.batch_wait_ms / 1000
        while not self._closing:
            self._audio_ready.clear()
            live = [stream for stream in self.streams.values() if not stream.closed]
            ready = [stream for stream in live if stream.pending]
            self.metrics.queue_depth.set(sum(len(stream.pending) for stream in live))
            if not ready:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._audio_ready.wait(), timeout=0.5)
                continue
            # Real-time clients deliver their frames out of phase; a step costs the whole batch
            # whoever is in it, so under load wait a little for the others' frames rather than step
            # for a few. While stepping each stream on its own would still leave the model thread
            # mostly idle, that wait would only hold up a member's words and end of turn (up to a
            # frame whenever another kiosk talks: the overload bench's half-to-full p95, Dec 5).
            # A backlog (prefix, flush, a client ahead of real time) is drained at once.
            backlog = any(len(stream.pending) > 1 for stream in ready)
            solo_load = self._step_s * len(live) / budget
            if len(ready) < len(live) and not backlog and solo_load > self.settings.batch_wait_above_load:
                remaining = min(stream.pending_since for stream in ready) + batch_wait - time.monotonic()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._audio_ready.wait(), timeout=remaining)
                    continue
            burst = self._take_burst(ready, backlog)
            streams = list(dict.fromkeys(stream for batch in burst for stream, _ in batch.values()))
            try:
                results = await self._run_in_model_thread(
                    self._step_burst, [{slot: frame for slot, (_, frame) in batch.items()} for batch in burst]
                )
            except Exception:
                # A failing step fails every stream in it, never the server.
                logger.exception("model step failed")
                for stream in streams:
                    self._fail(stream, "model", "model step failed", protocol.CLOSE_ENGINE_ERROR)
                continue
            # What the burst itself queues goes out at the client's pace; only what was waiting
            # before it says that a client does not read.
            waiting = [stream.out.qsize() for stream in streams]
            for batch, (outputs, stats) in zip(burst, results, strict=True):
                self.metrics.step_seconds.observe(stats.seconds)
                self._step_s = stats.seconds if not self._step_s else 0.9 * self._step_s + 0.1 * stats.seconds
                if stats.seconds > budget:
                    self.metrics.frames_over_budget.inc()
                self._deliver(batch, outputs)
            for stream, waited in zip(streams, waiting, strict=True):
                if stream.closed:
                    continue
                if waited > self.settings.max_pending_messages:
                    self._fail(stream, "slow_client", "client reads too slowly")
                elif self.draining:
                    self._hand_over_if_between_turns(stream)

    @staticmethod
    def _take_burst(ready: list[Stream], backlog: bool) -> list[dict[int, tuple[Stream, np.ndarray]]]:
        """The next steps' frames: one step of every ready stream's oldest frame, then, when some
        stream has a backlog (a flush's silence, the prefix), up to MAX_BURST_STEPS - 1 more steps of
        the backlogged streams, run in one call to the model thread. A member's end of turn is such a
        flush; each hand-off between the event loop and the model thread waits for a core when the
        host is busy, once per step (the overload bench's full-load end of turn, Dec 5)."""
        burst: list[dict[int, tuple[Stream, np.ndarray]]] = []
        stepping = ready
        while stepping and len(burst) < (MAX_BURST_STEPS if backlog else 1):
            burst.append({stream.slot: (stream, stream.pending.popleft()) for stream in stepping})
            stepping = [stream for stream in stepping if stream.pending]
        for stream in ready:
            if stream.pending:
                stream.pending_since = time.monotonic()
        return burst

    def _step_burst(self, burst: list[dict[int, np.ndarray]]) -> list[tuple[dict[int, SlotOutput], StepStats]]:
        """In the model thread: the burst's steps, in order."""
        return [self.engine.step(frames) for frames in burst]

    def _deliver(self, batch: dict[int, tuple[Stream, np.ndarray]], outputs: dict[int, SlotOutput]) -> None:
        """One step's words, pause probabilities and markers, to each stream's client."""
        for slot, output in outputs.items():
            stream = batch[slot][0]
            if stream.closed:
                continue
            stream.steps += 1
            for event in output.words:
                if isinstance(event, Word):
                    stream.out.put_nowait(protocol.word(event.text, event.start_time))
                    stream.open_word_end = event.end_time
                    stream.last_word_step = stream.steps
                    stream.words_since_marker = True
                elif isinstance(event, EndWord) and stream.open_word_end is not None:
                    # (none when a Marker already closed the word)
                    stream.out.put_nowait(protocol.end_word(event.stop_time))
                    stream.open_word_end = None
            stream.out.put_nowait(protocol.step(output.step, output.prs, stream.buffered_samples))
            self._emit_markers(stream)


async def close_connection(websocket: ServerConnection, code: int = 1000, reason: str = "") -> None:
    """Close, or drop the TCP connection when the client does not take the close within CLOSE_S.

    websockets waits for a full send buffer to drain without a deadline, so a client that never reads
    would keep its socket, and this task, for ever (CI, 2026-12-04: the stream had ended and freed its
    slot, and the connection was still open 35 s later)."""
    try:
        await asyncio.wait_for(websocket.close(code, reason), CLOSE_S)
    except (TimeoutError, ConnectionClosed):
        websocket.transport.abort()


def build_server(settings: EngineSettings) -> SttServer:
    """The one way to build a server from settings: load, warm up (blocking: call off the loop).
    `start()` it in the event loop that will serve it."""
    logger.info("loading %s (max_streams %d, torch threads %d)", settings.checkpoint, settings.max_streams,
                torch.get_num_threads())
    checkpoint = load_checkpoint(
        settings.checkpoint,
        settings.device,
        settings.dtype,
        audio_delay_s=settings.audio_delay_s,
        silence_prefix_s=settings.silence_prefix_s,
    )
    engine = SttEngine(
        checkpoint,
        settings.max_streams,
        temperature=settings.temperature,
        silence_prefix=settings.silence_prefix,
    )
    if not checkpoint.has_pause_heads:
        logger.warning("checkpoint has no end-of-speech heads: Step.prs is empty, use a VAD for end of turn")
    started = time.perf_counter()
    engine.warmup(settings.warmup_steps)
    logger.info("warmed up %d slots in %.2f s", settings.max_streams, time.perf_counter() - started)
    return SttServer(settings, engine)


async def run(settings: EngineSettings) -> None:
    """Load, warm up, then serve until cancelled."""
    torch.set_grad_enabled(False)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    server = await asyncio.to_thread(build_server, settings)
    freeze_startup_objects(logger)
    log_slow_collections(logger)
    await server.start()
    done = asyncio.Event()
    server.on_model_failure = done.set
    drain_task: asyncio.Task[bool] | None = None

    def on_sigterm() -> None:
        nonlocal drain_task
        if drain_task is None:
            drain_task = asyncio.create_task(server.drain(settings.drain_timeout_s))
            drain_task.add_done_callback(lambda _: done.set())
        else:  # a second SIGTERM: stop now, cutting what is still live
            logger.warning("second SIGTERM: stopping with %d live stream(s)", len(server.streams))
            done.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await done.wait()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await server.stop()
    if server.model_failed:
        raise SystemExit(1)


def main() -> None:
    settings = EngineSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_api_keys(settings, logger)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(settings))


if __name__ == "__main__":
    main()
