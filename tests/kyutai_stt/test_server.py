"""The engine server speaks Kyutai's protocol: a client written from the protocol description alone
(websockets + msgpack, as in Kyutai's own scripts) transcribes a WAV and gets its Marker back.
"""

from __future__ import annotations

import asyncio
import contextlib
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
import websockets
from kyutai_stt import protocol
from kyutai_stt.server import MAX_BURST_STEPS, Stream, SttServer
from kyutai_tiny.stt import TOKENIZER_NAME
from websockets.exceptions import InvalidStatus

from .conftest import MAX_STREAMS, espeak_french, server_url, speech, start_server
from .test_equivalence import reference_transcribe

FRAME = 1920


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True, use_single_float=True)


async def kyutai_client(url: str, audio: np.ndarray, marker_id: int = 42) -> list[dict[str, Any]]:
    """What Kyutai's stt_from_file_rust_server.py does: audio, silence, a Marker, silence until it returns."""
    received: list[dict[str, Any]] = []
    headers = {"kyutai-api-key": "any-key-an-open-server-ignores"}
    async with websockets.connect(f"{url}/api/asr-streaming", additional_headers=headers) as ws:

        async def send() -> None:
            for start in range(0, len(audio), FRAME):
                await ws.send(pack({"type": "Audio", "pcm": [float(x) for x in audio[start : start + FRAME]]}))
            await ws.send(pack({"type": "Marker", "id": marker_id}))
            for _ in range(40):  # the flush: silence until the marker has gone through the model
                await ws.send(pack({"type": "Audio", "pcm": [0.0] * FRAME}))
                await asyncio.sleep(0.005)

        sender = asyncio.create_task(send())
        async for raw in ws:
            message = msgpack.unpackb(raw, raw=False)
            received.append(message)
            if message["type"] == "Marker":
                break
        sender.cancel()
    return received


def words_from_tokens(tokens: list[int], tokenizer_path: Path) -> list[str]:
    """Words as the protocol defines them: pieces between padding (3) / end-of-word (0) tokens."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_path))
    words: list[str] = []
    current: list[int] = []
    for token in tokens:
        if token in (0, 3):
            if current and sp.decode(current).strip():
                words.append(sp.decode(current).strip())
            current = []
        elif token > 3:
            current.append(token)
    return words


def read_wav_24k(path: Path) -> np.ndarray:
    with wave.open(str(path)) as handle:
        rate = handle.getframerate()
        samples = np.frombuffer(handle.readframes(handle.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    positions = np.arange(0, len(samples), rate / 24000)
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)


async def test_a_kyutai_style_client_transcribes_a_wav_and_gets_its_marker(
    tiny_stt_dir: Path, tmp_path: Path
) -> None:
    samples, rate = espeak_french("Bonjour, je voudrais réserver un cours de yoga demain matin.", tmp_path)
    wav = tmp_path / "member.wav"
    with wave.open(str(wav), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.tobytes())
    audio = read_wav_24k(wav)
    audio = np.concatenate([audio, np.zeros(-len(audio) % FRAME, np.float32)])

    # One slot: batched CPU kernels may tip a nearest-centroid tie in Mimi (see test_equivalence),
    # with a batch of one the server must give exactly the reference loop's words.
    server = await start_server(tiny_stt_dir, max_streams=1)
    try:
        messages = await kyutai_client(server_url(server), audio, marker_id=42)
        registry = server.metrics.registry
        marker_waits = registry.get_sample_value("kyutai_stt_marker_wait_seconds_count")
        marker_wait_s = registry.get_sample_value("kyutai_stt_marker_wait_seconds_sum")
    finally:
        await server.stop()

    assert messages[0] == {"type": "Ready"}
    assert messages[-1] == {"type": "Marker", "id": 42}
    # ...and how long it waited for the model is what ops read when an end of turn feels slow
    assert marker_waits == 1 and marker_wait_s is not None and 0 < marker_wait_s < 30
    steps = [m for m in messages if m["type"] == "Step"]
    assert [m["step_idx"] for m in steps] == list(range(1, len(steps) + 1))
    assert all(len(m["prs"]) == 4 and all(0.0 <= p <= 1.0 for p in m["prs"]) for m in steps)
    # The marker comes back only after all the audio sent before it went through the model.
    assert len(steps) >= len(audio) // FRAME
    words = [m for m in messages if m["type"] == "Word"]
    assert words, "the tiny model transcribes speech into words"
    starts = [m["start_time"] for m in words]
    assert starts == sorted(starts)
    ends = [m["stop_time"] for m in messages if m["type"] == "EndWord"]
    assert ends == sorted(ends)

    # The same words as the plain moshi reference loop on this audio (+ the flush's silence).
    flush = np.zeros(FRAME * (len(steps) - len(audio) // FRAME), np.float32)
    tokens, _ = reference_transcribe(tiny_stt_dir, np.concatenate([audio, flush]))
    tokenizer = tiny_stt_dir / TOKENIZER_NAME
    assert [m["text"] for m in words] == words_from_tokens(tokens, tokenizer)[: len(words)]


async def test_auth_by_header_or_query_and_unknown_keys_refused(tiny_stt_dir: Path) -> None:
    """Streams and /metrics take the key; health stays open (load balancers and workers poll it)."""
    server = await start_server(tiny_stt_dir, max_streams=1, api_keys=["gym-secret"])
    try:
        url = f"{server_url(server)}/api/asr-streaming"
        async with websockets.connect(f"{url}?auth_id=gym-secret") as ws:
            assert msgpack.unpackb(await ws.recv()) == {"type": "Ready"}
        async with websockets.connect(url, additional_headers={"kyutai-api-key": "gym-secret"}) as ws:
            assert msgpack.unpackb(await ws.recv()) == {"type": "Ready"}
        for headers in ({"kyutai-api-key": "stolen"}, {}):
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(url, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 401
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{base}/api/health")).status_code == 200
            assert (await client.get(f"{base}/metrics")).status_code == 401
            assert (await client.get(f"{base}/metrics", params={"auth_id": "gym-secret"})).status_code == 200
    finally:
        await server.stop()


async def wait_for_streams(server: SttServer, count: int) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            health = (await client.get(f"http://127.0.0.1:{server.port}/api/health")).json()
            if health["streams_in_use"] == count:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} streams in use, health says {health}")


async def test_a_full_server_answers_an_error_at_once_and_a_freed_slot_is_reused(stt_server: SttServer) -> None:
    url = f"{server_url(stt_server)}/api/asr-streaming"
    await wait_for_streams(stt_server, 0)
    kiosks = [await websockets.connect(url) for _ in range(MAX_STREAMS)]
    for ws in kiosks:
        assert msgpack.unpackb(await ws.recv()) == {"type": "Ready"}

    async with websockets.connect(url) as extra:
        answer = msgpack.unpackb(await asyncio.wait_for(extra.recv(), timeout=1.0))
        await asyncio.wait_for(extra.wait_closed(), timeout=2.0)
    assert answer == {"type": "Error", "message": "no free channels"}
    assert extra.close_code == protocol.CLOSE_FULL

    # A member walks away mid-sentence: the kiosk closes, the slot comes back.
    await kiosks[0].send(pack({"type": "Audio", "pcm": speech(0.5).tolist()}))
    await kiosks[0].close()
    await wait_for_streams(stt_server, MAX_STREAMS - 1)
    async with websockets.connect(url) as newcomer:
        assert msgpack.unpackb(await newcomer.recv()) == {"type": "Ready"}
    for ws in kiosks[1:]:
        await ws.close()
    await wait_for_streams(stt_server, 0)


@pytest.mark.parametrize(
    ("bad_message", "expected"),
    [
        ({"type": "Audio", "pcm": [0.1, float("nan"), 0.2]}, "NaN"),
        ({"type": "Audio", "pcm": "not audio"}, "list of floats"),
        ({"type": "Audio", "pcm": [0.1, "x"]}, "list of numbers"),
        ({"type": "Marker", "id": "seven"}, "integer"),
        ({"type": "Shout"}, "unknown message type"),
        ({"pcm": [0.0]}, "string 'type'"),
    ],
)
async def test_bad_input_ends_that_stream_only(stt_server: SttServer, bad_message: Any, expected: str) -> None:
    url = f"{server_url(stt_server)}/api/asr-streaming"
    async with websockets.connect(url) as neighbour, websockets.connect(url) as faulty:
        assert msgpack.unpackb(await neighbour.recv())["type"] == "Ready"
        assert msgpack.unpackb(await faulty.recv())["type"] == "Ready"
        await faulty.send(pack({"type": "Audio", "pcm": []}))  # an empty frame is no error
        await faulty.send(pack(bad_message))
        error = msgpack.unpackb(await asyncio.wait_for(faulty.recv(), timeout=2.0))
        assert error["type"] == "Error" and expected in error["message"]
        await asyncio.wait_for(faulty.wait_closed(), timeout=2.0)
        assert faulty.close_code == protocol.CLOSE_CLIENT_ERROR  # the client's fault: not worth a retry

        await neighbour.send(pack({"type": "Audio", "pcm": speech(0.2).tolist()}))
        step = msgpack.unpackb(await asyncio.wait_for(neighbour.recv(), timeout=2.0))
        assert step["type"] == "Step"


async def test_a_text_frame_or_garbage_is_a_protocol_error(stt_server: SttServer) -> None:
    url = f"{server_url(stt_server)}/api/asr-streaming"
    for bad in ("hello", b"\xc1\xc1garbage"):
        async with websockets.connect(url) as ws:
            await ws.recv()
            await ws.send(bad)
            error = msgpack.unpackb(await asyncio.wait_for(ws.recv(), timeout=2.0))
            assert error["type"] == "Error"


async def test_health_and_prometheus_metrics(stt_server: SttServer) -> None:
    async with httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{stt_server.port}"
        health = (await client.get(f"{base}/api/health")).json()
        metrics = (await client.get(f"{base}/metrics")).text
        missing = await client.get(f"{base}/nowhere")
    assert health["status"] == "ok" and health["max_streams"] == MAX_STREAMS and health["pause_heads"] is True
    for name in (
        "kyutai_stt_streams_in_use",
        "kyutai_stt_step_seconds_bucket",
        "kyutai_stt_frames_over_budget_total",
        "kyutai_stt_queue_depth",
        "kyutai_stt_marker_wait_seconds_bucket",
        'kyutai_stt_connections_total{result="full"}',
    ):
        assert name in metrics
    assert missing.status_code == 404


async def talk_in_real_time(ws: websockets.ClientConnection, audio: np.ndarray, frames: int, timeout_s: float) -> None:
    """Send `frames` frames of `audio` at the pace of speech and wait for the model's Step on each."""
    steps = 0

    async def read_steps() -> None:
        nonlocal steps
        async for raw in ws:
            if msgpack.unpackb(raw)["type"] == "Step":
                steps += 1
                if steps == frames:
                    return

    reader = asyncio.create_task(read_steps())
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(frames):
        await ws.send(pack({"type": "Audio", "pcm": audio[i * FRAME : (i + 1) * FRAME].tolist()}))
        await asyncio.sleep(max(0.0, started + (i + 1) * 0.08 - loop.time()))
    await asyncio.wait_for(reader, timeout=timeout_s)


async def test_a_silent_or_unread_client_does_not_block_a_neighbour(stt_server: SttServer) -> None:
    """One kiosk connects and sends nothing, another floods audio and never reads its answers:
    the third, streaming in real time, gets a Step for every frame it sends, in time."""
    url = f"{server_url(stt_server)}/api/asr-streaming"
    await wait_for_streams(stt_server, 0)
    async with (
        websockets.connect(url) as silent,
        websockets.connect(url, close_timeout=0.5) as unread,
        websockets.connect(url) as member,
    ):
        for ws in (silent, unread, member):
            await ws.recv()
        for _ in range(20):
            await unread.send(pack({"type": "Audio", "pcm": speech(0.5).tolist()}))
        loop = asyncio.get_running_loop()
        started = loop.time()
        frames = 12
        await talk_in_real_time(member, speech(frames * 0.08, seed=4), frames, timeout_s=3.0)
        # Real time plus at most one frame of batching wait and model time per frame.
        assert loop.time() - started < frames * 0.08 + 1.5


async def two_kiosks_out_of_phase(server: SttServer, frames: int = 12) -> float:
    """Two members talk at once, their frames 40 ms apart: the model steps this took."""
    url = f"{server_url(server)}/api/asr-streaming"

    async def member(offset_s: float, seed: int) -> None:
        async with websockets.connect(url) as ws:
            await ws.recv()
            await asyncio.sleep(offset_s)
            await talk_in_real_time(ws, speech(frames * 0.08, seed=seed), frames, timeout_s=5.0)

    def stepped() -> float:
        return server.metrics.registry.get_sample_value("kyutai_stt_step_seconds_count") or 0.0

    before = stepped()
    await asyncio.gather(member(0.0, 5), member(0.04, 6))
    return stepped() - before


async def test_a_quiet_engine_steps_each_members_frame_at_once_and_a_busy_one_batches_them(
    tiny_stt_dir: Path,
) -> None:
    """Two kiosks talk at once, out of phase. On a quiet engine neither member's frame waits for
    the other's (a step each: their words and end of turn are not held up by up to a frame); on an
    engine where one step per stream would be load, the frames share one step per frame period."""
    quiet = await start_server(tiny_stt_dir, max_streams=2)
    try:
        quiet_steps = await two_kiosks_out_of_phase(quiet)
    finally:
        await quiet.stop()
    busy = await start_server(tiny_stt_dir, max_streams=2, batch_wait_above_load=0.0)
    try:
        busy_steps = await two_kiosks_out_of_phase(busy)
    finally:
        await busy.stop()
    assert quiet_steps >= 1.6 * 12, f"{quiet_steps} steps for 2 x 12 frames: the quiet engine waited to batch"
    assert busy_steps <= 1.4 * 12, f"{busy_steps} steps for 2 x 12 frames: the busy engine did not batch"


async def test_the_checkpoints_silence_prefix_is_fed_by_the_server(tmp_path: Path) -> None:
    """A checkpoint asking for a silence prefix: the server feeds it to each new stream, so a
    client sends only its audio and gets the words of the reference loop run on prefix + audio,
    with word times on the client's own audio."""
    from kyutai_tiny.stt import write_tiny_stt

    directory = write_tiny_stt(tmp_path / "prefixed", audio_silence_prefix_seconds=0.24).parent
    audio = np.concatenate([speech(1.6, seed=40), np.zeros(FRAME * 4, np.float32)])
    audio = audio[: len(audio) // FRAME * FRAME]
    server = await start_server(directory, max_streams=1)
    try:
        assert server.engine.prefix_frames == 3  # 0.24 s
        messages = await kyutai_client(server_url(server), audio, marker_id=1)
    finally:
        await server.stop()
    steps = [m for m in messages if m["type"] == "Step"]
    flush = np.zeros(FRAME * (len(steps) - 3 - len(audio) // FRAME), np.float32)
    tokens, _ = reference_transcribe(directory, np.concatenate([np.zeros(3 * FRAME, np.float32), audio, flush]))
    words = [m["text"] for m in messages if m["type"] == "Word"]
    assert words and words == words_from_tokens(tokens, directory / TOKENIZER_NAME)[: len(words)]
    assert all(m["start_time"] <= len(audio) / 24000 for m in messages if m["type"] == "Word")


async def test_a_failing_model_step_ends_only_the_streams_in_it(tiny_stt_dir: Path) -> None:
    """A step that raises (a GPU fault, say): its streams get an Error and are closed, their slots
    come back, and the server keeps serving new streams."""
    server = await start_server(tiny_stt_dir, max_streams=2)
    real_step = server.engine.step
    failures = 1

    def flaky_step(frames: dict[int, np.ndarray]) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_step(frames)

    server.engine.step = flaky_step  # type: ignore[method-assign]
    url = f"{server_url(server)}/api/asr-streaming"
    try:
        async with websockets.connect(url) as unlucky:
            await unlucky.recv()
            await unlucky.send(pack({"type": "Audio", "pcm": speech(0.08).tolist()}))
            error = msgpack.unpackb(await asyncio.wait_for(unlucky.recv(), timeout=3))
            assert error == {"type": "Error", "message": "model step failed"}
            await asyncio.wait_for(unlucky.wait_closed(), timeout=3)
            assert unlucky.close_code == protocol.CLOSE_ENGINE_ERROR  # the engine's fault: worth a retry
        await wait_for_streams(server, 0)
        async with websockets.connect(url) as next_member:
            await next_member.recv()
            await next_member.send(pack({"type": "Audio", "pcm": speech(0.08).tolist()}))
            assert msgpack.unpackb(await asyncio.wait_for(next_member.recv(), timeout=3))["type"] == "Step"
    finally:
        await server.stop()


async def test_a_client_flooding_audio_faster_than_real_time_is_ended_as_its_own_fault(tiny_stt_dir: Path) -> None:
    """8 s of audio in one go against a 2 s buffer: the client is far ahead of the clock (close
    1008, not worth a retry). An engine that falls behind a client sending in real time answers
    1013 instead, so the plugin moves the stream to a replica with room."""
    server = await start_server(tiny_stt_dir, max_streams=1, max_buffered_s=2.0)
    try:
        async with websockets.connect(f"{server_url(server)}/api/asr-streaming") as flood:
            assert msgpack.unpackb(await flood.recv())["type"] == "Ready"
            audio = speech(8.0)
            with contextlib.suppress(websockets.ConnectionClosed):
                for start in range(0, audio.size, 24000):
                    await flood.send(pack({"type": "Audio", "pcm": audio[start : start + 24000].tolist()}))
            messages = [msgpack.unpackb(m) async for m in _until_closed(flood)]
        errors = [m for m in messages if m["type"] == "Error"]
        assert errors and "ahead of real time" in errors[0]["message"], messages
        assert flood.close_code == protocol.CLOSE_CLIENT_ERROR
    finally:
        await server.stop()


async def _until_closed(ws: websockets.ClientConnection) -> AsyncIterator[str | bytes]:
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            yield await asyncio.wait_for(ws.recv(), timeout=5.0)


def test_a_flush_goes_to_the_model_in_one_burst_and_a_talking_member_joins_its_first_step() -> None:
    """A member's end of turn sends 8 frames of silence at once: they are stepped in one hand-off to
    the model thread, not 8 (each waits for a core on a busy host); another kiosk talking in real time
    has its one frame in the burst's first step, and is never held more than a burst behind."""
    frame = np.zeros(protocol.FRAME_SAMPLES, np.float32)
    ending, talking = Stream(slot=0, frame_size=frame.size), Stream(slot=1, frame_size=frame.size)
    ending.add_audio(np.zeros(10 * frame.size, np.float32))  # more than a burst: the rest waits its turn
    talking.add_audio(frame)

    burst = SttServer._take_burst([ending, talking], backlog=True)
    assert [sorted(step) for step in burst] == [[0, 1]] + [[0]] * (MAX_BURST_STEPS - 1)
    assert len(ending.pending) == 10 - MAX_BURST_STEPS and not talking.pending

    talking.add_audio(frame)  # with no backlog anywhere, one step at a time as before
    assert [sorted(step) for step in SttServer._take_burst([talking], backlog=False)] == [[1]]
