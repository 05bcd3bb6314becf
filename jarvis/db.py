"""PostgreSQL access shared by the token service and the agent.

Works against a plain PostgreSQL and against Supabase. Supabase's pooler in transaction
mode cannot keep prepared statements across transactions, so the statement cache is off.

Our tables live in schema ``jarvis`` (docs/supabase.md); every connection of ours sets
``search_path = jarvis, public`` so queries name tables without a schema.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

logger = logging.getLogger("jarvis.db")

SCHEMA = "jarvis"
# Ours first; public for what we do not own there (the chain's tables through the mapping's
# views are in jarvis too, but extensions such as pgcrypto may sit in public).
SEARCH_PATH = f"{SCHEMA}, public"
SERVER_SETTINGS = {"search_path": SEARCH_PATH}
# Migrations of the first layout (jarvis/sql/migrations/00N_*.sql, tables in public): an install
# still on it must be moved by hand (docs/supabase.md), never silently started afresh beside it.
_LEGACY_VERSIONS = ("001_init", "002_interaction_interrupted", "003_tool_effects",
                    "004_durable_session_log", "005_rollout")


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
            server_settings=SERVER_SETTINGS,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {type(exc).__name__}") from exc


def gym_key_hash(key: str) -> str:
    """How a gym API key is stored in gym_api_keys.key_hash: never the key itself."""
    return hashlib.sha256(key.strip().encode()).hexdigest()


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """One connection with our search path (migrations, scripts): the same view of the schema as a pool's."""
    return await asyncpg.connect(dsn, statement_cache_size=0, server_settings=SERVER_SETTINGS, **kwargs)


def migrations_dir() -> Path:
    """supabase/migrations (the Supabase CLI's layout), outside the Python package: found through
    JARVIS_MIGRATIONS_DIR, else the checkout the package runs from (editable install), else the app
    directory holding the virtualenv (deploy: /opt/jarvis/.venv), else the current directory."""
    candidates = [os.environ.get("JARVIS_MIGRATIONS_DIR", ""),
                  str(Path(__file__).resolve().parents[1] / "supabase" / "migrations"),
                  str(Path(sys.prefix).resolve().parent / "supabase" / "migrations"),
                  str(Path.cwd() / "supabase" / "migrations")]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError("no supabase/migrations: run from the app directory or set JARVIS_MIGRATIONS_DIR")


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every migration, in order: ``<timestamp>_<name>.sql``, version = file stem."""
    folder = migrations_dir()
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), (folder / name).read_text("utf-8")) for name in names]


def demo_seed_sql() -> str:
    return resources.files("jarvis").joinpath("sql/seed/demo.sql").read_text("utf-8")


class LegacyLayout(RuntimeError):
    """Our tables are still in public, from the first migrations' layout."""


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction; return the versions applied.

    Applied versions are recorded in jarvis.schema_migrations; running again applies nothing.
    Afterwards every table in schema jarvis gets RLS and the API roles' revokes again
    (jarvis.secure_own_tables), so none can be missed by a later migration.
    """
    legacy = await conn.fetchval(
        "SELECT to_regclass('public.schema_migrations') IS NOT NULL AND to_regclass('jarvis.schema_migrations') IS NULL"
    )
    if legacy and await conn.fetchval(
        "SELECT count(*) FROM public.schema_migrations WHERE version = ANY($1::text[])", list(_LEGACY_VERSIONS)
    ):
        raise LegacyLayout("this database has JARVIS tables in public (first layout): move them into schema"
                           " jarvis first, see docs/supabase.md")
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
        " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied = {r["version"] for r in await conn.fetch(f"SELECT version FROM {SCHEMA}.schema_migrations")}
    done: list[str] = []
    for version, sql in migration_files():
        if version in applied:
            continue
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute(f"INSERT INTO {SCHEMA}.schema_migrations (version) VALUES ($1)", version)
        logger.info("applied migration %s", version)
        done.append(version)
    await secure_own_tables(conn)
    return done


async def secure_own_tables(conn: asyncpg.Connection) -> None:
    """RLS on every table in schema jarvis, service_role's policy, nothing for anon/authenticated."""
    if await conn.fetchval("SELECT to_regprocedure('jarvis.secure_own_tables()') IS NOT NULL"):
        await conn.execute("SELECT jarvis.secure_own_tables()")


async def seed_demo_data(conn: asyncpg.Connection) -> bool:
    """Load the demo gyms once; return False when they were already there."""
    if await conn.fetchval(f"SELECT count(*) FROM {SCHEMA}.gyms") > 0:
        return False
    async with conn.transaction():
        await conn.execute(demo_seed_sql())
    return True
