"""SIGTERM drains a real `python -m kyutai_tts.server` process (issue 16 item 4).

Health says draining (503), a new stream is refused with close 1013 (the plugins retry on another
replica), the live stream is synthesised to its end, and the process exits 0 (uvicorn alone
would close every WebSocket with 1012 and die by the re-raised SIGTERM).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import msgpack
import pytest
import websockets
from kyutai_tiny.tts import DEFAULT_VOICE, TinyTTS

from .conftest import FRENCH_ANSWER, free_port


class EngineProcess:
    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/tts_streaming?{urlencode({'format': 'PcmMessagePack'})}"

    async def health(self) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"http://127.0.0.1:{self.port}/api/health", timeout=2)


@pytest.fixture
async def engine(tiny_tts: TinyTTS, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[EngineProcess]:
    port = free_port()
    env = {
        **os.environ,
        "KYUTAI_TTS_CHECKPOINT": str(tiny_tts.directory),
        "KYUTAI_TTS_VOICE_DIR": str(tiny_tts.voice_dir),
        "KYUTAI_TTS_DEFAULT_VOICE": DEFAULT_VOICE,
        "KYUTAI_TTS_ALLOW_HUB_VOICES": "false",
        "KYUTAI_TTS_PORT": str(port),
        "KYUTAI_TTS_MAX_STREAMS": "2",
        "KYUTAI_TTS_API_KEYS": "[]",
        "KYUTAI_TTS_DRAIN_TIMEOUT_S": str(getattr(request, "param", 20)),
        "OMP_NUM_THREADS": "1",
    }
    log = tmp_path / "tts.log"
    with open(log, "wb") as out:  # noqa: ASYNC230 (a local log file, opened once before the process starts)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kyutai_tts.server", env=env, stdout=out, stderr=out
        )
    engine = EngineProcess(process, port, log)
    try:
        for _ in range(600):
            try:
                if (await engine.health()).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.returncode is None, log.read_text()
            await asyncio.sleep(0.1)
        yield engine
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_sigterm_lets_the_live_stream_finish_refuses_new_ones_and_exits_0(engine: EngineProcess) -> None:
    words = FRENCH_ANSWER.split()
    async with websockets.connect(engine.url) as live:
        assert msgpack.unpackb(await live.recv())["type"] == "Ready"
        for word in words[:3]:
            await live.send(msgpack.packb({"type": "Text", "text": word}))
        signalled_at = time.monotonic()
        engine.process.send_signal(signal.SIGTERM)

        async with asyncio.timeout(5):
            while (health := await engine.health()).status_code != 503:  # noqa: ASYNC110 (an HTTP probe: no event to await)
                await asyncio.sleep(0.05)
        assert health.json()["status"] == "draining"

        async with websockets.connect(engine.url) as refused:
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
    assert await asyncio.wait_for(engine.process.wait(), timeout=10) == 0
    log = engine.log.read_text()
    assert "draining: 1 live stream(s)" in log and "drained: 0 live stream(s) left" in log, log
    print(f"tts drain: exit 0 {time.monotonic() - signalled_at:.2f} s after SIGTERM")


@pytest.mark.parametrize("engine", [1.0], indirect=True)
async def test_the_bound_ends_a_drain_whose_stream_never_finishes(engine: EngineProcess) -> None:
    async with websockets.connect(engine.url) as live:
        assert msgpack.unpackb(await live.recv())["type"] == "Ready"
        signalled_at = time.monotonic()
        engine.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(engine.process.wait(), timeout=10) == 0
        waited_s = time.monotonic() - signalled_at
    assert 1.0 <= waited_s < 5.0, waited_s
    assert "drained: 1 live stream(s) left" in engine.log.read_text()


async def test_a_second_sigterm_stops_at_once(engine: EngineProcess) -> None:
    async with websockets.connect(engine.url) as live:
        assert msgpack.unpackb(await live.recv())["type"] == "Ready"
        engine.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            while (await engine.health()).status_code != 503:  # noqa: ASYNC110 (an HTTP probe: no event to await)
                await asyncio.sleep(0.05)
        signalled_at = time.monotonic()
        engine.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(engine.process.wait(), timeout=10) == 0
        stopped_s = time.monotonic() - signalled_at
    assert stopped_s < 5.0, f"a second SIGTERM took {stopped_s:.1f} s (the drain bound is 20 s)"
