"""TTS replicas and failover (issue 16 item 3) against two real engine server processes.

kill -9 the replica speaking mid-answer: the answer goes on from the other one, from the first
word not yet played, no word lost or repeated, within 500 ms. A full replica is passed over; with
every replica down the stream fails with APIConnectionError once APIConnectOptions' retries are spent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from kyutai_tiny.tts import DEFAULT_VOICE
from kyutai_tts import TTS
from kyutai_tts.settings import PluginSettings
from livekit.agents import APIConnectionError, APIConnectOptions
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT

from jarvis_local.stack import LocalStack

from ..kyutai_common.replicas import ServingKill, engine_key, engine_replicas, kill9, streams_in_use
from ..machine import slowdown

FAILOVER_BOUND_S = 0.5
ANSWER = (
    "Bonjour Julie, le cours de yoga commence à dix-huit heures dans la grande salle du premier étage, "
    "pense à prendre ta serviette et ta bouteille d'eau, et arrive cinq minutes en avance pour t'installer."
)
RETRIES = APIConnectOptions(max_retry=2, retry_interval=0.2, timeout=2.0)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, list[str]]]:
    with engine_replicas(tmp_path_factory.mktemp("tts-replicas"), "tts", 2, max_streams=1) as started:
        yield started


def plugin(stack: LocalStack, urls: list[str]) -> TTS:
    settings = PluginSettings(urls=urls, api_key=engine_key(stack), voice=DEFAULT_VOICE)
    return TTS(settings=settings, seed=7)


async def test_a_full_replica_is_passed_over(replicas: tuple[LocalStack, list[str]]) -> None:
    stack, urls = replicas
    alive = list(urls)  # (before the kill test below)
    full = alive[0]
    async with websockets.connect(
        f"{full}/api/tts_streaming?format=PcmMessagePack", additional_headers={"kyutai-api-key": engine_key(stack)}
    ) as holder:
        await holder.recv()  # Ready: its one slot is taken
        assert await streams_in_use(full) == 1
        stream = plugin(stack, alive).stream(conn_options=RETRIES)
        stream.push_text("Bonjour Julie, à tout de suite.")
        stream.end_input()
        frames = [event.frame async for event in stream]
        await stream.aclose()
    assert frames and stream.failovers == []


async def test_an_engine_killed_mid_answer_the_answer_goes_on_from_the_other(
    replicas: tuple[LocalStack, list[str]],
) -> None:
    stack, urls = replicas
    bound_s = FAILOVER_BOUND_S * (factor := slowdown())
    stream = plugin(stack, urls).stream(conn_options=RETRIES)
    frames = []
    kill = ServingKill(stack, urls)

    async def consume() -> None:
        async for event in stream:
            frames.append(event.frame)
            if len(frames) == 12 and not kill.killed_at:  # ~1 s of the answer out
                await kill()

    consumer = asyncio.create_task(consume())
    stream.push_text(ANSWER)
    stream.end_input()
    await asyncio.wait_for(consumer, 90)
    await stream.aclose()

    lost, gap = kill.failover(stream.failovers, "mid-answer")
    print(
        f"\nTTS failover: kill -9 -> audio from the other replica {1000 * gap:.0f} ms "
        f"(engine loss seen {1000 * lost:.0f} ms after the kill); "
        f"resumed at word {stream.resumed_from[0]} of {len(stream.sent_words)}; "
        f"bound {1000 * bound_s:.0f} ms (machine slowdown {factor:.2f})"
    )
    assert gap < bound_s
    assert 0 < stream.resumed_from[0] < len(stream.sent_words), "the kill was not mid-answer"
    # Every word timed back once, in order: none lost, none repeated.
    spoken = "".join(w for f in frames for w in f.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])).split()
    assert spoken == stream.sent_words
    assert sum(f.samples_per_channel for f in frames) / 24_000 > 3.0


async def test_every_replica_down_is_a_connection_error_after_the_retries(tmp_path: Path) -> None:
    with engine_replicas(tmp_path, "tts", 2, max_streams=1) as (stack, urls):
        for url in urls:
            assert await kill9(stack.engines[url]) == -9
        stream = plugin(stack, urls).stream(conn_options=RETRIES)
        stream.push_text("Bonjour.")
        stream.end_input()
        started = time.monotonic()
        with pytest.raises(APIConnectionError):
            async for _ in stream:
                pass
        await stream.aclose()
        # max_retry=2: three passes over both replicas, 0.1 s then 0.2 s apart (LiveKit's schedule)
        assert time.monotonic() - started >= 0.3
