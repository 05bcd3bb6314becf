"""One stream's input ends only that stream; a dead engine thread is reported so the process exits."""

from __future__ import annotations

import threading

import pytest
from kyutai_tts.engine import TTSEngine

from .conftest import RecordingSink


def test_a_malformed_break_ends_only_its_stream(make_engine) -> None:
    engine: TTSEngine = make_engine(max_streams=2)
    bad, good = RecordingSink(), RecordingSink()
    bad_handle = engine.open(bad, temperature=0.0, seed=1)
    good_handle = engine.open(good, temperature=0.0, seed=1)
    bad_handle.push_text('Salut <break time="1xs"/> toi')
    for word in "Bonjour Julie à demain".split():
        good_handle.push_text(word)
    good_handle.end_text()
    assert bad.done.wait(10) and good.done.wait(30)
    assert bad.error is not None and "could not be read" in bad.error
    assert good.error is None and good.pcm
    assert engine.alive


def test_a_dead_engine_thread_is_reported(make_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine: TTSEngine = make_engine(max_streams=1)
    crashed = threading.Event()
    engine.on_crash = crashed.set

    def broken_step(runnable: object) -> None:
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(engine, "_step", broken_step)
    sink = RecordingSink()
    handle = engine.open(sink, temperature=0.0, seed=1)
    for word in "Bonjour Julie".split():
        handle.push_text(word)
    handle.end_text()
    assert crashed.wait(10) and engine.crashed and sink.done.wait(5)
    assert sink.error == "engine failure"
