"""JARVIS answers, a cough pauses it, the silence after resumes it → the member hears every sample
of the answer once and in order: nothing that the pause cleared from livekit-agents' room output
queue is skipped. A pause confirmed into a stop replays nothing into the next answer.

Runs livekit-agents' own room output and livekit-rtc's real audio source (it plays out in real
time without a room); the source only also notes what it was given and what a clear dropped, so
what was heard is what it was given less what it dropped."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit import rtc
from livekit.agents.voice.room_io._output import _ParticipantAudioOutput

from agent.barge_in import ReplayingSource, replay_paused_audio

RATE = 24000
FRAME = RATE // 50  # the TTS plugin's 20 ms frames


class HeardSource(rtc.AudioSource):
    def __init__(self) -> None:
        super().__init__(RATE, 1, queue_size_ms=200)
        self.heard: list[int] = []

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self.heard.extend(np.frombuffer(frame.data, dtype=np.int16).tolist())

    def clear_queue(self) -> None:
        dropped = round(self.queued_duration * RATE)
        super().clear_queue()
        if dropped:
            del self.heard[-dropped:]


def room_output(source: HeardSource) -> _ParticipantAudioOutput:
    """livekit-agents' room output as RoomIO makes it, on a source that needs no room."""
    output = _ParticipantAudioOutput(rtc.Room(), sample_rate=RATE, num_channels=1,
                                     track_publish_options=rtc.TrackPublishOptions())
    output._audio_source = source
    output._subscribed_fut.set_result(None)  # no kiosk to subscribe: the source plays regardless
    output._forwarding_task = asyncio.create_task(output._forward_audio())
    return output


def answer(first: int, seconds: float) -> list[rtc.AudioFrame]:
    """Samples numbered from ``first``, so a skipped or repeated stretch shows in what was heard
    (int16: up to 1.36 s from 1)."""
    samples = np.arange(first, first + int(seconds * RATE), dtype=np.int16)
    return [rtc.AudioFrame(samples[i:i + FRAME].tobytes(), RATE, 1, FRAME) for i in range(0, len(samples), FRAME)]


async def speak(output: _ParticipantAudioOutput, frames: list[rtc.AudioFrame]) -> None:
    for frame in frames:
        await output.capture_frame(frame)
    output.flush()


async def jarvis_answering(seconds: float) -> tuple[HeardSource, _ParticipantAudioOutput]:
    """JARVIS's answer (samples numbered from 1) well under way, with the replay installed."""
    source = HeardSource()
    output = room_output(source)
    replay_paused_audio(output)
    await speak(output, answer(1, seconds))
    await asyncio.sleep(0.4)  # JARVIS is talking, the source's queue is full
    return source, output


def never_played(heard: np.ndarray, seconds: float) -> int:
    """Samples of an answer numbered from 1 that the member never heard."""
    return len(np.setdiff1d(np.arange(1, 1 + int(seconds * RATE)), heard))


@pytest.mark.parametrize("replay", [True, False], ids=["replayed", "livekit-agents-alone"])
async def test_a_cough_pauses_jarvis_and_it_resumes_without_losing_a_word(replay: bool) -> None:
    source = HeardSource()
    output = room_output(source)
    wrapped = replay_paused_audio(output) if replay else None
    await speak(output, answer(1, 1.2))
    await asyncio.sleep(0.4)  # JARVIS is talking, the source's queue is full
    output.pause()  # a cough: livekit-agents pauses the answer
    await asyncio.sleep(0.3)
    output.resume()  # no words followed: a false alarm
    await asyncio.wait_for(output.wait_for_playout(), timeout=5)
    heard = np.array(source.heard)
    skipped = never_played(heard, 1.2)
    if replay:
        assert isinstance(wrapped, ReplayingSource) and wrapped.replayed_s > 0.1
        assert skipped == 0, f"{skipped / RATE * 1000:.0f} ms of the answer never played"
        assert len(heard) - len(np.unique(heard)) <= FRAME, "more than 20 ms of the answer played twice"
        assert np.all(np.diff(heard[heard > 0]) >= -FRAME), "the answer played out of order"
    else:
        # what the replay is for: livekit-agents alone resumes past what its pause cleared
        assert skipped > 0.1 * RATE
    await output.aclose()


async def test_two_coughs_in_a_row_lose_no_word_either() -> None:
    source, output = await jarvis_answering(1.3)
    for _ in range(2):  # the second cough comes while the first pause's audio is replayed
        output.pause()
        await asyncio.sleep(0.3)
        output.resume()
        await asyncio.sleep(0.08)
    await asyncio.wait_for(output.wait_for_playout(), timeout=5)
    heard = np.array(source.heard)
    skipped = never_played(heard, 1.3)
    assert skipped == 0, f"{skipped / RATE * 1000:.0f} ms of the answer never played"
    assert len(heard) - len(np.unique(heard)) <= 2 * FRAME
    await output.aclose()


async def test_a_pause_confirmed_into_a_stop_replays_nothing_into_the_next_answer() -> None:
    source, output = await jarvis_answering(1.2)
    output.pause()  # the member talks over JARVIS...
    await asyncio.sleep(0.1)
    output.clear_buffer()  # ...and keeps talking: livekit-agents interrupts the paused answer
    output.resume()
    await asyncio.wait_for(output.wait_for_playout(), timeout=5)
    source.heard.clear()
    await speak(output, answer(20000, 0.3))  # the reply to what the member said
    await asyncio.wait_for(output.wait_for_playout(), timeout=5)
    assert source.heard and min(source.heard) >= 20000, "the interrupted answer leaked into the next one"
    await output.aclose()
