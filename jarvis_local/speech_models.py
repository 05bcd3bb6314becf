"""Which Kyutai checkpoints the local stack serves: the real ones when at hand, else tiny ones.

The real models live on Hugging Face. When they are already on this machine (a Hugging Face
cache with them, or ``KYUTAI_STT_CHECKPOINT`` / ``KYUTAI_TTS_CHECKPOINT`` pointing at local
directories), the demo serves them; otherwise it builds tiny random-weight checkpoints with
moshi's own classes (they speak noise, but every code path runs) and says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REAL_STT = "kyutai/stt-1b-en_fr-candle"
REAL_TTS = "kyutai/tts-1.6b-en_fr"


@dataclass(frozen=True)
class SpeechModels:
    stt_checkpoint: str
    tts_checkpoint: str
    tts_voice_dir: Path | None
    tts_default_voice: str | None
    weights: str  # "tiny" | "real"

    def engine_env(self) -> tuple[dict[str, str], dict[str, str]]:
        stt = {"KYUTAI_STT_CHECKPOINT": self.stt_checkpoint}
        tts = {"KYUTAI_TTS_CHECKPOINT": self.tts_checkpoint}
        if self.tts_voice_dir is not None:
            tts["KYUTAI_TTS_VOICE_DIR"] = str(self.tts_voice_dir)
            tts["KYUTAI_TTS_ALLOW_HUB_VOICES"] = "false"
        if self.tts_default_voice is not None:
            tts["KYUTAI_TTS_DEFAULT_VOICE"] = self.tts_default_voice
        return stt, tts


def _in_hf_cache(repo: str) -> bool:
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    cache = Path(os.environ.get("HF_HUB_CACHE") or hf_home / "hub")
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots"
    return snapshot.is_dir() and any(snapshot.iterdir())


def real_models() -> SpeechModels | None:
    stt = os.environ.get("KYUTAI_STT_CHECKPOINT") or (REAL_STT if _in_hf_cache(REAL_STT) else None)
    tts = os.environ.get("KYUTAI_TTS_CHECKPOINT") or (REAL_TTS if _in_hf_cache(REAL_TTS) else None)
    if stt is None or tts is None:
        return None
    return SpeechModels(stt, tts, None, None, "real")


def tiny_models(directory: Path) -> SpeechModels:
    """Tiny random-weight checkpoints in the real layout, built once under ``directory``."""
    from kyutai_tiny.stt import write_tiny_stt
    from kyutai_tiny.tts import DEFAULT_VOICE, write_tiny_tts

    stt_dir, tts_dir = directory / "stt", directory / "tts"
    if not (stt_dir / "config.json").exists():
        write_tiny_stt(stt_dir)
    if not (tts_dir / "config.json").exists():
        write_tiny_tts(tts_dir)
    # write_tiny_tts keeps its voices in <dir>/voices
    return SpeechModels(str(stt_dir), str(tts_dir), tts_dir / "voices", DEFAULT_VOICE, "tiny")
