"""Settings of the TTS engine server and of the LiveKit plugin, read from the environment."""

from __future__ import annotations

from pathlib import Path

from kyutai_common.settings import EngineSettingsBase, PluginSettingsBase
from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

# Kyutai's French voice used by Unmute in production (in kyutai/tts-voices).
DEFAULT_FRENCH_VOICE = "unmute-prod-website/fabieng-enhanced-v2.wav"


class EngineSettings(EngineSettingsBase):
    """`python -m kyutai_tts.server`: one process per GPU (CPU when none)."""

    model_config = SettingsConfigDict(env_prefix="KYUTAI_TTS_", extra="ignore", populate_by_name=True)

    checkpoint: str = "kyutai/tts-1.6b-en_fr"
    port: int = 8089
    # KYUTAI_TTS_CAPACITY is this setting's former name, still read.
    max_streams: int = Field(
        default=32,
        ge=1,
        le=512,
        validation_alias=AliasChoices("max_streams", "KYUTAI_TTS_MAX_STREAMS", "KYUTAI_TTS_CAPACITY"),
    )
    # Voices: a local folder of `<voice>.wav.<sig>@<epoch>.safetensors` files, searched first, then
    # the Hugging Face voice repo (served from the local HF cache when HF_HUB_OFFLINE=1).
    voice_dir: Path | None = None
    voice_repo: str = "kyutai/tts-voices"
    allow_hub_voices: bool = True  # False: only voices of voice_dir (no hub lookups at all)
    default_voice: str = DEFAULT_FRENCH_VOICE
    # Audio codebooks generated: fewer is faster, more is better audio (Kyutai serves 24 of 32).
    n_q: int | None = Field(default=None, ge=1)
    # Guidance as the CFG-distilled checkpoint defines it (one of its listed values).
    cfg_alpha: float = 2.0
    temperature: float = Field(default=0.6, ge=0.0, le=5.0)
    top_k: int = Field(default=250, ge=1)
    top_k_text: int = Field(default=25, ge=1)
    padding_between: int = Field(default=1, ge=0)  # pads forced after each word: clearer articulation
    padding_bonus: float = 0.0  # added to the pad logit: > 0 speaks slower, < 0 faster
    max_padding: int = Field(default=8, ge=1)
    initial_padding: int = Field(default=2, ge=0)
    final_padding: int = Field(default=4, ge=0)
    max_steps: int = Field(default=3000, ge=16)  # one stream's longest answer: 240 s at 12.5 Hz
    warmup_steps: int = Field(default=3, ge=1)
    # On a GPU the depformer (32 codebooks per frame) replays as one CUDA graph, captured at warmup.
    # False runs it eagerly: for a driver where the capture fails (the engine also falls back alone).
    cuda_graphs: bool = True
    # A client that sends no text (empty Text, Voice and other messages do not count) for this
    # long before its Eos holds a slot for nothing: drop it.
    idle_timeout_s: float = Field(default=30.0, gt=0)
    # Text limits, in characters: moshi's script parsing is quadratic in one Text's length, and
    # it runs in the engine thread every stream shares. The plugin sends word by word.
    max_text_chars: int = Field(default=1000, ge=16)  # one Text message
    max_stream_text_chars: int = Field(default=8000, ge=16)  # all Text of one stream: over max_steps of speech
    # Messages waiting to be sent to one client (Audio is 80 ms each): a client that does not
    # read is dropped (1008) when its queue is full, rather than buffered.
    max_outgoing_messages: int = Field(default=250, ge=8)


class PluginSettings(PluginSettingsBase):
    """Defaults of the LiveKit TTS plugin, in each agent job (constructor arguments override them)."""

    model_config = SettingsConfigDict(env_prefix="KYUTAI_TTS_", extra="ignore")

    url: str = "ws://127.0.0.1:8089"
    voice: str = DEFAULT_FRENCH_VOICE
    # Per-gym voices: gym id → voice name in kyutai/tts-voices, or a local embedding file
    # (`<path>.safetensors`, sent to the engine as a Voice message).
    gym_voices: dict[str, str] = Field(default_factory=dict)
    cfg_alpha: float | None = None  # None: the engine's default
    temperature: float | None = None
    # No audio for this long while words are pending means the engine is stuck.
    audio_timeout_s: float = Field(default=10.0, gt=0)
