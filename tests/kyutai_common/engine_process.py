"""A real `python -m kyutai_stt.server` / `kyutai_tts.server` process for tests, started the way
the local stack starts its engines (jarvis_local.stack.LocalStack._start_engine: loopback, one torch
thread, no compile, offline hub, log in the work directory, back once /api/health answers 200).

Also the SIGTERM drain checks that hold for both engines.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgpack
import websockets

from jarvis_local.stack import LocalStack

# kind -> (module, environment prefix)
ENGINES = {"stt": ("kyutai_stt.server", "KYUTAI_STT_"), "tts": ("kyutai_tts.server", "KYUTAI_TTS_")}


@dataclass
class EngineProcess:
    stack: LocalStack
    name: str
    ws: str  # ws://127.0.0.1:<port>, the key of stack.engines

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.stack.engines[self.ws]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.ws.rsplit(":", 1)[1])

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.stack.workdir / f"{self.name}.log"

    async def health(self) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"{self.http}/api/health", timeout=2)

    async def healthy(self) -> bool:
        try:
            return (await self.health()).status_code == 200
        except httpx.HTTPError:
            return False

    async def wait(self, timeout_s: float) -> int:
        """The exit status, once the process ended (subprocess.TimeoutExpired after `timeout_s`)."""
        return await asyncio.to_thread(self.process.wait, timeout_s)


@asynccontextmanager
async def engine_process(workdir: Path, kind: str, env: dict[str, str]) -> AsyncIterator[EngineProcess]:
    """The `kind` ("stt" or "tts") engine server configured by `env`, healthy; stopped on exit
    (SIGTERM, SIGKILL after 10 s) if still running. Its log is `workdir / f"{kind}.log"`."""
    module, prefix = ENGINES[kind]
    stack = LocalStack(workdir=workdir)
    try:
        ws = await asyncio.to_thread(stack._start_engine, kind, module, prefix, env)
        yield EngineProcess(stack, kind, ws)
    finally:
        await asyncio.to_thread(stack.stop)


async def next_of(ws: websockets.ClientConnection, kind: str, timeout_s: float = 10) -> dict[str, object]:
    """The next message of type `kind` (others skipped)."""
    async with asyncio.timeout(timeout_s):
        while True:
            message = msgpack.unpackb(await ws.recv())
            if message["type"] == kind:
                return message  # type: ignore[no-any-return]


async def draining(engine: EngineProcess) -> httpx.Response:
    """Polls health until it says 503 (within 5 s): the answer."""
    async with asyncio.timeout(5):
        while (health := await engine.health()).status_code != 503:  # noqa: ASYNC110 (an HTTP probe: no event to await)
            await asyncio.sleep(0.05)
    return health


Ready = Callable[[websockets.ClientConnection], Awaitable[object]]


async def check_the_bound_ends_a_drain_whose_stream_never_finishes(
    engine: EngineProcess, url: str, ready: Ready
) -> None:
    """With a 1 s drain bound: SIGTERM while a stream stays open, exit 0 within 1..5 s."""
    async with websockets.connect(url) as live:
        await ready(live)
        signalled_at = time.monotonic()
        engine.process.send_signal(signal.SIGTERM)
        assert await engine.wait(10) == 0
        waited_s = time.monotonic() - signalled_at
    assert 1.0 <= waited_s < 5.0, waited_s
    assert "drained: 1 live stream(s) left" in engine.log.read_text()


async def check_a_second_sigterm_stops_at_once(engine: EngineProcess, url: str, ready: Ready) -> None:
    async with websockets.connect(url) as live:
        await ready(live)
        engine.process.send_signal(signal.SIGTERM)
        await draining(engine)
        signalled_at = time.monotonic()
        engine.process.send_signal(signal.SIGTERM)
        assert await engine.wait(10) == 0
        stopped_s = time.monotonic() - signalled_at
    assert stopped_s < 5.0, f"a second SIGTERM took {stopped_s:.1f} s (the drain bound is 20 s)"
