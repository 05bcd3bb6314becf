"""Protocol fuzzing of a running TTS engine process while a healthy stream speaks beside it.

The engine must survive every input (same pid, healthy at the end), end only the stream that
sent it, keep the healthy stream's audio flowing (gap between frames < 200 ms) and not grow
(RSS < 20 MB over a warmed-up process).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import msgpack
import pytest
import websockets
from kyutai_tiny.tts import TinyTTS

from ..kyutai_common.engine_process import EngineProcess, engine_process
from ..kyutai_common.fuzzing import (
    NonReadingClient,
    assert_survived,
    closed_with,
    collect,
    frames,
    fuzz,
    huge_messages,
    instrument_collector_quiet,
    refusal,
    rss_kb,
    stream_once_free,
)
from ..machine import slowdown
from .conftest import FRENCH_ANSWER, tiny_engine_env

KEY = "tts-fuzz-key"
HEADERS = {"kyutai-api-key": KEY}
FUZZ_INPUTS = 400  # hypothesis examples; about 20 s on a loaded 2-core machine
IDLE_S = 2.0


def stream_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/api/tts_streaming?{urlencode({'format': 'PcmMessagePack', 'seed': '1'})}"


def text(value: str) -> bytes:
    return msgpack.packb({"type": "Text", "text": value})


EOS = msgpack.packb({"type": "Eos"})


# Built once at import, before anything is timed (the healthy client's reads share this event loop).
HUGE = huge_messages("Text", "text")


@pytest.fixture
async def engine(tiny_tts: TinyTTS, tmp_path: Path) -> AsyncIterator[EngineProcess]:
    env = {
        **tiny_engine_env(tiny_tts),
        "KYUTAI_TTS_MAX_STREAMS": "6",
        "KYUTAI_TTS_API_KEYS": json.dumps([KEY]),
        "KYUTAI_TTS_IDLE_TIMEOUT_S": str(IDLE_S),
        "KYUTAI_TTS_MAX_OUTGOING_MESSAGES": "16",
        "KYUTAI_TTS_MAX_STEPS": "20000",
        "KYUTAI_TTS_WARMUP_STEPS": "1",
    }
    async with engine_process(tmp_path, "tts", env) as started:
        yield started


async def speak(port: int, words: list[str]) -> tuple[list[float], list[dict[str, object]]]:
    """A healthy stream: every word, Eos, then read to the end. Returns audio arrival times."""
    arrivals: list[float] = []
    others: list[dict[str, object]] = []
    async with websockets.connect(stream_url(port), additional_headers=HEADERS) as ws:
        for word in words:
            await ws.send(text(word))
        await ws.send(EOS)
        async for raw in ws:
            message = msgpack.unpackb(raw)
            if message["type"] == "Audio":
                arrivals.append(time.monotonic())
            elif message["type"] not in ("Text", "Ready"):
                others.append(message)
    return arrivals, others


async def expect_refusal(port: int, sends: list[bytes | str], codes: set[int], timeout_s: float = 10.0) -> str:
    return await refusal(stream_url(port), HEADERS, sends, codes, timeout_s)


async def named_cases(engine: EngineProcess) -> int:
    port = engine.port
    cases = 0
    # moshi's script parser raises ValueError on a malformed break: only this stream ends.
    assert "could not be read" in await expect_refusal(port, [text('Salut <break time="1xs"/> toi'), EOS], {1008})
    cases += 1
    # 2 MB of text: over the message size, refused by the WebSocket layer before decoding.
    await expect_refusal(port, [text("a" * 2_000_000)], {1009})
    # Under the message size but over a Text's length (moshi's parser is quadratic in it).
    assert "characters" in await expect_refusal(port, [text("mot " * 300)], {1008})
    # Over a stream's total text.
    assert "characters" in await expect_refusal(port, [text("bonjour " * 120)] * 10, {1008})
    # 16 MiB map of empty arrays: refused by size.
    await expect_refusal(port, [HUGE[16]], {1009})
    cases += 4
    # 20 maps of 1 MB of empty arrays, each refused while decoding (a few dozen containers).
    for _ in range(20):
        await expect_refusal(port, [HUGE[1]], {1008})
        cases += 1
    # Empty Text does not hold the slot: the idle timeout still ends the stream.
    async with stream_once_free(stream_url(port), HEADERS) as ws:
        started = time.monotonic()
        try:
            for _ in range(int(IDLE_S * 4)):
                await ws.send(text(""))
                await ws.send(text("   "))
                await asyncio.sleep(0.5)
        except websockets.ConnectionClosed:
            pass
        messages, code = await closed_with(ws, 5.0)
        assert code == 1008 and messages[-1]["message"] == f"no text for {IDLE_S:g} s"
        assert time.monotonic() - started < IDLE_S + 2.0
    cases += 1
    return cases


def start_non_reading_client(engine: EngineProcess) -> NonReadingClient:
    """Sends a long answer and never reads. The kernel's socket buffers take the first few MB
    (outside the engine's RSS); then the server's sends block, its queue fills, and it drops the stream."""
    client = NonReadingClient(stream_url(engine.port), HEADERS)
    for word in (FRENCH_ANSWER + " ").split() * 60:  # ~4000 frames of 9.6 kB: far over the kernel buffers
        client.send(text(word))
    client.send(EOS)
    return client


async def dropped(engine: EngineProcess, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            metrics = (await http.get(f"{engine.http}/metrics", params={"auth_id": KEY})).text
            if 'kyutai_tts_rejected_total{reason="slow_client"} 1.0' in metrics:
                return True
            await asyncio.sleep(0.2)
    return False


async def test_fuzzed_and_hostile_clients_never_reach_a_healthy_stream(engine: EngineProcess) -> None:
    pid = engine.pid
    # Warm-up: every code path once (a stream, a refusal, the fuzz), so RSS then measures growth.
    await speak(engine.port, FRENCH_ANSWER.split())
    await fuzz(
        stream_url(engine.port), HEADERS, collect(frames(["Text", "Voice", "Eos"], ["text", "embeddings", "shape"]), 40)
    )
    await expect_refusal(engine.port, [HUGE[1]], {1008})
    await asyncio.sleep(1.0)
    rss_before = rss_kb(pid)

    inputs = collect(frames(["Text", "Voice", "Eos"], ["text", "embeddings", "shape"]), FUZZ_INPUTS)
    gap_bound_s = 0.2 * (factor := slowdown())
    with instrument_collector_quiet() as instrument:
        alone_arrivals, _ = await speak(engine.port, (FRENCH_ANSWER + " ").split() * 8)
        non_reading = start_non_reading_client(engine)
        # The healthy kiosk reads on its own thread and loop: the fuzzer's CPU work (hypothesis,
        # packing huge frames) must not make it a slow reader, which the engine rightly drops.
        healthy = asyncio.create_task(
            asyncio.to_thread(asyncio.run, speak(engine.port, (FRENCH_ANSWER + " ").split() * 30))
        )
        await asyncio.sleep(0.5)
        fuzz_started_at = time.monotonic()
        report = await fuzz(stream_url(engine.port), HEADERS, inputs)
        named_started_at = time.monotonic()
        cases = await named_cases(engine)
        fuzz_done_at = time.monotonic()
        arrivals, others = await healthy
    try:
        assert await dropped(engine, 30.0), "a client that does not read was not dropped"
    finally:
        non_reading.close()

    assert others == [], others  # no Error: the healthy stream never saw the others
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # The gap that counts is the one while the hostile clients run (after them, only the load
    # of the machine shows); the same stream alone gives the machine's own baseline.
    during = [b - a for a, b in itertools.pairwise(arrivals) if fuzz_started_at <= b <= fuzz_done_at]
    max_gap = max(during)
    alone_gaps = [b - a for a, b in itertools.pairwise(alone_arrivals)]
    # Where the healthy stream waited (seconds from the fuzz start, gap), to tell a stall's cause.
    slow = [(round(b - fuzz_started_at, 2), round(b - a, 3)) for a, b in itertools.pairwise(arrivals) if b - a > 0.15]
    named_at = named_started_at - fuzz_started_at
    engine_collections = [line for line in engine.log.read_text().splitlines() if "garbage collection" in line]
    print(
        f"\ngaps over 150 ms: {slow}; named cases from +{named_at:.2f} s to +{fuzz_done_at - fuzz_started_at:.2f} s; "
        f"test process: {instrument.objects} objects, a full collection {instrument.full_collection_ms} ms before the "
        f"window, collections over 20 ms in it (generation, ms) {instrument.pauses}; "
        f"slow collections in the engine: {engine_collections}"
    )
    beside = sum(1 for t in arrivals if t <= fuzz_done_at)
    await asyncio.sleep(1.0)
    rss_after = rss_kb(pid)
    print(
        f"\nTTS fuzz: {report.inputs} hypothesis inputs on {report.streams} streams, close codes "
        f"{dict(report.close_codes)}; {cases} named cases + a non-reading client (dropped); healthy stream "
        f"{len(arrivals)} audio frames ({beside} while the fuzz ran), max gap {max_gap * 1000:.0f} ms during the "
        f"fuzz, {max(gaps) * 1000:.0f} ms over the whole stream "
        f"(alone: {max(alone_gaps) * 1000:.0f} ms; bound {gap_bound_s * 1000:.0f} ms, machine slowdown {factor:.2f}); "
        f"RSS {rss_before} -> {rss_after} kB ({(rss_after - rss_before) / 1024:+.1f} MB)"
    )
    await assert_survived(engine, pid, report, len(inputs))
    assert beside > 50  # the healthy stream really ran beside the fuzz
    assert max_gap < gap_bound_s
    assert rss_after - rss_before < 20 * 1024
