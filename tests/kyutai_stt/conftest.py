"""Fixtures of the Kyutai STT tests: tiny checkpoints, an in-process engine server, test audio.

Everything is built at test time (no weights or audio files in the repository): the tiny
random-weight checkpoint by kyutai_tiny.stt, speech by espeak-ng (French voice) or synthetically.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("NO_TORCH_COMPILE", "1")
torch.set_num_threads(1)

from kyutai_stt.server import SttServer, build_server  # noqa: E402
from kyutai_stt.settings import EngineSettings  # noqa: E402
from kyutai_tiny.common import synthetic_speech  # noqa: E402
from kyutai_tiny.stt import write_tiny_stt  # noqa: E402

from ..conftest import skip_or_fail  # noqa: E402

MAX_STREAMS = 4


@pytest.fixture(scope="session")
def tiny_stt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny STT checkpoint with the four end-of-speech heads, in the real repo layout."""
    return write_tiny_stt(tmp_path_factory.mktemp("tiny-stt")).parent


@pytest.fixture(scope="session")
def tiny_stt_no_heads_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kind of checkpoint without end-of-speech heads (like kyutai/stt-1b-en_fr)."""
    return write_tiny_stt(tmp_path_factory.mktemp("tiny-stt-no-heads"), extra_heads=False).parent


async def start_server(checkpoint_dir: Path, max_streams: int = MAX_STREAMS, **overrides: Any) -> SttServer:
    settings = EngineSettings(
        checkpoint=str(checkpoint_dir),
        max_streams=max_streams,
        device="cpu",
        **({"port": 0, "warmup_steps": 1} | overrides),
    )
    server = build_server(settings)
    await server.start()
    return server


@pytest.fixture(scope="session")
async def stt_server(tiny_stt_dir: Path) -> AsyncIterator[SttServer]:
    """One engine server on loopback shared by the session's tests (4 slots)."""
    server = await start_server(tiny_stt_dir)
    yield server
    await server.stop()


def server_url(server: SttServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def speech(seconds: float = 2.0, seed: int = 42) -> np.ndarray:
    """Speech-like audio at 24 kHz, float32."""
    return synthetic_speech(seconds, 24000, seed)


def espeak_french(text: str, directory: Path) -> tuple[np.ndarray, int]:
    """French speech synthesised by espeak-ng at test time: (int16 samples, sample rate)."""
    if shutil.which("espeak-ng") is None:
        skip_or_fail("espeak-ng is not installed")
    path = directory / "phrase.wav"
    subprocess.run(["espeak-ng", "-v", "fr", "-w", str(path), text], check=True, capture_output=True)
    with wave.open(str(path)) as handle:
        rate = handle.getframerate()
        samples = np.frombuffer(handle.readframes(handle.getnframes()), dtype=np.int16)
    return samples, rate
