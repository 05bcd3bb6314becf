"""Voice names → voice embeddings, as moshi-server resolves its `voice` query parameter.

A name is a path in kyutai/tts-voices without the model suffix (e.g.
"unmute-prod-website/fabieng-enhanced-v2.wav"). It is looked up in the local voice folder first
(`<name>.<sig>@<epoch>.safetensors`), then in the Hugging Face voice repo through moshi's own
`TTSModel.get_voice_path` (served from the local cache when HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import torch
from moshi.models.tts import TTSModel

from .engine import Conditioning, TTSEngine, VoiceError, load_voice_file

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\-/]*$")


class VoiceBank:
    def __init__(self, tts_model: TTSModel, voice_dir: Path | None, *, allow_hub: bool = True) -> None:
        self._tts = tts_model
        self._voice_dir = voice_dir.resolve() if voice_dir is not None else None
        self._allow_hub = allow_hub
        self._embeddings: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def embedding(self, name: str) -> torch.Tensor:
        """`speaker_wavs` [1, C, T] for a voice name; VoiceError when unknown (blocking: call off the loop)."""
        if not _SAFE_NAME.match(name) or ".." in name.split("/"):
            raise VoiceError(f"invalid voice name {name!r}")
        with self._lock:
            cached = self._embeddings.get(name)
        if cached is not None:
            return cached
        embedding = load_voice_file(self._find(name))
        with self._lock:
            self._embeddings[name] = embedding
        return embedding

    def _find(self, name: str) -> Path:
        suffix = self._tts.voice_suffix
        if self._voice_dir is not None:
            for candidate in (self._voice_dir / f"{name}{suffix}", self._voice_dir / name):
                resolved = candidate.resolve()
                inside = resolved.is_relative_to(self._voice_dir)
                if inside and resolved.is_file() and resolved.suffix == ".safetensors":
                    return resolved
        if self._allow_hub:
            try:
                return self._tts.get_voice_path(name)
            except Exception as exc:  # the hub client raises many kinds (offline, missing, HTTP)
                raise VoiceError(f"unknown voice {name!r}") from exc
        raise VoiceError(f"unknown voice {name!r}")

    def conditioning(self, engine: TTSEngine, name: str, cfg_alpha: float | None) -> Conditioning:
        return engine.conditioning_for(self.embedding(name), cfg_alpha)
