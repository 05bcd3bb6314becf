"""SIGTERM drains a real `python -m kyutai_stt.server` process (issue 16 item 4).

Health says draining (503), a new stream is refused with close 1013 (the plugins retry on another
replica), the live stream keeps working until its client ends it, and the process exits 0.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import msgpack
import numpy as np
import pytest
import websockets

from ..kyutai_common.engine_process import (
    EngineProcess,
    check_a_second_sigterm_stops_at_once,
    check_the_bound_ends_a_drain_whose_stream_never_finishes,
    draining,
    engine_process,
    next_of,
)

FRAME = np.zeros(1920, dtype=np.float32).tolist()
ready = partial(next_of, kind="Ready")


def stream_url(engine: EngineProcess) -> str:
    return f"{engine.ws}/api/asr-streaming"


@pytest.fixture
async def engine(tiny_stt_dir: Path, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[EngineProcess]:
    env = {
        "KYUTAI_STT_CHECKPOINT": str(tiny_stt_dir),
        "KYUTAI_STT_MAX_STREAMS": "2",
        "KYUTAI_STT_DEVICE": "cpu",
        "KYUTAI_STT_API_KEYS": "[]",
        "KYUTAI_STT_DRAIN_TIMEOUT_S": str(getattr(request, "param", 20)),
    }
    async with engine_process(tmp_path, "stt", env) as started:
        yield started


async def test_sigterm_lets_the_live_stream_finish_refuses_new_ones_and_exits_0(engine: EngineProcess) -> None:
    async with websockets.connect(stream_url(engine)) as live:
        await next_of(live, "Ready")
        for _ in range(5):
            await live.send(msgpack.packb({"type": "Audio", "pcm": FRAME}))
        signalled_at = time.monotonic()
        engine.process.send_signal(signal.SIGTERM)

        health = await draining(engine)
        assert health.json()["status"] == "draining" and health.json()["streams_in_use"] == 1

        async with websockets.connect(stream_url(engine)) as refused:
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
        assert engine.process.poll() is None, "the engine quit while a stream was live"
    # The member's stream ended on its own: the engine goes now, not at the bound.
    assert await engine.wait(10) == 0
    exited_after_s = time.monotonic() - signalled_at
    log = engine.log.read_text()
    assert "draining: 1 live stream(s)" in log and "drained: 0 live stream(s) left" in log, log
    print(f"stt drain: exit 0 {exited_after_s:.2f} s after SIGTERM")


@pytest.mark.parametrize("engine", [1.0], indirect=True)
async def test_the_bound_ends_a_drain_whose_stream_never_finishes(engine: EngineProcess) -> None:
    await check_the_bound_ends_a_drain_whose_stream_never_finishes(engine, stream_url(engine), ready)


async def test_a_second_sigterm_stops_at_once(engine: EngineProcess) -> None:
    await check_a_second_sigterm_stops_at_once(engine, stream_url(engine), ready)


async def test_an_engine_sharing_a_cpu_host_takes_the_torch_threads_it_is_given(engine: EngineProcess) -> None:
    # The local stack starts every engine with KYUTAI_STT_TORCH_THREADS=1.
    assert "torch threads 1)" in engine.log.read_text()
