"""Which Kyutai checkpoints the local stack serves: the real ones when at hand, else tiny ones.

The real models live on Hugging Face. ``choose_speech_models`` (``make demo``) serves them when
``KYUTAI_STT_CHECKPOINT`` / ``KYUTAI_TTS_CHECKPOINT`` name them, or when the hub answers a quick
metadata request (then they are fetched once, with progress, by ``jarvis_local.fetch_models``),
or when a Hugging Face cache already holds them. Otherwise it builds tiny random-weight
checkpoints with moshi's own classes (they speak noise, but every code path runs) and says so.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
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
    offline: bool = False  # True: in the Hugging Face cache, the engines start with HF_HUB_OFFLINE=1

    def engine_env(self) -> tuple[dict[str, str], dict[str, str]]:
        stt = {"KYUTAI_STT_CHECKPOINT": self.stt_checkpoint}
        tts = {"KYUTAI_TTS_CHECKPOINT": self.tts_checkpoint}
        if self.offline:
            stt["HF_HUB_OFFLINE"] = tts["HF_HUB_OFFLINE"] = "1"
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
    from_env = bool(os.environ.get("KYUTAI_STT_CHECKPOINT") and os.environ.get("KYUTAI_TTS_CHECKPOINT"))
    return SpeechModels(stt, tts, None, None, "real", offline=not from_env)


TINY_BANNER = (
    "OFFLINE DEMO SPEECH: real Kyutai weights not found (Hugging Face cache or KYUTAI_*_CHECKPOINT)"
    " and the hub did not answer, so tiny random-weight models run: JARVIS speaks noise and the STT"
    " hears gibberish, but every stage is real and timed."
)


def hub_answers(endpoint: str | None = None, timeout_s: float = 3.0) -> bool:
    """True when the Hugging Face hub answers a metadata request for the STT repo within `timeout_s`."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    url = f"{endpoint.rstrip('/')}/api/models/{REAL_STT}"
    answered: list[bool] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                answered.append(response.status == 200)
        except (urllib.error.URLError, OSError, ValueError):  # refused, DNS, timeout, HTTP 4xx/5xx
            answered.append(False)

    # urlopen's timeout does not bound the DNS lookup (minutes where no resolver answers): a thread does.
    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(timeout_s + 1.0)
    return bool(answered and answered[0])


def choose_speech_models(
    data: Path, *, endpoint: str | None = None, log: Callable[[str], None] = print
) -> tuple[SpeechModels, str]:
    """The demo's checkpoints and the line that says which: real (named, fetched or cached), else tiny.

    Blocking (network, disk, tiny-model building): call it off the event loop.
    """
    stt, tts = os.environ.get("KYUTAI_STT_CHECKPOINT"), os.environ.get("KYUTAI_TTS_CHECKPOINT")
    if stt and tts:
        return SpeechModels(stt, tts, None, None, "real"), f"SPEECH: Kyutai {stt} + {tts} (from your environment)."
    if hub_answers(endpoint):
        from jarvis_local.fetch_models import Fetcher, FetchError, Wanted

        log("the Hugging Face hub answers: fetching the real Kyutai models (first run only, several GB)")
        wanted = Wanted.from_settings()
        try:
            report = Fetcher(endpoint, log, rehash_present=False).all(wanted)
        except FetchError as exc:
            log(f"fetching the real models failed ({exc}); trying the cache, else the tiny models")
        else:
            models = SpeechModels(wanted.stt_repo, wanted.tts_repo, None, None, "real", offline=True)
            return models, (
                f"SPEECH: Kyutai {models.stt_checkpoint} + {models.tts_checkpoint} (real weights;"
                f" {len(report.fetched)} files fetched, {len(report.present)} already present)."
            )
    cached = real_models()
    if cached is not None:
        return cached, f"SPEECH: Kyutai {cached.stt_checkpoint} + {cached.tts_checkpoint} (real weights, cached)."
    log("building tiny random-weight Kyutai checkpoints (first run only)")
    return tiny_models(data / "tiny-models"), TINY_BANNER


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
