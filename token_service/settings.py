from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from jarvis.settings import StoreSettings


class TokenServiceSettings(StoreSettings):
    """Read from the environment (``JARVIS_*``, and LiveKit's own ``LIVEKIT_*`` names); the stores' from
    StoreSettings."""

    host: str = "127.0.0.1"
    port: int = 8080
    # Processes serving the port (uvicorn's workers): each a whole service with its own pools and
    # in-memory key caches; the refusals a flood costs spread over the host's cores.
    token_workers: int = Field(default=1, ge=1)

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

    # Abuse bounds, all checked before any query. A session request is two short ids (~80 bytes).
    max_body_bytes: int = 4096
    # A wrong key is answered from memory for this long (a backend retrying it costs no query).
    bad_key_cache_ttl_s: float = 10.0
    # Wrong keys a client (IP) may try per minute; its further unknown keys get 429 unchecked.
    bad_keys_per_minute: int = 20
    # After a Redis error, sessions skip Redis (PostgreSQL only, no rate limit) for this long.
    redis_retry_s: float = 5.0

    # Admin routes (/v1/admin/rollout): `Authorization: Bearer <key>`; unset: the routes answer 404.
    admin_api_key: SecretStr | None = None
    # Rollout flags (PostgreSQL) are read again once this old: a change reaches every instance within 1 s.
    rollout_refresh_s: float = Field(default=0.5, gt=0.0, le=0.9)
    # Admission control: refuse a session (503 over_capacity) when the workers' heartbeats leave no room.
    admission_control: bool = True
    # An admitted room counts against capacity until a worker's heartbeat lists it, at most this long.
    admission_pending_s: float = Field(default=15.0, gt=0.0)
    admission_retry_after_s: int = Field(default=5, ge=1)

    # Weather: any HTTP endpoint answering {"description": str, "temperature_c": float} for ?city=…
    weather_url: str | None = None
    weather_timeout_s: float = 0.25
    weather_cache_ttl_s: int = 900

    @property
    def kiosk_livekit_url(self) -> str:
        return self.livekit_public_url or self.livekit_url
