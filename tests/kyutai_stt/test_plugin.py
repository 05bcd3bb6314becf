"""The LiveKit STT plugin against the engine server: what an agent session sees from a member's turn."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import websockets
import websockets.asyncio.server
from kyutai_stt import STT, EndOfTurnOptions
from kyutai_stt.server import SttServer
from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError, APITimeoutError
from livekit.agents.stt import SpeechEvent, SpeechEventType

from jarvis_local.stack import free_port

from ..kyutai_common.engine_process import engine_process
from .conftest import espeak_french, server_url, speech, start_server
from .test_server import wait_for_streams

FAST_FAIL = APIConnectOptions(max_retry=0, retry_interval=0.1, timeout=3.0)
ONE_RETRY = APIConnectOptions(max_retry=1, retry_interval=0.2, timeout=3.0)


def to_frames(audio: np.ndarray, rate: int, frame_samples: int) -> list[rtc.AudioFrame]:
    """Float audio -> int16 LiveKit frames of an odd size, as a room track may deliver them."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    return [
        rtc.AudioFrame(pcm[i : i + frame_samples].tobytes(), rate, 1, len(pcm[i : i + frame_samples]))
        for i in range(0, len(pcm), frame_samples)
    ]


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    positions = np.arange(0, len(audio), 24000 / rate)
    return np.interp(positions, np.arange(len(audio)), audio).astype(np.float32)


async def collect(
    stream: AsyncIterator[SpeechEvent], within_s: float = 20.0, until: SpeechEventType | None = None
) -> list[SpeechEvent]:
    """The stream's events until it ends (or, with `until`, up to that event type)."""
    events: list[SpeechEvent] = []

    async def run() -> None:
        async for event in stream:
            events.append(event)
            if event.type == until:
                return

    await asyncio.wait_for(run(), timeout=within_s)
    return events


def assert_turns_well_formed(events: list[SpeechEvent]) -> None:
    """START_OF_SPEECH, INTERIM*, FINAL, END_OF_SPEECH per turn; word times never go back."""
    speaking = False
    last_word_start = -1.0
    for event in events:
        if event.type == SpeechEventType.START_OF_SPEECH:
            assert not speaking
            speaking = True
        elif event.type in (SpeechEventType.INTERIM_TRANSCRIPT, SpeechEventType.FINAL_TRANSCRIPT):
            assert speaking, "transcripts only inside a turn"
            data = event.alternatives[0]
            assert data.text and data.words
            starts = [float(w.start_time) for w in data.words]  # type: ignore[arg-type]
            assert starts == sorted(starts)
            assert all(float(w.end_time) >= float(w.start_time) for w in data.words)  # type: ignore[arg-type]
            assert data.start_time == starts[0] and data.end_time >= data.start_time
            if event.type == SpeechEventType.FINAL_TRANSCRIPT:
                assert starts[0] >= last_word_start
                last_word_start = starts[-1]
        elif event.type == SpeechEventType.END_OF_SPEECH:
            assert speaking
            speaking = False
    assert not speaking, "every turn ends"


async def test_a_members_french_sentence_through_the_plugin(stt_server: SttServer, tmp_path: Path) -> None:
    samples, rate = espeak_french("Bonjour, je voudrais réserver un cours de yoga demain matin.", tmp_path)
    audio = np.concatenate([samples.astype(np.float32) / 32768, np.zeros(rate * 2, np.float32)])
    plugin = STT(url=server_url(stt_server))
    stream = plugin.stream(conn_options=FAST_FAIL)
    stream.start_time_offset = 30.0  # the stream began 30 s into the session
    for frame in to_frames(audio, rate, 317):  # espeak's 22.05 kHz, odd frame size
        stream.push_frame(frame)
    stream.end_input()
    events = await collect(stream)

    kinds = [e.type for e in events]
    assert kinds[0] == SpeechEventType.START_OF_SPEECH
    assert SpeechEventType.INTERIM_TRANSCRIPT in kinds and SpeechEventType.FINAL_TRANSCRIPT in kinds
    assert_turns_well_formed(events)
    finals = [e for e in events if e.type == SpeechEventType.FINAL_TRANSCRIPT]
    words = [w for e in finals for w in e.alternatives[0].words or []]
    assert all(30.0 <= float(w.start_time) <= 30.0 + len(audio) / rate for w in words)  # type: ignore[arg-type]
    # (the framework adds the time spent connecting to the offset)
    assert all(w.start_time_offset == pytest.approx(30.0, abs=0.5) for w in words)
    assert all(e.alternatives[0].language == "fr" for e in finals)
    usage = sum(e.recognition_usage.audio_duration for e in events if e.recognition_usage is not None)
    assert usage == pytest.approx(len(audio) / rate, abs=0.05)
    await stream.aclose()


@pytest.mark.parametrize("rate", [16000, 24000, 48000])
async def test_room_audio_at_16_24_48_khz_is_accepted(stt_server: SttServer, rate: int) -> None:
    audio = np.concatenate([resample(speech(1.5, seed=rate), rate), np.zeros(rate, np.float32)])
    stream = STT(url=server_url(stt_server)).stream(conn_options=FAST_FAIL)
    stream.push_frame(rtc.AudioFrame(b"", rate, 1, 0))  # an empty frame is ignored
    for frame in to_frames(audio, rate, rate // 100 + 3):
        stream.push_frame(frame)
    stream.end_input()
    events = await collect(stream)
    assert any(e.type == SpeechEventType.FINAL_TRANSCRIPT for e in events)
    assert_turns_well_formed(events)


async def test_the_pause_head_ends_the_turn_while_the_kiosk_keeps_streaming(stt_server: SttServer) -> None:
    """The member stops talking; the mic keeps sending silence; no end_input: the pause head
    alone must produce FINAL + END_OF_SPEECH, and the pause probability is exposed."""
    stream = STT(url=server_url(stt_server)).stream(conn_options=FAST_FAIL)
    audio = np.concatenate([speech(1.5, seed=5), np.zeros(24000 * 3, np.float32)])
    events: list[SpeechEvent] = []
    for frame in to_frames(audio, 24000, 480):
        stream.push_frame(frame)

    events += await collect(stream, 20, until=SpeechEventType.END_OF_SPEECH)
    kinds = [e.type for e in events]
    assert kinds.index(SpeechEventType.FINAL_TRANSCRIPT) == len(kinds) - 2
    assert stream.pause_probability == 0.0  # reset for the next turn
    interim = [e for e in events if e.type == SpeechEventType.INTERIM_TRANSCRIPT]
    assert all("pause_probability" in (e.alternatives[0].metadata or {}) for e in interim)
    await stream.aclose()


async def test_one_shot_recognize(stt_server: SttServer) -> None:
    audio = np.concatenate([speech(1.2, seed=8), np.zeros(12000, np.float32)])
    frame = to_frames(audio, 24000, len(audio))[0]
    event = await STT(url=server_url(stt_server)).recognize(frame, conn_options=FAST_FAIL)
    assert event.type == SpeechEventType.FINAL_TRANSCRIPT
    assert event.alternatives[0].text


async def test_a_stream_closed_mid_sentence_frees_its_slot(stt_server: SttServer) -> None:
    await wait_for_streams(stt_server, 0)
    stream = STT(url=server_url(stt_server)).stream(conn_options=FAST_FAIL)
    for frame in to_frames(speech(3.0, seed=9), 24000, 960):
        stream.push_frame(frame)

    async def first_word() -> None:
        async for event in stream:
            if event.type == SpeechEventType.INTERIM_TRANSCRIPT:
                return

    await asyncio.wait_for(first_word(), timeout=20)
    await wait_for_streams(stt_server, 1)
    await stream.aclose()  # the member walked away mid-sentence
    await wait_for_streams(stt_server, 0)


async def test_a_full_server_is_a_clear_error(tiny_stt_dir: Path) -> None:
    server = await start_server(tiny_stt_dir, max_streams=1)
    try:
        async with websockets.connect(f"{server_url(server)}/api/asr-streaming") as holder:
            await holder.recv()
            stream = STT(url=server_url(server)).stream(conn_options=FAST_FAIL)
            stream.push_frame(to_frames(speech(0.2), 24000, 4800)[0])
            with pytest.raises(APIStatusError) as failure:
                await collect(stream, within_s=10)
            assert failure.value.status_code == 503 and "full" in str(failure.value)
    finally:
        await server.stop()


async def test_a_wrong_api_key_or_unreachable_server_is_a_clear_error(tiny_stt_dir: Path) -> None:
    keyed = await start_server(tiny_stt_dir, max_streams=1, api_keys=["gym-secret"])
    try:
        stream = STT(url=server_url(keyed), api_key="wrong").stream(conn_options=FAST_FAIL)
        with pytest.raises(APIStatusError) as refused:
            await collect(stream, within_s=10)
        assert refused.value.status_code == 401 and not refused.value.retryable
    finally:
        await keyed.stop()

    stream = STT(url=f"ws://127.0.0.1:{free_port()}").stream(conn_options=ONE_RETRY)
    with pytest.raises(APIConnectionError):
        await collect(stream, within_s=10)
    with pytest.raises(ValueError):
        STT(url="http://127.0.0.1:1")


async def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # accepts TCP, never completes the WebSocket handshake

    tcp = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        stream = STT(url=f"ws://127.0.0.1:{port}").stream(
            conn_options=APIConnectOptions(max_retry=0, retry_interval=0.1, timeout=0.5)
        )
        with pytest.raises(APITimeoutError):
            await collect(stream, within_s=10)
    finally:
        tcp.close()


async def test_a_killed_server_is_a_clear_error_and_no_hung_session(tiny_stt_dir: Path, tmp_path: Path) -> None:
    env = {
        "KYUTAI_STT_CHECKPOINT": str(tiny_stt_dir),
        "KYUTAI_STT_MAX_STREAMS": "2",
        "KYUTAI_STT_DEVICE": "cpu",
        "KYUTAI_STT_API_KEYS": "[]",  # any client (the plugin below has no key)
    }
    async with engine_process(tmp_path, "stt", env) as engine:
        stream = STT(url=engine.ws).stream(conn_options=ONE_RETRY)
        for frame in to_frames(speech(2.0, seed=3), 24000, 1920):
            stream.push_frame(frame)
        killed_mid_sentence = False

        async def run() -> None:
            nonlocal killed_mid_sentence
            async for event in stream:
                if event.type == SpeechEventType.INTERIM_TRANSCRIPT and not killed_mid_sentence:
                    engine.process.send_signal(signal.SIGKILL)  # the GPU box dies mid-sentence
                    killed_mid_sentence = True

        (outcome,) = await asyncio.gather(asyncio.wait_for(run(), timeout=15), return_exceptions=True)

        # First the kill itself: the error below must come from it, not from a server that
        # failed on its own (or never transcribed) before it.
        assert killed_mid_sentence, f"the stream ended before the server was killed: {outcome!r}"
        assert await engine.wait(5) == -signal.SIGKILL
        with pytest.raises(OSError):  # nothing listens any more: the retry had no server to reach
            _, writer = await asyncio.open_connection("127.0.0.1", engine.port)
            writer.close()
        # Then what the agent sees: a connection error, not a hang (wait_for) nor a clean end
        assert isinstance(outcome, APIConnectionError), f"expected APIConnectionError, got {outcome!r}"


async def test_a_checkpoint_without_heads_still_ends_turns(tiny_stt_no_heads_dir: Path) -> None:
    server = await start_server(tiny_stt_no_heads_dir, max_streams=1)
    try:
        stream = STT(url=server_url(server), end_of_turn=EndOfTurnOptions(no_heads_silence_s=0.8)).stream(
            conn_options=FAST_FAIL
        )
        audio = np.concatenate([speech(1.5, seed=6), np.zeros(24000 * 3, np.float32)])
        for frame in to_frames(audio, 24000, 1920):
            stream.push_frame(frame)
        events: list[SpeechEvent] = []

        events += await collect(stream, 20, until=SpeechEventType.END_OF_SPEECH)
        assert SpeechEventType.FINAL_TRANSCRIPT in [e.type for e in events]
        assert stream.pause_probability == 0.0
        await stream.aclose()
    finally:
        await server.stop()


async def test_against_a_server_that_sends_no_steps_like_moshi_server_without_heads() -> None:
    """moshi-server sends `Step` only for checkpoints with heads. A stand-in that speaks its
    protocol that way: words, markers, no steps. The turn still ends, from the audio sent."""
    frames_seen = 0
    markers: list[tuple[int, int]] = []

    async def moshi_server_like(ws: websockets.asyncio.server.ServerConnection) -> None:
        nonlocal frames_seen
        await ws.send(msgpack.packb({"type": "Ready"}))
        pending = 0
        async for raw in ws:
            message = msgpack.unpackb(raw)
            if message["type"] == "Marker":
                markers.append((frames_seen + pending // 1920 + 7, message["id"]))
                continue
            pending += len(message["pcm"])
            while pending >= 1920:
                pending -= 1920
                frames_seen += 1
                if frames_seen in (4, 7):
                    await ws.send(msgpack.packb({"type": "Word", "text": "bonjour", "start_time": frames_seen * 0.08}))
                if frames_seen == 8:
                    await ws.send(msgpack.packb({"type": "EndWord", "stop_time": 0.64}))
                while markers and markers[0][0] <= frames_seen:
                    await ws.send(msgpack.packb({"type": "Marker", "id": markers.pop(0)[1]}))

    async with websockets.asyncio.server.serve(moshi_server_like, "127.0.0.1", 0) as fake:
        port = fake.sockets[0].getsockname()[1]
        stream = STT(url=f"ws://127.0.0.1:{port}", end_of_turn=EndOfTurnOptions(no_heads_silence_s=0.5)).stream(
            conn_options=FAST_FAIL
        )
        events: list[SpeechEvent] = []

        async def push() -> None:
            for frame in to_frames(np.zeros(24000 * 3, np.float32), 24000, 1920):
                stream.push_frame(frame)
                await asyncio.sleep(0.01)

        pusher = asyncio.create_task(push())

        events += await collect(stream, 10, until=SpeechEventType.END_OF_SPEECH)
        pusher.cancel()
        await stream.aclose()
    kinds = [e.type for e in events]
    assert kinds[0] == SpeechEventType.START_OF_SPEECH and kinds[-2:] == [
        SpeechEventType.FINAL_TRANSCRIPT,
        SpeechEventType.END_OF_SPEECH,
    ]
    assert events[-2].alternatives[0].text == "bonjour bonjour"


async def test_the_kiosks_20_ms_frames_reach_the_engine_as_whole_model_frames() -> None:
    """A room delivers 20 ms frames; the engine steps on 80 ms. The plugin sends whole model
    frames (a quarter of the messages, nothing later for the model), and the member's last
    words before a flush go out ahead of its Marker, not held back."""
    received: list[tuple[str, int]] = []

    async def engine_like(ws: websockets.asyncio.server.ServerConnection) -> None:
        await ws.send(msgpack.packb({"type": "Ready"}))
        async for raw in ws:
            message = msgpack.unpackb(raw)
            received.append((message["type"], len(message.get("pcm", ()))))

    async with websockets.asyncio.server.serve(engine_like, "127.0.0.1", 0) as fake:
        port = fake.sockets[0].getsockname()[1]
        stream = STT(url=f"ws://127.0.0.1:{port}").stream(conn_options=FAST_FAIL)
        for frame in to_frames(np.full(4800, 0.1, np.float32), 24000, 480):  # 200 ms of the member
            stream.push_frame(frame)
        stream.flush()
        for _ in range(100):
            if ("Marker", 0) in received:
                break
            await asyncio.sleep(0.05)
        await stream.aclose()
    marker = received.index(("Marker", 0))
    assert received[:marker] == [("Audio", 1920), ("Audio", 1920), ("Audio", 960)]
    assert received[marker + 1][0] == "Audio"  # the flush's silence, carrying the Marker through


async def test_the_stream_reconnects_when_the_engine_restarts(tiny_stt_dir: Path) -> None:
    """The engine server is restarted (a deploy) while a member talks: the stream reconnects and
    transcribes what follows; nothing is raised to the agent."""
    port = free_port()
    server = await start_server(tiny_stt_dir, max_streams=1, port=port)
    stream = STT(url=f"ws://127.0.0.1:{port}").stream(
        conn_options=APIConnectOptions(max_retry=3, retry_interval=0.3, timeout=3.0)
    )
    errors: list[object] = []
    stream._stt.on("error", errors.append)
    events: list[SpeechEvent] = []

    async def consume() -> None:
        async for event in stream:
            events.append(event)

    async def talk() -> None:
        # The member's microphone, in real time. A word comes out only after the model's text
        # delay (0.5 s of later audio): a second of speech pushed then nothing more never brings
        # the first one, so the member talks on until it does and the restart cuts a live turn.
        for frame in to_frames(speech(6.0, seed=30), 24000, 1920):
            stream.push_frame(frame)
            await asyncio.sleep(0.08)

    consumer = asyncio.create_task(consume())
    talking = asyncio.create_task(talk())
    for _ in range(300):
        if any(e.type == SpeechEventType.INTERIM_TRANSCRIPT for e in events) or talking.done():
            break
        await asyncio.sleep(0.05)
    talking.cancel()
    await asyncio.gather(talking, return_exceptions=True)
    assert any(e.type == SpeechEventType.INTERIM_TRANSCRIPT for e in events), "no word before the restart"
    await server.stop()
    server = await start_server(tiny_stt_dir, max_streams=1, port=port)
    try:
        for frame in to_frames(np.concatenate([speech(1.5, seed=31), np.zeros(24000, np.float32)]), 24000, 1920):
            stream.push_frame(frame)
        stream.end_input()
        await asyncio.wait_for(consumer, timeout=20)
    finally:
        await server.stop()
    assert errors and all(getattr(e, "recoverable", False) for e in errors), "the lost connection was retried"
    assert len({e.request_id for e in events if e.request_id}) == 2, "two connections"
    assert any(e.type == SpeechEventType.FINAL_TRANSCRIPT for e in events)
    assert_turns_well_formed(events)  # the turn cut by the restart was closed too
