"""SIGTERM drains a real `python -m kyutai_tts.server` process (issue 16 item 4).

Health says draining (503), a new stream is refused with close 1013 (the plugins retry on another
replica), the live stream is synthesised to its end, and the process exits 0 (uvicorn alone
would close every WebSocket with 1012 and die by the re-raised SIGTERM).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import msgpack
import pytest
import websockets
from kyutai_tiny.tts import TinyTTS

from ..kyutai_common.engine_process import (
    EngineProcess,
    check_a_second_sigterm_stops_at_once,
    check_the_bound_ends_a_drain_whose_stream_never_finishes,
    draining,
    engine_process,
)
from .conftest import FRENCH_ANSWER, tiny_engine_env


def stream_url(engine: EngineProcess) -> str:
    return f"{engine.ws}/api/tts_streaming?{urlencode({'format': 'PcmMessagePack'})}"


async def ready(ws: websockets.ClientConnection) -> None:
    assert msgpack.unpackb(await ws.recv())["type"] == "Ready"


@pytest.fixture
async def engine(tiny_tts: TinyTTS, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[EngineProcess]:
    env = {
        **tiny_engine_env(tiny_tts),
        "KYUTAI_TTS_MAX_STREAMS": "2",
        "KYUTAI_TTS_API_KEYS": "[]",
        "KYUTAI_TTS_DRAIN_TIMEOUT_S": str(getattr(request, "param", 20)),
    }
    async with engine_process(tmp_path, "tts", env) as started:
        yield started


async def test_sigterm_lets_the_live_stream_finish_refuses_new_ones_and_exits_0(engine: EngineProcess) -> None:
    words = FRENCH_ANSWER.split()
    async with websockets.connect(stream_url(engine)) as live:
        await ready(live)
        for word in words[:3]:
            await live.send(msgpack.packb({"type": "Text", "text": word}))
        signalled_at = time.monotonic()
        engine.process.send_signal(signal.SIGTERM)

        assert (await draining(engine)).json()["status"] == "draining"

        async with websockets.connect(stream_url(engine)) as refused:
            error = msgpack.unpackb(await refused.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await refused.recv()
        assert error["type"] == "Error" and "draining" in error["message"]
        assert refused.close_code == 1013

        # The rest of the sentence arrives after SIGTERM and is still spoken to its end.
        for word in words[3:]:
            await live.send(msgpack.packb({"type": "Text", "text": word}))
        await live.send(msgpack.packb({"type": "Eos"}))
        async with asyncio.timeout(60):
            received = [msgpack.unpackb(raw)["type"] async for raw in live]
    assert live.close_code == 1000 and "Error" not in received
    spoken = [m for m in received if m == "Text"]
    assert received.count("Audio") > 10 and len(spoken) == len(words), (len(spoken), len(words))
    assert await engine.wait(10) == 0
    log = engine.log.read_text()
    assert "draining: 1 live stream(s)" in log and "drained: 0 live stream(s) left" in log, log
    print(f"tts drain: exit 0 {time.monotonic() - signalled_at:.2f} s after SIGTERM")


@pytest.mark.parametrize("engine", [1.0], indirect=True)
async def test_the_bound_ends_a_drain_whose_stream_never_finishes(engine: EngineProcess) -> None:
    await check_the_bound_ends_a_drain_whose_stream_never_finishes(engine, stream_url(engine), ready)


async def test_a_second_sigterm_stops_at_once(engine: EngineProcess) -> None:
    await check_a_second_sigterm_stops_at_once(engine, stream_url(engine), ready)


async def test_an_engine_sharing_a_cpu_host_takes_the_torch_threads_it_is_given(engine: EngineProcess) -> None:
    # The local stack starts every engine with KYUTAI_TTS_TORCH_THREADS=1; the TTS engine once ignored it
    # and ran a thread per core beside the other engines on the same cores.
    assert "torch threads 1)" in engine.log.read_text()
