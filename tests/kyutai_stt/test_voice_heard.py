"""A member's sentence is not cut in two while their voice is still heard.

The tiny checkpoint's pause head fires on any silent frame, so a breath between two halves of a
sentence ends the turn there: JARVIS starts answering half a question, and the second half comes
back as a turn of its own. Given a `voice_heard` probe (in production the agent's silero VAD),
the end of turn waits while the probe hears the member, a step at a time, never longer than
`EndOfTurnOptions.hold_while_voiced_s` since its last word. The probes here are the test's own clock: "heard until
the sentence's last sample", and "heard all along" (singing in the gym's music).
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import numpy as np
from kyutai_stt import STT, EndOfTurnOptions
from kyutai_stt.server import SttServer
from livekit.agents.stt import SpeechEventType

from .conftest import server_url, speech
from .test_plugin import FAST_FAIL, assert_turns_well_formed, to_frames

RATE = 24000
CHUNK = 240  # 10 ms, pushed in real time as the room would
BREATH_S = 0.24  # three whole model frames of silence: the tiny head fires on them
TAIL_S = 2.5
HOLD_S = 0.4
Probe = Literal["none", "until the sentence ends", "all along"]


async def member_says_a_sentence_with_a_breath(server: SttServer, probe: Probe) -> tuple[list[float], float]:
    """When each turn ended (monotonic), and when the member's voice stopped."""
    sentence = np.concatenate([speech(1.6, seed=11), np.zeros(int(RATE * BREATH_S), np.float32), speech(1.6, seed=12)])
    audio = np.concatenate([sentence, np.zeros(int(RATE * TAIL_S), np.float32)])
    started = time.monotonic()
    voice_stops = started + len(sentence) / RATE
    heard = {
        "none": None,
        "until the sentence ends": lambda: time.monotonic() < voice_stops,
        "all along": lambda: True,
    }[probe]
    stt = STT(url=server_url(server), end_of_turn=EndOfTurnOptions(hold_while_voiced_s=HOLD_S), voice_heard=heard)
    stream = stt.stream(conn_options=FAST_FAIL)
    events, ended_at = [], []

    async def read() -> None:
        async for event in stream:
            events.append(event)
            if event.type == SpeechEventType.END_OF_SPEECH:
                ended_at.append(time.monotonic())

    reader = asyncio.create_task(read())
    for index, frame in enumerate(to_frames(audio, RATE, CHUNK)):
        stream.push_frame(frame)
        # Real time: the engine's steps come back while the member is still talking.
        await asyncio.sleep(max(0.0, started + (index + 1) * CHUNK / RATE - time.monotonic()))
    await stream.aclose()
    reader.cancel()
    assert_turns_well_formed(events)
    return ended_at, voice_stops


def cuts(ended_at: list[float], voice_stops: float) -> int:
    """Turn ends while the member was still talking. (Random weights may also give a stray word in
    the silence after the sentence, and a turn of its own: those are not cuts.)"""
    return sum(at < voice_stops for at in ended_at)


async def test_without_a_voice_probe_a_breath_mid_sentence_ends_the_turn(stt_server: SttServer) -> None:
    ended_at, voice_stops = await member_says_a_sentence_with_a_breath(stt_server, "none")
    # Else the tiny head no longer cuts at the breath, and this file proves nothing.
    assert cuts(ended_at, voice_stops) >= 1, f"the breath did not cut the sentence: {ended_at}, {voice_stops}"


async def test_the_turn_waits_while_the_members_voice_is_heard(stt_server: SttServer) -> None:
    ended_at, voice_stops = await member_says_a_sentence_with_a_breath(stt_server, "until the sentence ends")
    assert cuts(ended_at, voice_stops) == 0, "the breath cut the member's sentence in two"
    assert ended_at, "the sentence's turn never ended"


async def test_a_voice_heard_all_along_holds_the_turn_no_longer_than_the_bound(stt_server: SttServer) -> None:
    """The breath's hold lets go (the head falls as the member talks on); the sentence's end is
    held HOLD_S, then ends the turn all the same."""
    held, voice_stops = await member_says_a_sentence_with_a_breath(stt_server, "all along")
    assert cuts(held, voice_stops) == 0 and held, "the breath cut the member's sentence in two"
    free, free_voice_stops = await member_says_a_sentence_with_a_breath(stt_server, "until the sentence ends")
    delay_held, delay_free = held[0] - voice_stops, free[0] - free_voice_stops
    print(f"turn end after the voice stopped: {delay_free:.2f} s, held all along {delay_held:.2f} s")
    assert HOLD_S - 0.15 < delay_held - delay_free < HOLD_S + 0.5, (delay_held, delay_free)
