"""The batched engine speaks exactly as moshi's own TTSModel.generate, stream by stream."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from kyutai_tiny.tts import DEFAULT_VOICE, OTHER_VOICE, TinyTTS
from kyutai_tts.engine import EngineFull, StreamHandle, TTSEngine, VoiceError, load_voice_file

from .conftest import FRENCH_ANSWER, RecordingSink, reference_generate

SAMPLE_TOLERANCE = 1e-4  # batched Mimi decoding is not bit-identical to one stream alone


def feed(
    handle: StreamHandle, text: str, pause_s: float = 0.005, end: bool = True, stall_s: float = 0.0
) -> threading.Thread:
    """Sends the words one by one, like an LLM streaming its answer (optionally stalling mid-way)."""

    def run() -> None:
        words = text.split()
        for index, word in enumerate(words):
            handle.push_text(word)
            time.sleep(stall_s if index == len(words) // 2 else pause_s)
        if end:
            handle.end_text()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def assert_same_as_reference(sink: RecordingSink, reference: tuple[np.ndarray, np.ndarray, list]) -> None:
    codes, pcm, transcript = reference
    assert sink.error is None
    assert np.array_equal(np.stack(sink.frames), codes), "codes differ from TTSModel.generate"
    assert sink.samples.shape == pcm.shape
    assert np.abs(sink.samples - pcm).max() < SAMPLE_TOLERANCE
    frame_rate = 12.5
    assert [(text, round(start * frame_rate)) for text, start, _ in sink.words] == [
        (text, step) for text, step in transcript
    ]


def test_one_stream_fed_word_by_word_equals_moshi_generate(make_engine, tiny_tts: TinyTTS) -> None:
    engine: TTSEngine = make_engine(max_streams=4)
    sink = RecordingSink()
    handle = engine.open(sink, temperature=0.6, seed=1234)
    feed(handle, FRENCH_ANSWER).join()
    assert sink.done.wait(60)

    reference = reference_generate(
        tiny_tts, FRENCH_ANSWER, voice=tiny_tts.voice_path(DEFAULT_VOICE), seed=1234, temperature=0.6
    )
    assert_same_as_reference(sink, reference)
    # Word timestamps follow the words, and audio continues after the last one starts.
    starts = [start for _, start, _ in sink.words]
    assert starts == sorted(starts) and len(sink.words) == len(FRENCH_ANSWER.split())
    assert len(sink.samples) / 24_000 > starts[-1]


def test_four_streams_started_at_different_times_each_equal_their_reference(make_engine, tiny_tts: TinyTTS) -> None:
    engine: TTSEngine = make_engine(max_streams=4)
    texts = [
        FRENCH_ANSWER,
        "Ta séance de musculation commence dans dix minutes.",
        "Le coach Karim est disponible jeudi soir.",
        "Bravo, tu as fait trois séances cette semaine !",
    ]
    voices = [DEFAULT_VOICE, OTHER_VOICE, OTHER_VOICE, DEFAULT_VOICE]
    temperatures = [0.6, 0.0, 0.8, 0.6]
    sinks = [RecordingSink() for _ in texts]
    feeders = []
    for index, text in enumerate(texts):
        conditioning = engine.conditioning_for(load_voice_file(tiny_tts.voice_path(voices[index])), 2.0)
        handle = engine.open(sinks[index], temperature=temperatures[index], seed=100 + index, conditioning=conditioning)
        # Different pacing per stream: some slots wait for words while others step; the second
        # one's LLM stalls mid-answer, so its slot sits out many batch steps.
        feeders.append(feed(handle, text, pause_s=0.002 * (index + 1), stall_s=0.4 if index == 1 else 0.0))
        if index < len(texts) - 1:
            assert sinks[index].first_audio.wait(30)  # the next one joins a batch already speaking
    for feeder in feeders:
        feeder.join()
    for sink in sinks:
        assert sink.done.wait(60)
    # They did share batches, at different positions in their answers. Usually all four at once;
    # on a loaded box the first may be done before the fourth starts (CI, 2026-12-04: at most 3).
    assert max(engine.batch_sizes) >= 2, list(engine.batch_sizes)

    for index, text in enumerate(texts):
        reference = reference_generate(
            tiny_tts,
            text,
            voice=tiny_tts.voice_path(voices[index]),
            seed=100 + index,
            temperature=temperatures[index],
        )
        assert_same_as_reference(sinks[index], reference)


def test_first_audio_leaves_before_the_last_word_arrives(make_engine) -> None:
    engine: TTSEngine = make_engine(max_streams=2)
    sink = RecordingSink()
    handle = engine.open(sink, temperature=0.6, seed=5)
    words = FRENCH_ANSWER.split()
    half = len(words) // 2
    for word in words[:half]:
        handle.push_text(word)
    # Nothing else is sent until audio comes out.
    assert sink.first_audio.wait(30), "no audio while the LLM is still writing"
    assert not sink.done.is_set()
    for word in words[half:]:
        handle.push_text(word)
    handle.end_text()
    assert sink.done.wait(60)
    assert sink.error is None and [w for w, _, _ in sink.words] == words


def test_closing_a_stream_stops_it_within_a_frame_and_leaves_others_unchanged(make_engine, tiny_tts: TinyTTS) -> None:
    engine: TTSEngine = make_engine(max_streams=3)
    keep = [RecordingSink(), RecordingSink()]
    cancelled = RecordingSink()
    handles = [engine.open(sink, temperature=0.6, seed=20 + i) for i, sink in enumerate(keep)]
    victim = engine.open(cancelled, temperature=0.6, seed=99)
    feeders = [feed(handle, FRENCH_ANSWER) for handle in handles]
    feed(victim, FRENCH_ANSWER + " " + FRENCH_ANSWER, end=False).join()
    assert cancelled.first_audio.wait(30)
    victim.close()
    frames_at_close = len(cancelled.pcm)  # read after close() returns: the test thread may lose the CPU before it
    deadline = time.monotonic() + 5
    while engine.streams_in_use > 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert engine.streams_in_use <= 2  # the slot is free again
    assert len(cancelled.pcm) <= frames_at_close + 1  # at most the frame already in flight
    steps_after_close = engine.total_steps
    for feeder in feeders:
        feeder.join()
    for sink in keep:
        assert sink.done.wait(60)
    assert engine.total_steps > steps_after_close + 5
    assert len(cancelled.pcm) <= frames_at_close + 1 and not cancelled.done.is_set()

    for index, sink in enumerate(keep):
        reference = reference_generate(
            tiny_tts, FRENCH_ANSWER, voice=tiny_tts.voice_path(DEFAULT_VOICE), seed=20 + index, temperature=0.6
        )
        assert_same_as_reference(sink, reference)


def test_a_full_engine_refuses_at_once_and_a_closed_stream_frees_its_slot(make_engine) -> None:
    engine: TTSEngine = make_engine(max_streams=2)
    first = engine.open(RecordingSink(), temperature=0.6)
    engine.open(RecordingSink(), temperature=0.6)
    started = time.monotonic()
    with pytest.raises(EngineFull, match="no free channels"):
        engine.open(RecordingSink(), temperature=0.6)
    assert time.monotonic() - started < 0.1
    first.close()
    deadline = time.monotonic() + 5
    while engine.streams_in_use == 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    engine.open(RecordingSink(), temperature=0.6)  # no exception: the slot was freed


def test_bad_voices_and_guidance_are_typed_errors(make_engine) -> None:
    engine: TTSEngine = make_engine(max_streams=1)
    with pytest.raises(VoiceError, match="cfg_alpha"):
        engine.conditioning_for(None, 2.7)
    with pytest.raises(VoiceError, match=r"\[1, C, T\]"):
        engine.conditioning_for(torch.zeros(8, 10), 2.0)
    with pytest.raises(VoiceError, match="channels"):
        engine.conditioning_for(torch.zeros(1, 3, 10), 2.0)


def test_each_extra_stream_costs_its_streaming_state_never_the_weights(make_engine) -> None:
    one: TTSEngine = make_engine(max_streams=1)
    four: TTSEngine = make_engine(max_streams=4)
    per_stream = one.state_bytes()
    assert per_stream > 0
    assert four.state_bytes() == pytest.approx(4 * per_stream, rel=0.01)  # a few shared scalars aside


def test_streams_joining_and_leaving_around_a_long_answer_leave_it_unchanged(make_engine, tiny_tts: TinyTTS) -> None:
    """Churn: short answers start, finish or are dropped in the slots beside a long one."""
    engine: TTSEngine = make_engine(max_streams=3)
    long_text = FRENCH_ANSWER + " " + FRENCH_ANSWER
    main = RecordingSink()
    main_feeder = feed(engine.open(main, temperature=0.6, seed=77), long_text, pause_s=0.01)
    others: list[RecordingSink] = []
    for round_index in range(6):
        sink = RecordingSink()
        try:
            handle = engine.open(sink, temperature=0.8, seed=round_index)
        except EngineFull:
            time.sleep(0.05)
            continue
        others.append(sink)
        if round_index % 2:
            feed(handle, "Merci, à bientôt !").join()
            sink.done.wait(30)
        else:
            feed(handle, FRENCH_ANSWER, end=False).join()
            sink.first_audio.wait(30)
            handle.close()  # dropped mid-answer
    main_feeder.join()
    assert main.done.wait(60)
    assert len(others) >= 4 and any(sink.done.is_set() for sink in others)
    assert max(engine.batch_sizes) >= 2  # they really shared batches with the long answer
    reference = reference_generate(
        tiny_tts, long_text, voice=tiny_tts.voice_path(DEFAULT_VOICE), seed=77, temperature=0.6
    )
    assert_same_as_reference(main, reference)
