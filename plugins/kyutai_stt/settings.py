"""Settings of the STT engine server and of the LiveKit plugin, read from the environment."""

from __future__ import annotations

from kyutai_common.settings import EngineSettingsBase, PluginSettingsBase
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class EngineSettings(EngineSettingsBase):
    """`python -m kyutai_stt.server`: one process per GPU (CPU when none)."""

    model_config = SettingsConfigDict(env_prefix="KYUTAI_STT_", extra="ignore")

    # The -candle repo is the same model as kyutai/stt-1b-en_fr plus the four end-of-speech heads.
    checkpoint: str = "kyutai/stt-1b-en_fr-candle"
    port: int = 8088
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)  # 0: greedy, reproducible transcripts
    # Feed the checkpoint's `audio_silence_prefix_seconds` of silence at the start of each stream
    # (what Kyutai's reference script does); word times stay relative to the client's first sample.
    silence_prefix: bool = True
    # Overrides of the checkpoint's stt_config (audio_delay_seconds, audio_silence_prefix_seconds),
    # for checkpoints whose config lacks them: Kyutai's script would then assume 5.0 s and 1.0 s.
    audio_delay_s: float | None = Field(default=None, ge=0.0, le=10.0)
    silence_prefix_s: float | None = Field(default=None, ge=0.0, le=10.0)
    # How long a waiting frame may wait for the other streams' frames. Real-time clients are out
    # of phase and a step costs the whole batch however many slots carry audio, so by default a
    # step waits (at most one frame period) until every live stream has its frame: one step per
    # 80 ms for all of them. Lower trades compute for latency; a backlog is stepped at once.
    batch_wait_ms: float = Field(default=80.0, ge=0.0, le=200.0)
    # ...but only under load: while one step per live stream per frame period would keep the model
    # thread busy less than this share of real time, each frame is stepped as soon as it is whole.
    # 0: always wait (the most streams per step, whatever the latency).
    batch_wait_above_load: float = Field(default=0.5, ge=0.0, le=10.0)
    warmup_steps: int = Field(default=2, ge=0)
    # A client whose unsent messages pile up past this is too slow (or does not read): its stream
    # is ended (1008) rather than buffered. One Step per 80 ms of audio: 2000 is 160 s of audio.
    max_pending_messages: int = Field(default=2000, ge=10)
    # A stream that sends no audio (empty Audio and Markers do not count) for this long is ended
    # (moshi-server uses 120 s).
    idle_timeout_s: float = Field(default=120.0, gt=0)
    # Audio a stream may have waiting for the model before it is ended (a client far ahead of real time).
    max_buffered_s: float = Field(default=60.0, gt=0, le=600.0)
    # Markers a stream may have waiting for their audio to go through the model.
    max_pending_markers: int = Field(default=64, ge=1)


class PluginSettings(PluginSettingsBase):
    """Defaults of the LiveKit STT plugin, in each agent job (constructor arguments override them)."""

    model_config = SettingsConfigDict(env_prefix="KYUTAI_STT_", extra="ignore")

    url: str = "ws://127.0.0.1:8088"
