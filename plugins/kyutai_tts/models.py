"""Names the plugin exposes: voices and the audio format of Kyutai's TTS."""

from __future__ import annotations

from typing import Literal

from .settings import DEFAULT_FRENCH_VOICE

SAMPLE_RATE = 24_000
NUM_CHANNELS = 1

# A few French voices of kyutai/tts-voices (any name of that repo works, or a local
# `.safetensors` embedding file).
FrenchVoice = Literal[
    "unmute-prod-website/fabieng-enhanced-v2.wav",
    "cml-tts/fr/12080_11650_000047-0001.wav",
    "cml-tts/fr/1591_1028_000108-0004.wav",
]

DEFAULT_VOICE: FrenchVoice = DEFAULT_FRENCH_VOICE  # type: ignore[assignment]
