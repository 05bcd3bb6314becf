"""Fixtures for the Kyutai TTS tests: a tiny random-weight checkpoint written at test time."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
from kyutai_tiny.tts import DEFAULT_VOICE, TinyTTS, write_tiny_tts
from kyutai_tts.engine import TTSEngine, load_voice_file
from kyutai_tts.server import TTSService, build_service, create_app
from kyutai_tts.settings import EngineSettings

from jarvis_local.stack import free_port

torch.set_num_threads(1)

FRENCH_ANSWER = "Bonjour Julie, le cours de yoga est à dix-huit heures, je te réserve une place ?"


@pytest.fixture(scope="session")
def tiny_tts(tmp_path_factory: pytest.TempPathFactory) -> TinyTTS:
    return write_tiny_tts(tmp_path_factory.mktemp("tiny_tts"))


def tiny_engine_env(tiny_tts: TinyTTS) -> dict[str, str]:
    """The environment of a `python -m kyutai_tts.server` serving the tiny TTS and its local voices."""
    return {
        "KYUTAI_TTS_CHECKPOINT": str(tiny_tts.directory),
        "KYUTAI_TTS_VOICE_DIR": str(tiny_tts.voice_dir),
        "KYUTAI_TTS_DEFAULT_VOICE": DEFAULT_VOICE,
        "KYUTAI_TTS_ALLOW_HUB_VOICES": "false",
        "OMP_NUM_THREADS": "1",
    }


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

    def failed(self, error: Exception) -> None:
        self.error = str(error)
        self.done.set()

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.pcm) if self.pcm else np.zeros(0, dtype=np.float32)


@pytest.fixture
def make_engine(tiny_tts: TinyTTS) -> Iterator[object]:
    engines: list[TTSEngine] = []

    def _make(max_streams: int = 4, cfg_alpha: float = 2.0) -> TTSEngine:
        engine = TTSEngine(
            tiny_tts.load(),
            max_streams=max_streams,
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


API_KEY = "gym-secret"


@pytest.fixture(scope="module")
async def server(tiny_tts: TinyTTS) -> AsyncIterator[tuple[str, TTSService]]:
    settings = EngineSettings(
        checkpoint=str(tiny_tts.directory),
        voice_dir=tiny_tts.voice_dir,
        default_voice=DEFAULT_VOICE,
        max_streams=2,
        api_keys=[API_KEY],
        warmup_steps=1,
        allow_hub_voices=False,
    )
    service = await asyncio.to_thread(build_service, settings)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(uv.serve())
    await until(lambda: uv.started)
    yield f"ws://127.0.0.1:{port}", service
    uv.should_exit = True
    await task
    service.engine.stop()


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Polls a condition the engine thread changes (it has no event to await)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)


async def wait_idle(service: TTSService) -> None:
    await until(lambda: service.engine.streams_in_use == 0)
    assert service.engine.streams_in_use == 0
