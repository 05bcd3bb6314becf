"""SIGTERM drains a real `python -m kyutai_stt.server` process (issue 16 item 4).

Health says draining (503), a new stream is refused with close 1013 (the plugins retry on another
replica), the live stream keeps working until its client ends it, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest
import websockets

from .conftest import free_port

FRAME = np.zeros(1920, dtype=np.float32).tolist()


class EngineProcess:
    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/asr-streaming"

    async def health(self) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"http://127.0.0.1:{self.port}/api/health", timeout=2)


@pytest.fixture
async def engine(tiny_stt_dir: Path, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[EngineProcess]:
    port = free_port()
    drain_timeout_s = getattr(request, "param", 20)
    env = dict(
        os.environ,
        KYUTAI_STT_CHECKPOINT=str(tiny_stt_dir),
        KYUTAI_STT_PORT=str(port),
        KYUTAI_STT_MAX_STREAMS="2",
        KYUTAI_STT_TORCH_THREADS="1",
        KYUTAI_STT_DEVICE="cpu",
        KYUTAI_STT_API_KEYS="[]",
        KYUTAI_STT_DRAIN_TIMEOUT_S=str(drain_timeout_s),
        NO_TORCH_COMPILE="1",
    )
    log = tmp_path / "stt.log"
    with open(log, "wb") as out:  # noqa: ASYNC230 (a local log file, opened once before the process starts)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kyutai_stt.server", env=env, stdout=out, stderr=out
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


async def next_of(ws: websockets.ClientConnection, kind: str, timeout_s: float = 10) -> dict[str, object]:
    async with asyncio.timeout(timeout_s):
        while True:
            message = msgpack.unpackb(await ws.recv())
            if message["type"] == kind:
                return message  # type: ignore[no-any-return]


async def test_sigterm_lets_the_live_stream_finish_refuses_new_ones_and_exits_0(engine: EngineProcess) -> None:
    async with websockets.connect(engine.url) as live:
        await next_of(live, "Ready")
        for _ in range(5):
            await live.send(msgpack.packb({"type": "Audio", "pcm": FRAME}))
        signalled_at = time.monotonic()
        engine.process.send_signal(signal.SIGTERM)

        async with asyncio.timeout(5):
            while (health := await engine.health()).status_code != 503:  # noqa: ASYNC110 (an HTTP probe: no event to await)
                await asyncio.sleep(0.05)
        assert health.json()["status"] == "draining" and health.json()["streams_in_use"] == 1

        async with websockets.connect(engine.url) as refused:
            error = await next_of(refused, "Error")
            with pytest.raises(websockets.ConnectionClosed):
                await refused.recv()
        assert refused.close_code == 1013 and "draining" in str(error["message"])

        # The live stream still goes through the model: its marker comes back after more audio.
        for _ in range(10):
            await live.send(msgpack.packb({"type": "Audio", "pcm": FRAME}))
        await live.send(msgpack.packb({"type": "Marker", "id": 7}))
        for _ in range(40):
            await live.send(msgpack.packb({"type": "Audio", "pcm": FRAME}))
        assert (await next_of(live, "Marker", timeout_s=15))["id"] == 7
        assert engine.process.returncode is None, "the engine quit while a stream was live"
    # The member's stream ended on its own: the engine goes now, not at the bound.
    assert await asyncio.wait_for(engine.process.wait(), timeout=10) == 0
    exited_after_s = time.monotonic() - signalled_at
    log = engine.log.read_text()
    assert "draining: 1 live stream(s)" in log and "drained: 0 live stream(s) left" in log, log
    print(f"stt drain: exit 0 {exited_after_s:.2f} s after SIGTERM")


@pytest.mark.parametrize("engine", [1.0], indirect=True)
async def test_the_bound_ends_a_drain_whose_stream_never_finishes(engine: EngineProcess) -> None:
    async with websockets.connect(engine.url) as live:
        await next_of(live, "Ready")
        signalled_at = time.monotonic()
        engine.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(engine.process.wait(), timeout=10) == 0
        waited_s = time.monotonic() - signalled_at
    assert 1.0 <= waited_s < 5.0, waited_s
    assert "drained: 1 live stream(s) left" in engine.log.read_text()


async def test_a_second_sigterm_stops_at_once(engine: EngineProcess) -> None:
    async with websockets.connect(engine.url) as live:
        await next_of(live, "Ready")
        engine.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            while (await engine.health()).status_code != 503:  # noqa: ASYNC110 (an HTTP probe: no event to await)
                await asyncio.sleep(0.05)
        signalled_at = time.monotonic()
        engine.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(engine.process.wait(), timeout=10) == 0
        stopped_s = time.monotonic() - signalled_at
    assert stopped_s < 5.0, f"a second SIGTERM took {stopped_s:.1f} s (the drain bound is 20 s)"
