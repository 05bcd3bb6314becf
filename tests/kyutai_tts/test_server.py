"""The engine server over Kyutai's moshi-server protocol, seen by clients that are not our plugin."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import msgpack
import numpy as np
import pytest
import websockets
from kyutai_tiny.tts import DEFAULT_VOICE, OTHER_VOICE, TinyTTS
from kyutai_tts import protocol
from kyutai_tts.engine import load_voice_file
from websockets.asyncio.client import ClientConnection

from ..kyutai_common.engine_process import engine_process
from .conftest import API_KEY, FRENCH_ANSWER, reference_generate, tiny_engine_env, until, wait_idle


def tts_url(base: str, **query: str) -> str:
    return f"{base}/api/tts_streaming?{urlencode({'format': 'PcmMessagePack', **query})}"


async def test_a_kyutai_style_client_gets_french_audio_and_word_timestamps(server) -> None:
    """A client written from the protocol description only (msgpack maps with a `type`)."""
    base, service = server
    url = tts_url(base, voice=DEFAULT_VOICE)
    async with websockets.connect(url, additional_headers={"kyutai-api-key": API_KEY}) as ws:
        for word in FRENCH_ANSWER.split():
            await ws.send(msgpack.packb({"type": "Text", "text": word}))
        await ws.send(msgpack.packb({"type": "Eos"}))
        kinds, pcm, words = [], [], []
        async for raw in ws:  # the server closes the socket once the audio is complete
            message = msgpack.unpackb(raw)
            kinds.append(message["type"])
            if message["type"] == "Audio":
                pcm.extend(message["pcm"])
            elif message["type"] == "Text":
                words.append((message["text"], message["start_s"], message["stop_s"]))
    assert kinds[0] == "Ready" and "Error" not in kinds
    assert len(pcm) % 1920 == 0 and len(pcm) / 24_000 > 1.0
    assert np.all(np.abs(np.array(pcm)) <= 1.0)
    assert [text for text, _, _ in words] == FRENCH_ANSWER.split()
    assert all(start < stop for _, start, stop in words)
    assert [start for _, start, _ in words] == sorted(start for _, start, _ in words)
    assert words[-1][1] < len(pcm) / 24_000  # the last word is heard within the audio sent
    await wait_idle(service)


async def test_the_voice_message_and_seed_give_moshis_reference_audio(server, tiny_tts: TinyTTS) -> None:
    base, service = server
    embedding = load_voice_file(tiny_tts.voice_path(OTHER_VOICE))
    url = tts_url(base, seed="321", temperature="0.6", cfg_alpha="2.0")
    async with websockets.connect(url, additional_headers={"kyutai-api-key": API_KEY}) as ws:
        await ws.send(
            msgpack.packb(
                {
                    "type": "Voice",
                    "embeddings": embedding.flatten().tolist(),
                    "shape": list(embedding.shape),
                }
            )
        )
        for word in FRENCH_ANSWER.split():
            await ws.send(msgpack.packb({"type": "Text", "text": word}))
        await ws.send(msgpack.packb({"type": "Eos"}))
        pcm = [v for raw in [r async for r in ws] if (m := msgpack.unpackb(raw))["type"] == "Audio" for v in m["pcm"]]
    _, reference_pcm, _ = reference_generate(
        tiny_tts, FRENCH_ANSWER, voice=tiny_tts.voice_path(OTHER_VOICE), seed=321, temperature=0.6
    )
    assert len(pcm) == len(reference_pcm)
    assert np.abs(np.array(pcm, dtype=np.float32) - reference_pcm).max() < 1e-4
    await wait_idle(service)


async def test_first_audio_leaves_before_the_last_word_is_sent(server) -> None:
    base, service = server
    words = FRENCH_ANSWER.split()
    async with websockets.connect(tts_url(base), additional_headers={"kyutai-api-key": API_KEY}) as ws:
        assert msgpack.unpackb(await ws.recv())["type"] == "Ready"
        for word in words[: len(words) // 2]:
            await ws.send(msgpack.packb({"type": "Text", "text": word}))
        while (message := msgpack.unpackb(await asyncio.wait_for(ws.recv(), 30)))["type"] != "Audio":
            assert message["type"] == "Text"
        for word in words[len(words) // 2 :]:  # only now does the rest of the answer arrive
            await ws.send(msgpack.packb({"type": "Text", "text": word}))
        await ws.send(msgpack.packb({"type": "Eos"}))
        async for _ in ws:
            pass
    await wait_idle(service)


async def test_a_full_server_answers_error_at_once_and_a_dropped_connection_frees_its_slot(server) -> None:
    base, service = server
    headers = {"kyutai-api-key": API_KEY}
    first = await websockets.connect(tts_url(base), additional_headers=headers)
    second = await websockets.connect(tts_url(base), additional_headers=headers)
    for ws in (first, second):
        assert msgpack.unpackb(await ws.recv())["type"] == "Ready"
    await first.send(msgpack.packb({"type": "Text", "text": FRENCH_ANSWER}))
    started = time.monotonic()
    async with websockets.connect(tts_url(base), additional_headers=headers) as third:
        message = msgpack.unpackb(await third.recv())
    assert message == {"type": "Error", "message": "no free channels (2 streams busy)"}
    assert time.monotonic() - started < 1.0

    while msgpack.unpackb(await first.recv())["type"] != "Audio":
        pass
    steps_before = service.engine.total_steps
    await first.close()  # the member interrupted the agent: the kiosk's session drops the stream
    await until(lambda: service.engine.streams_in_use == 1)
    assert service.engine.streams_in_use == 1
    # Gone within a few frames of the close: the engine steps back to back while the close still
    # crosses the event loop the test shares with the server.
    assert service.engine.total_steps - steps_before <= 6
    async with websockets.connect(tts_url(base), additional_headers=headers) as fourth:
        assert msgpack.unpackb(await fourth.recv())["type"] == "Ready"
    await second.close()
    await wait_idle(service)


async def test_unmutes_query_shape_with_auth_id_is_served(server) -> None:
    """Unmute sends extra moshi-server parameters and may pass the key as `auth_id`."""
    base, service = server
    query = {"voice": DEFAULT_VOICE, "cfg_alpha": "1.5", "top_k": "250", "max_seq_len": "2048", "auth_id": API_KEY}
    async with websockets.connect(tts_url(base, **query)) as ws:
        assert msgpack.unpackb(await ws.recv())["type"] == "Ready"
        await ws.send(msgpack.packb({"type": "Text", "text": "Bonjour Julie"}))
        await ws.send(msgpack.packb({"type": "Eos"}))
        kinds = {msgpack.unpackb(raw)["type"] async for raw in ws}
    assert kinds == {"Audio", "Text"}
    await wait_idle(service)


async def test_a_wrong_api_key_is_refused_at_the_handshake(server) -> None:
    base, _ = server
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(tts_url(base), additional_headers={"kyutai-api-key": "nope"}):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"voice": "nobody/unknown.wav"}, "unknown voice"),
        ({"voice": "../../etc/passwd"}, "invalid voice name"),
        ({"cfg_alpha": "2.7"}, "cfg_alpha 2.7 is not supported"),
        ({"temperature": "hot"}, "must be a number"),
        ({"format": "OggOpus"}, "only format=PcmMessagePack"),
    ],
)
async def test_bad_requests_get_a_clear_error(server, query: dict[str, str], error: str) -> None:
    base, _ = server
    url = f"{base}/api/tts_streaming?{urlencode(query)}"
    async with websockets.connect(url, additional_headers={"kyutai-api-key": API_KEY}) as ws:
        message = msgpack.unpackb(await ws.recv())
    assert message["type"] == "Error" and error in message["message"]


async def read_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every message up to the close; a stream ended by an Error closes with a code other than 1000."""
    messages = []
    with contextlib.suppress(websockets.ConnectionClosedError):
        async for raw in ws:
            messages.append(msgpack.unpackb(raw))
    return messages


async def test_a_malformed_message_ends_the_stream_with_an_error(server) -> None:
    base, service = server
    async with websockets.connect(tts_url(base), additional_headers={"kyutai-api-key": API_KEY}) as ws:
        assert msgpack.unpackb(await ws.recv())["type"] == "Ready"
        await ws.send(b"\x92\x01")  # msgpack, but not a map with a type
        messages = await read_until_closed(ws)
    assert messages[-1]["type"] == "Error"
    assert ws.close_code == protocol.CLOSE_CLIENT_ERROR  # the client's fault: not worth a retry
    await wait_idle(service)


async def test_a_client_that_goes_quiet_before_eos_loses_its_slot(server) -> None:
    base, service = server
    service.settings.idle_timeout_s = 0.3
    try:
        async with websockets.connect(tts_url(base), additional_headers={"kyutai-api-key": API_KEY}) as ws:
            assert msgpack.unpackb(await ws.recv())["type"] == "Ready"
            await ws.send(msgpack.packb({"type": "Text", "text": "Bonjour"}))
            messages = await read_until_closed(ws)
    finally:
        service.settings.idle_timeout_s = 30.0
    assert messages[-1] == {"type": "Error", "message": "no text for 0.3 s"}
    assert ws.close_code == protocol.CLOSE_CLIENT_ERROR
    await wait_idle(service)


async def test_health_and_metrics(server) -> None:
    base, _ = server
    http = base.replace("ws://", "http://")
    async with httpx.AsyncClient() as client:
        health = (await client.get(f"{http}/api/health")).json()  # open: load balancers and workers poll it
        refused = await client.get(f"{http}/metrics")
        metrics = (await client.get(f"{http}/metrics", params={"auth_id": API_KEY})).text
    assert refused.status_code == 401  # behind the engine's key, as the streams
    assert health["status"] == "ok" and health["max_streams"] == 2
    assert "kyutai_tts_step_seconds_bucket" in metrics
    assert 'kyutai_tts_rejected_total{reason="full"}' in metrics


async def test_the_server_command_serves_a_local_checkpoint(tiny_tts: TinyTTS, tmp_path: Path) -> None:
    """`python -m kyutai_tts.server`, configured from the environment only."""
    env = {
        **tiny_engine_env(tiny_tts),
        "KYUTAI_TTS_MAX_STREAMS": "2",
        "KYUTAI_TTS_API_KEYS": '["a-test-key"]',
    }
    async with engine_process(tmp_path, "tts", env) as engine:
        url = tts_url(engine.ws, voice=OTHER_VOICE)
        async with websockets.connect(url, additional_headers={"kyutai-api-key": "a-test-key"}) as ws:
            for word in "Bonjour Julie, à demain !".split():
                await ws.send(msgpack.packb({"type": "Text", "text": word}))
            await ws.send(msgpack.packb({"type": "Eos"}))
            kinds = [msgpack.unpackb(raw)["type"] async for raw in ws]
        assert kinds[0] == "Ready" and kinds.count("Audio") > 5 and "Error" not in kinds
