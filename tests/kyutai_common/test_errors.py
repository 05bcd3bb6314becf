"""One error semantics for both plugins and both servers: whose fault an engine's Error is.

A client-caused error is a non-retryable 4xx, an engine-side failure a retryable 5xx, a full
engine a retryable 503, told by the WebSocket close code after Kyutai's `Error {message}`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from kyutai_common import protocol
from kyutai_common.client import engine_error
from kyutai_stt import STT
from kyutai_tts import TTS
from livekit import rtc
from livekit.agents import APIConnectOptions, APIStatusError
from websockets.asyncio.server import ServerConnection, serve

NO_RETRY = APIConnectOptions(max_retry=0, timeout=3.0)

CASES = [
    # close code after the Error, message, LiveKit status, retryable
    (protocol.CLOSE_CLIENT_ERROR, "Audio.pcm must be a list of floats", 400, False),
    (protocol.CLOSE_ENGINE_ERROR, "model step failed", 500, True),
    (protocol.CLOSE_FULL, protocol.NO_FREE_CHANNELS, 503, True),
    # Kyutai's moshi-server tells no fault: an engine-side failure, worth another try
    (protocol.CLOSE_NORMAL, "something broke", 500, True),
]


@pytest.mark.parametrize(("code", "message", "status", "retryable"), CASES)
def test_the_mapping(code: int, message: str, status: int, retryable: bool) -> None:
    error = engine_error("engine", message, code)
    assert (error.status_code, error.retryable) == (status, retryable)
    assert message in str(error)


def fake_engine(message: str, code: int) -> Callable[[ServerConnection], object]:
    """An engine that accepts the stream, then fails it as ours do: Error, then the close code."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(protocol.pack({"type": "Ready"}))
        await ws.recv()
        await ws.send(protocol.pack({"type": "Error", "message": message}))
        await ws.close(code)

    return handler


async def stt_failure(url: str) -> None:
    stream = STT(url=url).stream(conn_options=NO_RETRY)
    pcm = np.zeros(4800, dtype=np.int16)
    stream.push_frame(rtc.AudioFrame(pcm.tobytes(), 24000, 1, len(pcm)))
    try:
        async for _ in stream:
            pass
    finally:
        await stream.aclose()


async def tts_failure(url: str) -> None:
    stream = TTS(url=url, voice="any").stream(conn_options=NO_RETRY)
    stream.push_text("Bonjour à tous ")
    stream.end_input()
    try:
        async for _ in stream:
            pass
    finally:
        await stream.aclose()


@pytest.fixture
async def engine_url() -> AsyncIterator[Callable[[str, int], object]]:
    servers = []

    async def start(message: str, code: int) -> str:
        server = await serve(fake_engine(message, code), "127.0.0.1", 0)
        servers.append(server)
        return f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("fail", [stt_failure, tts_failure], ids=["stt", "tts"])
@pytest.mark.parametrize(("code", "message", "status", "retryable"), CASES)
async def test_both_plugins_map_an_engine_error_alike(
    engine_url, fail, code: int, message: str, status: int, retryable: bool
) -> None:
    url = await engine_url(message, code)
    with pytest.raises(APIStatusError) as raised:
        await fail(url)
    assert (raised.value.status_code, raised.value.retryable) == (status, retryable)


def test_the_tts_server_closes_with_the_fault() -> None:
    from kyutai_tts.engine import EngineError, EngineFull, RequestError, VoiceError
    from kyutai_tts.server import close_code

    assert close_code(RequestError("text after Eos")) == protocol.CLOSE_CLIENT_ERROR
    assert close_code(VoiceError("unknown voice")) == protocol.CLOSE_CLIENT_ERROR
    assert close_code(protocol.ProtocolError("bad")) == protocol.CLOSE_CLIENT_ERROR
    assert close_code(EngineFull("no free channels")) == protocol.CLOSE_FULL
    assert close_code(EngineError("engine failure")) == protocol.CLOSE_ENGINE_ERROR
