"""The barge-in's confirmation run, on silero itself: the member says "Attends, …" over JARVIS →
the voiced run reaches the confirmation one VAD window sooner than silero's own count; a gym
noise (white-noise burst, a dropped weight's thud) never builds a run at all."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import inference
from livekit.agents import vad as lk_vad

from agent.barge_in import BargeInSettings, VoicedRun
from bench.barge_in import NOISES, first_voiced, sox_noise
from jarvis_local.kiosk_sim import SAMPLE_RATE, synthesize_french

FRAME = SAMPLE_RATE // 50  # the worker's 20 ms input frames


async def windows(pcm: np.ndarray) -> list[lk_vad.VADEvent]:
    """Silero's scored windows over half a second of silence, `pcm`, then silence."""
    stream = inference.VAD(model="silero", min_speech_duration=0.03).stream()
    silence = np.zeros(SAMPLE_RATE // 2, dtype=np.int16)
    audio = np.concatenate([silence, pcm, silence])
    for start in range(0, len(audio) - FRAME + 1, FRAME):
        stream.push_frame(rtc.AudioFrame(audio[start:start + FRAME].tobytes(), SAMPLE_RATE, 1, FRAME))
    stream.end_input()
    scored = [event async for event in stream if event.type == lk_vad.VADEventType.INFERENCE_DONE]
    await stream.aclose()
    return scored


def first_confirmed(events: list[lk_vad.VADEvent], seconds: list[float], after_s: float) -> float | None:
    return next((e.timestamp for e, s in zip(events, seconds, strict=True) if s >= after_s), None)


def test_member_voice_confirms_a_window_sooner_than_silero_counts_it() -> None:
    settings = BargeInSettings()
    events = asyncio.run(windows(first_voiced(synthesize_french("Attends, attends, j'ai une autre question."))))
    run = VoicedRun(settings.confirm_min_probability)
    ours = first_confirmed(events, [run.update(e) for e in events], settings.confirm_after_s)
    silero = first_confirmed(events, [e.raw_accumulated_speech for e in events], settings.confirm_after_s)
    assert ours is not None and silero is not None
    assert ours - 0.5 <= settings.confirm_after_s + 0.15, f"confirmed {ours - 0.5:.3f} s after the first word"
    assert silero - ours == pytest.approx(0.032, abs=0.001)


@pytest.mark.parametrize("noise", ["burst", "thud", "clap", "cough"])
@pytest.mark.parametrize("level_db", [-20.0, -6.0])
def test_a_gym_noise_never_builds_a_voiced_run(noise: str, level_db: float) -> None:
    run = VoicedRun(BargeInSettings().confirm_min_probability)
    events = asyncio.run(windows(first_voiced(sox_noise(NOISES[noise], level_db), level=30)))
    assert max(run.update(e) for e in events) < BargeInSettings().confirm_after_s
