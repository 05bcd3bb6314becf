"""Apply the database migrations: ``python -m jarvis.migrate [--seed-demo] [--dsn DSN] [--chain-schema public]``.

The DSN defaults to ``JARVIS_DATABASE_URL``. Safe to run again: applied versions are skipped.
Migrations are supabase/migrations/<timestamp>_<name>.sql (the Supabase CLI's layout); our tables
go to schema jarvis. ``--chain-schema`` (or ``JARVIS_CHAIN_SCHEMA``) is the opt-in to read the
chain's existing gyms, gym_members and gym_staff there through views (jarvis/chain.py,
docs/supabase.md); without it those are our own tables.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from jarvis.chain import apply_chain_mapping, load_mapping
from jarvis.db import apply_migrations, connect, seed_demo_data


async def migrate(dsn: str, seed_demo: bool, *, chain_schema: str | None = None,
                  chain_mapping: str | None = None) -> None:
    if seed_demo and chain_schema:
        raise ValueError("demo data goes into our own tables, not the chain's: --seed-demo without --chain-schema")
    mapping = load_mapping(chain_mapping) if chain_schema else {}
    conn = await connect(dsn)
    try:
        applied = await apply_migrations(conn)
        print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
        if chain_schema:
            for line in await apply_chain_mapping(conn, chain_schema, mapping):
                print(f"chain mapping: {line}")
        if seed_demo:
            seeded = await seed_demo_data(conn)
            print("demo data loaded" if seeded else "demo data already present")
    finally:
        await conn.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("JARVIS_DATABASE_URL"))
    parser.add_argument("--seed-demo", action="store_true", help="load the two demo gyms (never in production)")
    parser.add_argument("--chain-schema", default=os.environ.get("JARVIS_CHAIN_SCHEMA") or None,
                        help="opt-in: read the chain's gyms, gym_members, gym_staff in this schema (e.g. public)")
    parser.add_argument("--chain-mapping", default=os.environ.get("JARVIS_CHAIN_MAPPING") or None,
                        help="JSON file: the chain's table and column names where they differ from ours")
    args = parser.parse_args()
    if not args.dsn:
        sys.exit("no database: pass --dsn or set JARVIS_DATABASE_URL")
    asyncio.run(migrate(args.dsn, args.seed_demo, chain_schema=args.chain_schema, chain_mapping=args.chain_mapping))


if __name__ == "__main__":
    main()
