"""Counting the statements PostgreSQL ran (pg_stat_statements, preloaded by the local stack).

PostgreSQL's own count, not ours: a test or bench proving that a path costs no query reads it
before and after. Counts are per normalised statement and updated when each one ends.
"""

from __future__ import annotations

import asyncpg


async def statement_calls(dsn: str, *fragments: str) -> int:
    """How many times statements containing any of ``fragments`` ran (all statements when none)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        rows = await conn.fetch(
            "SELECT query, calls FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"
        )
    finally:
        await conn.close()
    return sum(
        int(r["calls"]) for r in rows
        if "pg_stat_statements" not in r["query"] and (not fragments or any(f in r["query"] for f in fragments))
    )
