"""Where the stores are: PostgreSQL (the source of truth) and Redis (what can be rebuilt).

The token service, the worker and the MCP server all read the same ``JARVIS_DATABASE_URL``,
``JARVIS_REDIS_URL`` and ``JARVIS_DB_TIMEOUT_S``; their settings inherit these.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

# How long a database connect, query or pool checkout may take before the caller gives up
# (the token service answers 503, a tool says the system is not answering).
DB_TIMEOUT_S = 3.0


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JARVIS_", extra="ignore")

    database_url: str = "postgresql://jarvis@127.0.0.1:5432/jarvis"
    # A password goes in the URL (redis://:PASSWORD@host:6379/0, or rediss:// for TLS); the URL is
    # never logged.
    redis_url: str = "redis://127.0.0.1:6379/0"
    db_timeout_s: float = DB_TIMEOUT_S
