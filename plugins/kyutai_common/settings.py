"""Settings both engine servers and both plugins declare alike (each package adds its own)."""

from __future__ import annotations

import ipaddress
import logging
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
    # Keys accepted in the `kyutai-api-key` header or `auth_id` query (streams and /metrics).
    # No default: empty accepts any client, and is refused at start-up unless `host` is loopback.
    api_keys: list[str] = Field(default_factory=list)
    # Largest WebSocket message accepted, checked before decoding (larger: close 1009).
    max_message_bytes: int = Field(default=2**20, ge=1024, le=2**26)
    log_level: str = "INFO"
    # SIGTERM drains: health says "draining" (503), new streams are refused with close 1013 (the
    # plugins then pick another replica), live streams may finish for up to this long, then the
    # process exits 0. Keep it below the unit's TimeoutStopSec (deploy/systemd) or systemd kills first.
    drain_timeout_s: float = Field(default=30.0, ge=0.0, le=3600.0)
    # Torch's CPU threads for the model (0: torch's default, one per core). An engine on a GPU needs
    # few; engines that share a CPU host with others should take 1 each, or their thread pools
    # contend for the same cores.
    torch_threads: int = Field(default=0, ge=0)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value != "auto" and not (value == "cpu" or value.startswith("cuda")):
            raise ValueError("device is auto, cpu or cuda[:N]")
        return value


def check_api_keys(settings: EngineSettingsBase, logger: logging.Logger) -> None:
    """Refuses (SystemExit, non-zero) to serve a non-loopback address without a key; warns on loopback."""
    if settings.api_keys:
        return
    if not is_loopback(settings.host):
        raise SystemExit(
            f"refusing to listen on {settings.host} without an API key: set the engine's API_KEYS "
            "(e.g. KYUTAI_STT_API_KEYS='[\"<key>\"]'), or bind 127.0.0.1"
        )
    logger.warning("no API key configured: any local client may open streams and read /metrics")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost, "" or "0.0.0.0"-like: not loopback
        return False


class PluginSettingsBase(BaseSettings):
    """Defaults of a LiveKit plugin in each agent job (constructor arguments override them)."""

    url: str
    # Engine replicas, comma-separated (KYUTAI_STT_URLS="ws://gpu-1:8088,ws://gpu-2:8088"): each new
    # stream goes to the one with the most free slots, and moves to another if its engine fails.
    # Empty: `url` alone, a list of one.
    urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_key: str = ""  # the engines' key (no default: an engine without keys accepts any client)

    @field_validator("urls", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    def replica_urls(self) -> list[str]:
        return list(self.urls) or [self.url]
