"""The LiveKit TTS plugin against our engine server: what an agent session sees."""

from __future__ import annotations

import asyncio
import time

import msgpack
import numpy as np
import pytest
import websockets
from kyutai_tiny.tts import DEFAULT_VOICE, OTHER_VOICE, TinyTTS
from kyutai_tts import TTS
from kyutai_tts.settings import PluginSettings
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError, APITimeoutError
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT

from jarvis_local.stack import free_port

from .conftest import API_KEY, FRENCH_ANSWER, reference_generate, until, wait_idle

NO_RETRY = APIConnectOptions(max_retry=0, timeout=2.0)
# An LLM's deltas cut words anywhere.
LLM_DELTAS = ["Le co", "urs de RPM est à 18", "h45, 12", ",50 € ", "la séance, ", "3x12 reps à 60 kg. **Super** 💪"]


def plugin(base: str, **kwargs: object) -> TTS:
    settings = PluginSettings(url=base, api_key=API_KEY, voice=DEFAULT_VOICE)
    return TTS(settings=settings, **kwargs)  # type: ignore[arg-type]


async def test_the_llms_words_are_spoken_as_they_stream_with_timed_transcripts(server) -> None:
    base, service = server
    stream = plugin(base, seed=3).stream(conn_options=NO_RETRY)
    events = []
    first_event_at: list[float] = []

    async def consume() -> None:
        async for event in stream:
            if not first_event_at:
                first_event_at.append(time.monotonic())
            events.append(event)

    consumer = asyncio.create_task(consume())
    for delta in LLM_DELTAS[:4]:
        stream.push_text(delta)
        await asyncio.sleep(0.01)
    await until(lambda: bool(first_event_at), timeout_s=30)
    assert first_event_at, "no audio while the LLM was still writing"
    for delta in LLM_DELTAS[4:]:  # the end of the answer only arrives now
        stream.push_text(delta)
    stream.end_input()
    await asyncio.wait_for(consumer, 60)
    await stream.aclose()

    assert stream.first_audio_received_at is not None
    assert first_event_at[0] - stream.first_audio_received_at < 0.08  # within one frame
    assert len({event.request_id for event in events}) == 1 and events[0].segment_id
    assert events[-1].is_final and not any(event.is_final for event in events[:-1])
    frames = [event.frame for event in events]
    assert all(frame.sample_rate == 24_000 and frame.num_channels == 1 for frame in frames)
    assert sum(frame.samples_per_channel for frame in frames) / 24_000 > 2.0
    timed = [word for frame in frames for word in frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])]
    spoken = "".join(timed).split()
    assert (
        spoken
        == (
            "Le cours de RPM est à dix-huit heures quarante-cinq, douze euros cinquante la séance, "
            "trois fois douze reps à soixante kilos. Super"
        ).split()
    )
    assert all(word.start_time < word.end_time for word in timed)
    await wait_idle(service)


async def test_synthesize_with_a_local_voice_file_gives_moshis_reference_audio(server, tiny_tts: TinyTTS) -> None:
    base, service = server
    voice_file = tiny_tts.voice_path(OTHER_VOICE)
    tts = plugin(base, voice=str(voice_file), seed=321, temperature=0.6, normalize=False)
    frame = await tts.synthesize(FRENCH_ANSWER, conn_options=NO_RETRY).collect()
    _, reference, _ = reference_generate(tiny_tts, FRENCH_ANSWER, voice=voice_file, seed=321, temperature=0.6)
    samples = np.frombuffer(bytes(frame.data), dtype=np.int16).astype(np.float32) / 32767.0
    assert np.abs(samples[: len(reference)] - reference).max() < 2e-4  # int16 quantisation
    # LiveKit ends a segment with its 10 ms "final" marker: silence, nothing else added.
    tail = samples[len(reference) :]
    assert len(tail) <= 240 and not tail.any()
    await wait_idle(service)


async def test_an_interruption_closes_the_stream_and_frees_the_engine_at_once(server) -> None:
    base, service = server
    stream = plugin(base).stream(conn_options=NO_RETRY)
    stream.push_text(FRENCH_ANSWER + " " + FRENCH_ANSWER + " ")
    first = await asyncio.wait_for(stream.__anext__(), 30)
    assert first.frame.samples_per_channel > 0
    assert service.engine.streams_in_use == 1
    started = time.monotonic()
    await stream.aclose()  # barge-in: the member talks over the agent
    await until(lambda: service.engine.streams_in_use == 0, timeout_s=2)
    assert service.engine.streams_in_use == 0
    assert time.monotonic() - started < 0.5


async def test_a_per_gym_voice_comes_from_settings() -> None:
    settings = PluginSettings(url="ws://engine:8089", gym_voices={"gym-lyon": "cml-tts/fr/1591_1028_000108-0004.wav"})
    lyon = TTS.for_gym("gym-lyon", settings=settings)
    other = TTS.for_gym("gym-bordeaux", settings=settings)
    assert "voice=cml-tts%2Ffr%2F1591_1028_000108-0004.wav" in lyon._stream_request()[0]
    assert "voice=unmute-prod-website%2Ffabieng-enhanced-v2.wav" in other._stream_request()[0]


async def test_a_server_that_is_gone_is_a_connection_error() -> None:
    stream = plugin(f"ws://127.0.0.1:{free_port()}").stream(conn_options=NO_RETRY)
    stream.push_text("Bonjour ")
    stream.end_input()
    with pytest.raises(APIConnectionError, match="unreachable"):
        async for _ in stream:
            pass
    await stream.aclose()


async def test_a_wrong_key_is_a_status_error(server) -> None:
    base, _ = server
    stream = TTS(settings=PluginSettings(url=base, api_key="wrong", voice=DEFAULT_VOICE)).stream(conn_options=NO_RETRY)
    stream.push_text("Bonjour ")
    stream.end_input()
    with pytest.raises(APIStatusError) as refused:
        async for _ in stream:
            pass
    assert refused.value.status_code == 403 and not refused.value.retryable
    await stream.aclose()


async def test_a_full_engine_is_a_retryable_503(server) -> None:
    base, service = server
    url = f"{base}/api/tts_streaming?format=PcmMessagePack"
    holders = [await websockets.connect(url, additional_headers={"kyutai-api-key": API_KEY}) for _ in range(2)]
    for ws in holders:
        assert msgpack.unpackb(await ws.recv())["type"] == "Ready"
    stream = plugin(base).stream(conn_options=NO_RETRY)
    stream.push_text("Bonjour ")
    stream.end_input()
    with pytest.raises(APIStatusError) as full:
        async for _ in stream:
            pass
    assert full.value.status_code == 503 and full.value.retryable
    await stream.aclose()
    for ws in holders:
        await ws.close()
    await wait_idle(service)


async def test_a_silent_server_is_a_timeout() -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    stream = plugin(f"ws://127.0.0.1:{port}").stream(conn_options=APIConnectOptions(max_retry=0, timeout=0.3))
    stream.push_text("Bonjour ")
    stream.end_input()
    started = time.monotonic()
    with pytest.raises(APITimeoutError):
        async for _ in stream:
            pass
    assert time.monotonic() - started < 2.0
    await stream.aclose()
    silent.close()
