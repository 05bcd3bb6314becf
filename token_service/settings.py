from __future__ import annotations

from pydantic import AliasChoices, Field

from jarvis.settings import StoreSettings


class TokenServiceSettings(StoreSettings):
    """Read from the environment (``JARVIS_*``, and LiveKit's own ``LIVEKIT_*`` names); the stores' from
    StoreSettings."""

    host: str = "127.0.0.1"
    port: int = 8080

    livekit_url: str = Field(
        default="ws://127.0.0.1:7880", validation_alias=AliasChoices("JARVIS_LIVEKIT_URL", "LIVEKIT_URL")
    )
    # The URL kiosks connect to (wss://… behind TLS in production); defaults to livekit_url.
    livekit_public_url: str | None = None
    livekit_api_key: str = Field(
        default="devkey", validation_alias=AliasChoices("JARVIS_LIVEKIT_API_KEY", "LIVEKIT_API_KEY")
    )
    livekit_api_secret: str = Field(
        default="", validation_alias=AliasChoices("JARVIS_LIVEKIT_API_SECRET", "LIVEKIT_API_SECRET")
    )
    agent_name: str = "jarvis"

    token_ttl_s: int = 600
    context_cache_ttl_s: int = 300
    session_ttl_s: int = 3600
    api_key_cache_ttl_s: float = 30.0
    default_rate_limit_per_minute: int = 100

    # Weather: any HTTP endpoint answering {"description": str, "temperature_c": float} for ?city=…
    weather_url: str | None = None
    weather_timeout_s: float = 0.25
    weather_cache_ttl_s: int = 900

    @property
    def kiosk_livekit_url(self) -> str:
        return self.livekit_public_url or self.livekit_url
