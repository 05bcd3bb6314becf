"""Apply the database migrations: ``python -m jarvis.migrate [--seed-demo] [--dsn DSN]``.

The DSN defaults to ``JARVIS_DATABASE_URL``. Safe to run again: applied versions are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import asyncpg

from jarvis.db import apply_migrations, seed_demo_data


async def migrate(dsn: str, seed_demo: bool) -> None:
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        applied = await apply_migrations(conn)
        print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
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
    args = parser.parse_args()
    if not args.dsn:
        sys.exit("no database: pass --dsn or set JARVIS_DATABASE_URL")
    asyncio.run(migrate(args.dsn, args.seed_demo))


if __name__ == "__main__":
    main()
