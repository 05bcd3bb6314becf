"""Settings both engine servers and both plugins declare alike (each package adds its own)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode


class EngineSettingsBase(BaseSettings):
    """One engine server process per GPU (CPU when none); subclasses set the env prefix and port."""

    # A Hugging Face repo id, or a local directory in the same layout (config.json naming the files).
    checkpoint: str
    device: str = "auto"  # "auto": cuda when present, else cpu
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    max_streams: int = Field(default=32, ge=1, le=1024)  # batch size: one slot per live stream
    host: str = "127.0.0.1"
    port: int
    # Keys accepted in the `kyutai-api-key` header or `auth_id` query; Kyutai's clients send
    # "public_token". An empty list accepts any client (loopback development only).
    api_keys: list[str] = Field(default_factory=lambda: ["public_token"])
    log_level: str = "INFO"
    # SIGTERM drains: health says "draining" (503), new streams are refused with close 1013 (the
    # plugins then pick another replica), live streams may finish for up to this long, then the
    # process exits 0. Keep it below the unit's TimeoutStopSec (deploy/systemd) or systemd kills first.
    drain_timeout_s: float = Field(default=30.0, ge=0.0, le=3600.0)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value != "auto" and not (value == "cpu" or value.startswith("cuda")):
            raise ValueError("device is auto, cpu or cuda[:N]")
        return value


class PluginSettingsBase(BaseSettings):
    """Defaults of a LiveKit plugin in each agent job (constructor arguments override them)."""

    url: str
    # Engine replicas, comma-separated (KYUTAI_STT_URLS="ws://gpu-1:8088,ws://gpu-2:8088"): each new
    # stream goes to the one with the most free slots, and moves to another if its engine fails.
    # Empty: `url` alone, a list of one.
    urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_key: str = "public_token"

    @field_validator("urls", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    def replica_urls(self) -> list[str]:
        return list(self.urls) or [self.url]
