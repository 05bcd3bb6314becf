"""What the agent's turn timing reads from the STT: where the member's words lie in time, and a
FINAL on demand.

LiveKit measures a turn's `end_of_turn` stage from where the member stopped speaking: the FINAL's
`end_time` (seconds since the session's audio input started, the stream's `start_time_offset`
included) and END_OF_SPEECH's `speech_end_time` (wall clock). The speech here has no inner pause:
the tiny checkpoint's pause head fires on any silent frame.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from kyutai_stt import STT
from kyutai_stt.server import SttServer
from livekit.agents.stt import SpeechEvent, SpeechEventType

from .conftest import server_url, speech
from .test_plugin import FAST_FAIL, assert_turns_well_formed, collect, to_frames

RATE = 24000


def only(events: list[SpeechEvent], kind: SpeechEventType) -> SpeechEvent:
    matching = [e for e in events if e.type == kind]
    assert len(matching) == 1, f"one {kind.value} expected, got {[e.type.value for e in events]}"
    return matching[0]


async def test_a_final_says_where_the_members_words_began_and_ended(stt_server: SttServer) -> None:
    spoken_s = 2.0
    audio = np.concatenate([speech(spoken_s, seed=7), np.zeros(RATE * 2, np.float32)])
    stream = STT(url=server_url(stt_server)).stream(conn_options=FAST_FAIL)
    # The session's audio input started 5 s before this stream (what the agent session sets).
    input_started_at = time.time() - 5.0
    stream.start_time_offset = 5.0
    # The stream reads its clock when its task starts: let it start now, not after the frames are
    # pushed (a busy CI box took 0.7 s to push them).
    await asyncio.sleep(0)
    for frame in to_frames(audio, RATE, 480):
        stream.push_frame(frame)
    # The member keeps the mic open: the plugin's own end of turn closes it, no end_input.
    events = await collect(stream, 30, until=SpeechEventType.END_OF_SPEECH)
    await stream.aclose()

    assert_turns_well_formed(events)
    final = only(events, SpeechEventType.FINAL_TRANSCRIPT).alternatives[0]
    assert final.words
    last_word = final.words[-1]
    # In the stream's time base, inside the audio pushed, and the last word has a length.
    assert 5.0 <= final.start_time < final.end_time <= 5.0 + len(audio) / RATE
    assert final.end_time == last_word.end_time and last_word.end_time > last_word.start_time
    # The events' own times are wall-clock, on the same axis (what END_OF_SPEECH's anchor needs).
    start = only(events, SpeechEventType.START_OF_SPEECH)
    end = only(events, SpeechEventType.END_OF_SPEECH)
    assert start.speech_start_time is not None and end.speech_end_time is not None
    assert input_started_at < start.speech_start_time < end.speech_end_time <= end.created_at
    # The last word's end on the wall clock, or the moment the END_OF_SPEECH was made when that is
    # earlier: the audio here is pushed faster than real time, so the words end "in the future".
    assert abs(end.speech_end_time - min(end.created_at, input_started_at + final.end_time)) < 0.1


async def test_flush_gives_the_final_at_once_mid_speech(stt_server: SttServer) -> None:
    """The agent's VAD or turn detector ends the turn before the plugin does: flush() right after
    the speech (no silence after it, so the model alone would never end the turn) gives the FINAL
    with the words, then END_OF_SPEECH, and the stream stays open for the next turn."""
    spoken_s = 2.0
    stream = STT(url=server_url(stt_server)).stream(conn_options=FAST_FAIL)
    for frame in to_frames(speech(spoken_s, seed=11), RATE, 480):
        stream.push_frame(frame)
    stream.flush()
    flushed_at = time.monotonic()
    # (before: no FINAL at all; the tiny model takes 2.5 s here for the audio and the flush, the
    # bound leaves room for a loaded machine)
    events = await collect(stream, 15, until=SpeechEventType.END_OF_SPEECH)
    final_after_s = time.monotonic() - flushed_at

    assert_turns_well_formed(events)
    final = only(events, SpeechEventType.FINAL_TRANSCRIPT).alternatives[0]
    assert final.text and final.words
    assert 0.0 <= final.start_time < final.end_time <= spoken_s + 0.1
    print(f"flush -> END_OF_SPEECH in {final_after_s:.2f} s")

    # The next turn goes through the same stream.
    for frame in to_frames(speech(1.5, seed=12), RATE, 480):
        stream.push_frame(frame)
    stream.flush()
    events = await collect(stream, 15, until=SpeechEventType.END_OF_SPEECH)
    assert only(events, SpeechEventType.FINAL_TRANSCRIPT).alternatives[0].start_time >= final.end_time
    await stream.aclose()
