"""PostgreSQL access shared by the token service and the agent.

Works against a plain PostgreSQL and against Supabase. Supabase's pooler in transaction
mode cannot keep prepared statements across transactions, so the statement cache is off.
"""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from typing import Any

import asyncpg

logger = logging.getLogger("jarvis.db")


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached or did not answer in time."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, timeout_s: float = 5.0) -> Any:
    """A connection pool; raises DatabaseUnavailable rather than a driver-specific error."""
    try:
        return await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            statement_cache_size=0,
            timeout=timeout_s,
            command_timeout=timeout_s,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {type(exc).__name__}") from exc


def gym_key_hash(key: str) -> str:
    """How a gym API key is stored in gym_api_keys.key_hash: never the key itself."""
    return hashlib.sha256(key.strip().encode()).hexdigest()


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every migration, in order."""
    folder = resources.files("jarvis").joinpath("sql/migrations")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text("utf-8")) for name in names]


def demo_seed_sql() -> str:
    return resources.files("jarvis").joinpath("sql/seed/demo.sql").read_text("utf-8")


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction; return the versions applied."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    done: list[str] = []
    for version, sql in migration_files():
        if version in applied:
            continue
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
        logger.info("applied migration %s", version)
        done.append(version)
    return done


async def seed_demo_data(conn: asyncpg.Connection) -> bool:
    """Load the demo gyms once; return False when they were already there."""
    if await conn.fetchval("SELECT count(*) FROM gyms") > 0:
        return False
    async with conn.transaction():
        await conn.execute(demo_seed_sql())
    return True
