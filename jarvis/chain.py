"""Reading the chain's own tables (gyms, gym_members, gym_staff) through views in schema jarvis.

A chain that already runs Supabase keeps its member data where it is: with the opt-in
``python -m jarvis.migrate --chain-schema public`` (or ``JARVIS_CHAIN_SCHEMA=public``), our own
empty ``jarvis.gyms``, ``jarvis.gym_members`` and ``jarvis.gym_staff`` are replaced by views of the
same names over the chain's tables, so every query of ours reads the chain's rows unchanged.
Nothing of the chain's is created, altered or dropped; the views only select.

Each of our columns is, in this order: the mapping file's SQL expression over the chain's row
(alias ``c``), the chain's column of the same name, or our default. A column we need and have no
default for (a gym's slug, a member's badge) must exist or be mapped, else nothing changes. The
mapping file (``--chain-mapping FILE`` or ``JARVIS_CHAIN_MAPPING``), JSON::

    {"gyms": {"table": "gyms", "columns": {"city": "c.location", "address": "coalesce(c.location, '')"}},
     "gym_members": {"table": "members"}}

Our own voice_sessions, bookings, logs... stay tables in schema jarvis. Their foreign keys to the
three tables are dropped when they become views (a view cannot be referenced), so a later
migration must not add one. docs/supabase.md has the whole picture.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from jarvis.db import SCHEMA

logger = logging.getLogger("jarvis.chain")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # as format_type() spells it: a chain column of this type is used as is, else cast
    default: str | None  # SQL when the chain has no such column; None: it must exist or be mapped


# Our columns of the three tables (supabase/migrations/20260101000001_init.sql), as the views
# must show them. Defaults are constants: a member's cached context is keyed on a hash of the row.
OUR_COLUMNS: dict[str, tuple[Column, ...]] = {
    "gyms": (
        Column("id", "uuid", None),
        Column("slug", "text", None),
        Column("name", "text", None),
        Column("city", "text", "''"),
        Column("address", "text", "''"),
        Column("timezone", "text", "'Europe/Paris'"),
        Column("opening_hours", "jsonb", "'{}'"),
        Column("equipment", "text[]", "'{}'"),
        Column("classes", "jsonb", "'[]'"),
        Column("prices", "jsonb", "'[]'"),
        Column("agent_settings", "jsonb", "'{}'"),
        Column("rate_limit_per_minute", "integer", "100"),
        Column("created_at", "timestamp with time zone", "NULL"),
    ),
    "gym_staff": (
        Column("id", "uuid", None),
        Column("gym_id", "uuid", None),
        Column("first_name", "text", None),
        Column("last_name", "text", "''"),
        Column("role", "text", "'coach'"),
        Column("speciality", "text", "NULL"),
        Column("availability", "jsonb", "'{}'"),
        Column("is_active", "boolean", "true"),
        Column("created_at", "timestamp with time zone", "NULL"),
    ),
    "gym_members": (
        Column("id", "uuid", None),
        Column("gym_id", "uuid", None),
        Column("badge_id", "text", None),
        Column("first_name", "text", None),
        Column("last_name", "text", "''"),
        Column("birth_date", "date", "NULL"),
        Column("goal", "text", "NULL"),
        Column("experience_level", "text", "NULL"),
        Column("preferred_coach_id", "uuid", "NULL"),
        Column("member_since", "date", "NULL"),
        Column("is_active", "boolean", "true"),
        Column("created_at", "timestamp with time zone", "NULL"),
    ),
}


class ChainMappingError(RuntimeError):
    """The chain's tables cannot be mapped as configured; nothing was changed."""


def load_mapping(path: str | None) -> dict[str, Any]:
    """The mapping file's content ({} without one: same table and column names as ours)."""
    if not path:
        return {}
    mapping = json.loads(Path(path).read_text("utf-8"))
    if not isinstance(mapping, dict) or set(mapping) - set(OUR_COLUMNS):
        raise ChainMappingError(f"mapping: an object with keys among {', '.join(OUR_COLUMNS)}")
    return mapping


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _chain_columns(conn: asyncpg.Connection, schema: str, table: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
        schema, table,
    )
    return {r["attname"]: r["type"] for r in rows}


def view_sql(name: str, chain_schema: str, chain_table: str, chain_columns: dict[str, str],
             expressions: dict[str, str], *, security_invoker: bool) -> str:
    """CREATE VIEW jarvis.<name> over the chain's table, our columns in our order."""
    select: list[str] = []
    missing: list[str] = []
    for col in OUR_COLUMNS[name]:
        if col.name in expressions:
            expr = f"({expressions[col.name]})::{col.type}"
        elif col.name in chain_columns:
            # Same type: a plain column reference, which keeps the view's column updatable.
            ref = f"c.{_ident(col.name)}"
            expr = ref if chain_columns[col.name] == col.type else f"{ref}::{col.type}"
        elif col.default is not None:
            expr = f"{col.default}::{col.type}"
        else:
            missing.append(col.name)
            continue
        select.append(f"{expr} AS {_ident(col.name)}")
    if missing:
        raise ChainMappingError(
            f"{chain_schema}.{chain_table} has no column for {name}.{', '.join(missing)}: map it in the mapping file"
        )
    options = " WITH (security_invoker = true)" if security_invoker else ""
    return (f"CREATE VIEW {SCHEMA}.{_ident(name)}{options} AS SELECT {', '.join(select)}"
            f" FROM {_ident(chain_schema)}.{_ident(chain_table)} c")


async def apply_chain_mapping(conn: asyncpg.Connection, chain_schema: str, mapping: dict[str, Any]) -> list[str]:
    """Make jarvis.gyms, jarvis.gym_members and jarvis.gym_staff views over the chain's tables.

    In one transaction: all or nothing. Safe to run again (the views are made anew, so a changed
    mapping takes effect). Refuses when one of our own tables it would replace holds rows.
    Returns what each view reads, e.g. ``jarvis.gyms -> public.gyms``.
    """
    if chain_schema == SCHEMA:
        raise ChainMappingError(f"the chain's schema cannot be {SCHEMA}, ours")
    # security_invoker (PostgreSQL 15+, Supabase's): whoever queries a view is checked against the
    # chain's tables and their own RLS, not against the view owner's rights.
    security_invoker = await conn.fetchval("SELECT current_setting('server_version_num')::int >= 150000")
    done: list[str] = []
    async with conn.transaction():
        plans: list[tuple[str, str]] = []
        for name in OUR_COLUMNS:
            spec = mapping.get(name, {})
            chain_table = spec.get("table", name)
            columns = await _chain_columns(conn, chain_schema, chain_table)
            if not columns:
                raise ChainMappingError(f"no table {chain_schema}.{chain_table} to read {name} from")
            sql = view_sql(name, chain_schema, chain_table, columns, spec.get("columns", {}),
                           security_invoker=security_invoker)
            plans.append((name, sql))
            done.append(f"{SCHEMA}.{name} -> {chain_schema}.{chain_table}")
        kinds = {r["relname"]: r["relkind"] for r in await conn.fetch(
            "SELECT c.relname, c.relkind::text AS relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relname = ANY($2::text[])", SCHEMA, list(OUR_COLUMNS))}
        for name, kind in kinds.items():
            if kind == "r" and await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.{_ident(name)})"):
                raise ChainMappingError(f"{SCHEMA}.{name} holds rows of its own: mapping would hide them")
        # Our tables' foreign keys to the three (a view cannot be referenced), then the tables.
        for fk in await conn.fetch(
            "SELECT con.conname, src.relname AS table FROM pg_constraint con"
            " JOIN pg_class src ON src.oid = con.conrelid JOIN pg_class dst ON dst.oid = con.confrelid"
            " JOIN pg_namespace n ON n.oid = dst.relnamespace"
            " WHERE con.contype = 'f' AND n.nspname = $1 AND dst.relname = ANY($2::text[])",
            SCHEMA, list(OUR_COLUMNS),
        ):
            await conn.execute(f"ALTER TABLE {SCHEMA}.{_ident(fk['table'])} DROP CONSTRAINT {_ident(fk['conname'])}")
        for name, kind in kinds.items():
            await conn.execute(f"DROP {'VIEW' if kind == 'v' else 'TABLE'} {SCHEMA}.{_ident(name)}")
        for name, sql in plans:
            await conn.execute(sql)
            await conn.execute(f"COMMENT ON VIEW {SCHEMA}.{_ident(name)} IS"
                               f" 'JARVIS chain mapping (jarvis/chain.py): the chain''s table, in our columns'")
        # The views are ours: no access for anon/authenticated, like every table of ours.
        if await conn.fetchval("SELECT to_regprocedure('jarvis.secure_own_tables()') IS NOT NULL"):
            await conn.execute("SELECT jarvis.secure_own_tables()")
    for line in done:
        logger.info("chain mapping: %s", line)
    return done
