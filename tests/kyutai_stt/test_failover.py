"""STT replicas and failover (issue 16 item 3) against two real engine server processes.

kill -9 the replica transcribing mid-sentence: the stream moves to the other one within 500 ms
(connected, and the member's audio since the last final replayed to it), and the transcript is
the one an unbroken stream gives. SIGTERM it instead: it hands the stream over at the end of the
member's turn (close 1012), the transcript is again unbroken and the engine exits 0 at once, not
at its drain bound. A full replica is passed over; with every replica down the stream fails with
APIConnectionError once APIConnectOptions' retries are spent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import websockets
from kyutai_stt import STT
from kyutai_stt.settings import PluginSettings
from livekit.agents import APIConnectionError, APIConnectOptions
from livekit.agents.stt import SpeechEvent, SpeechEventType

from jarvis_local.stack import LocalStack

from ..kyutai_common.replicas import ServingKill, engine_key, engine_replicas, kill9, serving, streams_in_use
from ..machine import slowdown
from .conftest import speech
from .test_plugin import to_frames

FAILOVER_BOUND_S = 0.5
RETRIES = APIConnectOptions(max_retry=2, retry_interval=0.2, timeout=3.0)
AUDIO = np.concatenate([speech(3.0, seed=11), np.zeros(24000 * 2, np.float32)])
# Two turns (the tiny pause head ends a turn at the first silent frame).
TWO_TURNS = np.concatenate(
    [speech(2.0, seed=11), np.zeros(24000 * 1, np.float32), speech(2.0, seed=12), np.zeros(24000 * 2, np.float32)]
)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, list[str]]]:
    with engine_replicas(tmp_path_factory.mktemp("stt-replicas"), "stt", 2, max_streams=1) as started:
        yield started


def plugin(stack: LocalStack, urls: list[str]) -> STT:
    return STT(settings=PluginSettings(urls=urls, api_key=engine_key(stack)))


async def transcribe(stream, on_event=None, audio=AUDIO) -> list[SpeechEvent]:  # type: ignore[no-untyped-def]
    """Real-time audio in (one 80 ms frame per 80 ms, as a kiosk's microphone), events out."""
    events: list[SpeechEvent] = []

    async def feed() -> None:
        for frame in to_frames(audio, 24000, 1920):
            stream.push_frame(frame)
            await asyncio.sleep(0.08)
        stream.end_input()

    async def consume() -> None:
        async for event in stream:
            events.append(event)
            if on_event is not None:
                await on_event(event)

    await asyncio.wait_for(asyncio.gather(feed(), consume()), 60)
    await stream.aclose()
    return events


def finals(events: list[SpeechEvent]) -> list[str]:
    return [e.alternatives[0].text for e in events if e.type == SpeechEventType.FINAL_TRANSCRIPT]


async def test_a_full_replica_is_passed_over(replicas: tuple[LocalStack, list[str]]) -> None:
    stack, urls = replicas
    async with websockets.connect(
        f"{urls[0]}/api/asr-streaming", additional_headers={"kyutai-api-key": engine_key(stack)}
    ) as holder:
        await holder.recv()  # Ready: its one slot is taken
        assert await streams_in_use(urls[0]) == 1
        stream = plugin(stack, urls).stream(conn_options=RETRIES)
        events = await transcribe(stream)
    assert finals(events), "the other replica transcribed nothing"
    assert stream.failovers == []


async def test_a_draining_engine_hands_the_stream_over_at_the_end_of_a_turn(
    replicas: tuple[LocalStack, list[str]],
) -> None:
    stack, urls = replicas
    reference = finals(await transcribe(plugin(stack, urls).stream(conn_options=RETRIES), audio=TWO_TURNS))
    assert len(reference) >= 2, f"the tiny model gave {reference}: no turn to hand over after"
    draining: list[tuple[str, asyncio.Task[tuple[int, float]]]] = []

    async def exit_after_sigterm(url: str) -> tuple[int, float]:
        signalled_at = time.monotonic()
        stack.engines[url].terminate()  # SIGTERM: the engine drains (its bound: 30 s)
        code = await asyncio.to_thread(stack.engines[url].wait, 30)
        return code, time.monotonic() - signalled_at

    async def sigterm_on_first_final(event: SpeechEvent) -> None:
        if event.type == SpeechEventType.FINAL_TRANSCRIPT and not draining:
            url = await serving(urls)
            draining.append((url, asyncio.create_task(exit_after_sigterm(url))))

    stream = plugin(stack, urls).stream(conn_options=RETRIES)
    events = await transcribe(stream, sigterm_on_first_final, TWO_TURNS)
    url, exited = draining[0]
    code, exited_s = await exited
    log = (stack.workdir / f"stt-{urls.index(url)}.log").read_text()
    print(f"\nSTT drain hand-over: {len(stream.failovers)} move(s); exit {code} {exited_s:.2f} s after SIGTERM")
    assert "draining: handing the stream on slot 0 over" in log and "drained: 0 live stream(s) left" in log, log
    assert code == 0 and exited_s < 25, "the drain waited for its 30 s bound instead of the turn's end"
    assert len(stream.failovers) == 1  # one move, after the first turn's final
    # The second turn was heard whole by the other replica (replayed from the first final on).
    # Its words are not the unbroken stream's: that replica never heard the first turn, and a
    # random-weight model's words depend on what it heard before.
    after = finals(events)[1:]
    assert after and all(after), finals(events)
    kinds = [e.type for e in events if e.type != SpeechEventType.RECOGNITION_USAGE]
    assert kinds.count(SpeechEventType.START_OF_SPEECH) == kinds.count(SpeechEventType.END_OF_SPEECH)
    await asyncio.to_thread(stack.restart_engine, url)  # back, for the tests after this one


async def test_an_engine_killed_mid_sentence_the_transcript_goes_on_from_the_other(
    replicas: tuple[LocalStack, list[str]],
) -> None:
    stack, urls = replicas
    reference = finals(await transcribe(plugin(stack, urls).stream(conn_options=RETRIES)))
    assert reference, "the tiny model transcribed nothing: nothing to compare"

    bound_s = FAILOVER_BOUND_S * (factor := slowdown())
    kill = ServingKill(stack, urls)

    async def kill_on_first_word(event: SpeechEvent) -> None:
        if event.type == SpeechEventType.INTERIM_TRANSCRIPT and not kill.killed_at:
            await kill()

    stream = plugin(stack, urls).stream(conn_options=RETRIES)
    events = await transcribe(stream, kill_on_first_word)

    lost, gap = kill.failover(stream.failovers, "mid-sentence")
    print(
        f"\nSTT failover: kill -9 -> the turn's audio replayed to the other replica in {1000 * gap:.0f} ms "
        f"(engine loss seen {1000 * lost:.0f} ms after the kill); bound {1000 * bound_s:.0f} ms "
        f"(machine slowdown {factor:.2f})"
    )
    # The audio since the last final was heard again: the same words as an unbroken stream (the
    # replayed connection leaves the turn's end to where the member paused, see SpeechStream._open).
    assert finals(events) == reference
    # The move is bounded; the words after it come at the model's own pace through the replayed
    # audio (its 0.5 s text delay included), which the transcript comparison above covers.
    assert gap < bound_s
    kinds = [e.type for e in events if e.type != SpeechEventType.RECOGNITION_USAGE]
    assert kinds.count(SpeechEventType.START_OF_SPEECH) == kinds.count(SpeechEventType.END_OF_SPEECH)


async def test_every_replica_down_is_a_connection_error_after_the_retries(tmp_path: Path) -> None:
    with engine_replicas(tmp_path, "stt", 2, max_streams=1) as (stack, urls):
        for url in urls:
            assert await kill9(stack.engines[url]) == -9
        stream = plugin(stack, urls).stream(conn_options=RETRIES)
        stream.push_frame(to_frames(speech(0.2), 24000, 4800)[0])
        started = time.monotonic()
        with pytest.raises(APIConnectionError):
            async for _ in stream:
                pass
        await stream.aclose()
        assert time.monotonic() - started >= 0.3  # LiveKit's retry schedule: 0.1 s, then 0.2 s
