"""Kyutai engine replicas as real server processes (what `kill -9` can end), for the failover tests."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LocalStack

from .engine_process import ENGINES


@contextmanager
def engine_replicas(workdir: Path, kind: str, count: int, max_streams: int) -> Iterator[tuple[LocalStack, list[str]]]:
    """`count` replicas of the STT or TTS engine (tiny weights) on loopback; yields (stack, urls)."""
    stack = LocalStack(workdir=workdir)
    models = tiny_models(workdir / "models")
    stt_env, tts_env = models.engine_env()
    module, prefix = ENGINES[kind]
    env = stt_env if kind == "stt" else tts_env
    try:
        urls = [
            stack._start_engine(f"{kind}-{i}", module, prefix, {**env, f"{prefix}MAX_STREAMS": str(max_streams)})
            for i in range(count)
        ]
        yield stack, urls
    finally:
        stack.stop()


async def streams_in_use(url: str) -> int:
    async with httpx.AsyncClient(timeout=2.0) as client:
        body = (await client.get(f"http{url[2:]}/api/health")).json()
    return int(body["streams_in_use"])


async def serving(urls: list[str]) -> str:
    """The replica holding the (one) live stream."""
    for _ in range(100):
        for url in urls:
            try:
                if await streams_in_use(url) > 0:
                    return url
            except httpx.HTTPError:
                continue
        await asyncio.sleep(0.02)
    raise AssertionError("no replica holds the stream")


async def kill9(process: subprocess.Popen[bytes]) -> int:
    """SIGKILL, as a crashed GPU box: returns the exit status (-9)."""
    process.send_signal(signal.SIGKILL)
    return await asyncio.to_thread(process.wait, 10)


class ServingKill:
    """kill -9 of the replica serving the (one) live stream, once; the failover is timed from it."""

    def __init__(self, stack: LocalStack, urls: list[str]) -> None:
        self.stack, self.urls = stack, urls
        self.killed_at: list[float] = []
        self.status: list[int] = []

    async def __call__(self) -> None:
        victim = await serving(self.urls)
        self.killed_at.append(time.monotonic())
        self.status.append(await kill9(self.stack.engines[victim]))

    def failover(self, failovers: list[tuple[float, float]], when: str) -> tuple[float, float]:
        """The stream's one failover after the kill: (loss seen, moved), seconds after the kill."""
        assert self.status == [-9], f"the serving replica was not killed {when}"
        assert len(failovers) == 1, f"failovers: {failovers}"
        lost, moved = failovers[0]
        return lost - self.killed_at[0], moved - self.killed_at[0]


def engine_key(stack: LocalStack) -> str:
    """The key the stack's engines accept (the engines' default one where the stack sets none)."""
    return str(getattr(stack, "engine_api_key", "public_token"))
