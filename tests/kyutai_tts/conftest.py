"""Fixtures for the Kyutai TTS tests: a tiny random-weight checkpoint written at test time."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from kyutai_tiny.tts import DEFAULT_VOICE, TinyTTS, write_tiny_tts
from kyutai_tts.engine import TTSEngine, load_voice_file

torch.set_num_threads(1)

FRENCH_ANSWER = "Bonjour Julie, le cours de yoga est à dix-huit heures, je te réserve une place ?"


@pytest.fixture(scope="session")
def tiny_tts(tmp_path_factory: pytest.TempPathFactory) -> TinyTTS:
    return write_tiny_tts(tmp_path_factory.mktemp("tiny_tts"))


@dataclass
class RecordingSink:
    """A stream's output as the engine hands it over (from the engine thread)."""

    pcm: list[np.ndarray] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    words: list[tuple[str, float, float]] = field(default_factory=list)
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    first_audio: threading.Event = field(default_factory=threading.Event)

    def audio(self, pcm: np.ndarray) -> None:
        self.pcm.append(pcm)
        self.first_audio.set()

    def codes(self, frame: np.ndarray) -> None:
        self.frames.append(frame)

    def word(self, text: str, start_s: float, stop_s: float) -> None:
        self.words.append((text, start_s, stop_s))

    def finished(self) -> None:
        self.done.set()

    def failed(self, message: str) -> None:
        self.error = message
        self.done.set()

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.pcm) if self.pcm else np.zeros(0, dtype=np.float32)


@pytest.fixture
def make_engine(tiny_tts: TinyTTS) -> Iterator[object]:
    engines: list[TTSEngine] = []

    def _make(capacity: int = 4, cfg_alpha: float = 2.0) -> TTSEngine:
        engine = TTSEngine(
            tiny_tts.load(),
            capacity=capacity,
            default_voice=load_voice_file(tiny_tts.voice_path(DEFAULT_VOICE)),
            default_cfg_alpha=cfg_alpha,
        )
        engine.warmup(2)
        engine.start()
        engines.append(engine)
        return engine

    yield _make
    for engine in engines:
        engine.stop()


def reference_generate(
    tiny: TinyTTS, text: str, *, voice: Path, seed: int, temperature: float, cfg_alpha: float = 2.0
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """moshi's own `TTSModel.generate` on one stream: (codes [T, 1+Q], pcm from the first audio frame, transcript).

    Audio is decoded as `TTSModel.simple_generate` does, from `delay_steps` on, one frame at a time.
    """
    model = tiny.load(temp=temperature)
    entries = model.prepare_script([text], padding_between=1)
    attributes = model.make_condition_attributes([voice], cfg_coef=cfg_alpha)
    torch.manual_seed(seed)
    result = model.generate([entries], [attributes])
    codes = torch.cat([frame[:, :, 0] for frame in result.frames]).numpy()
    with model.mimi.streaming(1), torch.no_grad():
        pcm = [
            torch.clip(model.mimi.decode(frame[:, 1:, :]), -1, 1)[0, 0].numpy()
            for frame in result.frames[model.delay_steps :]
        ]
    return codes, np.concatenate(pcm), result.all_transcripts[0]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
