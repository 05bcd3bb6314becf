"""JARVIS beside the chain's existing Supabase (issue 13, part 4), on a real PostgreSQL.

The database is made as the chain's Supabase is: the roles anon, authenticated and service_role,
the grants Supabase gives them, and the chain's own gyms, gym_members, gym_staff and
voice_sessions in public, with rows, shaped from the seed's queries (``.eq('badge_id', ...)``,
``.eq('is_active', True)``, ``preferred_coach_id``, ``gym['location']``, history by member). Then
our one migrate command with the opt-in mapping. Proven: the migrations apply (and again, as a
no-op), the chain's tables and rows are exactly as before, a chain member's context loads through
the mapping, and anon and authenticated are denied every table and view we created.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from jarvis.context_store import fetch_member_by_badge, fetch_member_by_id
from jarvis.db import create_pool, gym_key_hash
from jarvis.migrate import migrate
from jarvis_local.stack import local_stack
from token_service.keys import KEY_QUERY

CHAIN_GYM = "5a1e0000-0000-4000-8000-000000000001"
CHAIN_COACH = "5a1e0000-0000-4000-8000-0000000000c1"
CHAIN_MEMBER = "5a1e0000-0000-4000-8000-0000000000a1"
GYM_KEY = "chain-test-key"

# Supabase's roles and default grants (its initial schema): the API roles may use public and get
# every table created there. The last line is stricter than Supabase (any schema, not only public):
# whatever we create is granted to anon and authenticated unless our migrations take it back.
SUPABASE_ROLES = """
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO anon, authenticated, service_role;
"""

# The chain's own tables, as its backend made them: names and columns of its own, not ours.
CHAIN_TABLES = f"""
CREATE TABLE public.gyms (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), slug text NOT NULL UNIQUE, name text NOT NULL,
    location text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE public.gym_staff (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), gym_id uuid NOT NULL REFERENCES public.gyms(id),
    first_name text NOT NULL, speciality text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE public.gym_members (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), gym_id uuid NOT NULL REFERENCES public.gyms(id),
    badge_id text NOT NULL UNIQUE, first_name text NOT NULL, last_name text, email text, goal text,
    preferred_coach_id uuid REFERENCES public.gym_staff(id), is_active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE public.voice_sessions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), member_id uuid REFERENCES public.gym_members(id),
    summary text, sentiment text, created_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE public.gym_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY members_read_own ON public.gym_members FOR SELECT TO authenticated USING (true);

INSERT INTO public.gyms (id, slug, name, location, created_at) VALUES
    ('{CHAIN_GYM}', 'fitzone-nantes', 'FitZone Nantes', 'Nantes', '2024-01-10'),
    (gen_random_uuid(), 'fitzone-rennes', 'FitZone Rennes', 'Rennes', '2024-03-01');
INSERT INTO public.gym_staff (id, gym_id, first_name, speciality) VALUES
    ('{CHAIN_COACH}', '{CHAIN_GYM}', 'Yanis', 'crossfit'),
    (gen_random_uuid(), '{CHAIN_GYM}', 'Lou', NULL);
INSERT INTO public.gym_members (id, gym_id, badge_id, first_name, last_name, email, goal, preferred_coach_id,
                                is_active, created_at) VALUES
    ('{CHAIN_MEMBER}', '{CHAIN_GYM}', 'NTE-0042', 'Maëlle', 'Guérin', 'maelle@example.org', 'courir un 10 km',
     '{CHAIN_COACH}', true, '2025-02-03'),
    (gen_random_uuid(), '{CHAIN_GYM}', 'NTE-0043', 'Bastien', NULL, NULL, NULL, NULL, false, '2023-06-01');
INSERT INTO public.voice_sessions (member_id, summary, sentiment, created_at) VALUES
    ('{CHAIN_MEMBER}', 'Session de l''ancien fournisseur', 'positive', '2026-11-02');
"""

# The documented mapping (docs/supabase.md): where the chain's columns differ from ours.
MAPPING = {
    "gyms": {"columns": {"city": "c.location", "address": "c.location"}},
    "gym_members": {"columns": {"member_since": "c.created_at::date"}},
}
CHAIN = ("gyms", "gym_staff", "gym_members", "voice_sessions")


@dataclass(frozen=True)
class Databases:
    plain_dsn: str  # our own database, before any Supabase role existed in the cluster
    chain_dsn: str  # the chain's Supabase, migrated with the mapping
    chain_before: dict[str, object]  # the chain's tables (definitions and rows) before migrating
    mapping_file: str


async def chain_snapshot(dsn: str) -> dict[str, object]:
    """Every column, constraint, policy, grant and row of the chain's tables."""
    # An empty search path: definitions print fully qualified, whichever schemas exist.
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "pg_catalog"})
    try:
        snap: dict[str, object] = {}
        for table in CHAIN:
            snap[f"{table}.rows"] = [r[0] for r in await conn.fetch(
                f"SELECT to_jsonb(t)::text FROM public.{table} t ORDER BY t.id")]
            snap[f"{table}.columns"] = [tuple(r) for r in await conn.fetch(
                "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position", table)]
            snap[f"{table}.constraints"] = sorted(tuple(r) for r in await conn.fetch(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = ('public.' || $1)::regclass", table))
            snap[f"{table}.policies"] = sorted(tuple(r) for r in await conn.fetch(
                "SELECT policyname, qual FROM pg_policies WHERE schemaname = 'public' AND tablename = $1", table))
            snap[f"{table}.grants"] = sorted(tuple(r) for r in await conn.fetch(
                "SELECT grantee, privilege_type FROM information_schema.role_table_grants"
                " WHERE table_schema = 'public' AND table_name = $1", table))
            snap[f"{table}.rls"] = await conn.fetchval(
                "SELECT relrowsecurity FROM pg_class WHERE oid = ('public.' || $1)::regclass", table)
        return snap
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    mapping_file = tmp_path_factory.mktemp("chain") / "mapping.json"
    mapping_file.write_text(json.dumps(MAPPING))
    with local_stack(livekit=False) as stack:
        chain_dsn = stack.pg_dsn.rsplit("/", 1)[0] + "/chain"

        async def prepare() -> dict[str, object]:
            # Plain PostgreSQL first: no Supabase role exists yet in this cluster.
            await migrate(stack.pg_dsn, seed_demo=True)
            admin = await asyncpg.connect(stack.pg_dsn)
            try:
                await admin.execute("CREATE DATABASE chain")
            finally:
                await admin.close()
            conn = await asyncpg.connect(chain_dsn)
            try:
                await conn.execute(SUPABASE_ROLES)
                await conn.execute(CHAIN_TABLES)
            finally:
                await conn.close()
            before = await chain_snapshot(chain_dsn)
            await migrate(chain_dsn, seed_demo=False, chain_schema="public", chain_mapping=str(mapping_file))
            return before

        before = asyncio.run(prepare())
        yield Databases(stack.pg_dsn, chain_dsn, before, str(mapping_file))


async def test_migrations_leave_the_chains_tables_and_rows_as_they_were(databases: Databases) -> None:
    after = await chain_snapshot(databases.chain_dsn)
    assert after == databases.chain_before
    assert len(after["gym_members.rows"]) == 2 and len(after["voice_sessions.rows"]) == 1  # type: ignore[arg-type]

    # Our one command again, opt-in included: nothing to apply, the chain still untouched.
    await migrate(databases.chain_dsn, seed_demo=False, chain_schema="public", chain_mapping=databases.mapping_file)
    assert await chain_snapshot(databases.chain_dsn) == databases.chain_before


async def test_a_chain_members_context_loads_through_the_mapping(databases: Databases) -> None:
    # Our pool, as the token service and the agent open it: no database-wide search path here.
    pool = await create_pool(databases.chain_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await conn.execute("INSERT INTO gym_api_keys (gym_id, key_hash) VALUES ($1, $2)",
                               CHAIN_GYM, gym_key_hash(GYM_KEY))
            key = await conn.fetchrow(KEY_QUERY, gym_key_hash(GYM_KEY))
            # Our voice_sessions (ours, in schema jarvis), for a member who lives in the chain's table.
            await conn.execute(
                "INSERT INTO voice_sessions (id, gym_id, member_id, kiosk_id, room, started_at, ended_at, summary,"
                " sentiment) VALUES (gen_random_uuid(), $1, $2, 'accueil', 'jarvis-x', now() - interval '1 day',"
                " now() - interval '1 day' + interval '2 minutes', 'Plan 10 km fait avec JARVIS', 'positive')",
                CHAIN_GYM, CHAIN_MEMBER,
            )
            record = await fetch_member_by_badge(conn, CHAIN_GYM, "NTE-0042")
            again = await fetch_member_by_id(conn, CHAIN_GYM, CHAIN_MEMBER)
            inactive = await fetch_member_by_badge(conn, CHAIN_GYM, "NTE-0043")
    finally:
        await pool.close()

    assert key is not None and key["gym_id"] == CHAIN_GYM and key["city"] == "Nantes"
    assert record is not None and again is not None
    assert record.member.first_name == "Maëlle" and record.member.goal == "courir un 10 km"
    assert str(record.member.member_since) == "2025-02-03"
    assert record.gym.name == "FitZone Nantes" and record.gym.city == "Nantes"
    assert record.coach is not None and record.coach.first_name == "Yanis" and record.coach.speciality == "crossfit"
    # History is ours only: the chain's own voice_sessions row is not read as a JARVIS session.
    assert [h.summary for h in record.history] == ["Plan 10 km fait avec JARVIS"]
    assert again.version == record.version  # the cached context's stamp is stable through the view
    assert inactive is not None and not inactive.is_active


async def test_anon_and_authenticated_are_denied_everything_we_created(databases: Databases) -> None:
    conn = await asyncpg.connect(databases.chain_dsn)
    try:
        ours = await conn.fetch(
            "SELECT c.relname, c.relkind::text AS relkind, c.relrowsecurity FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'jarvis' AND c.relkind IN ('r', 'v') ORDER BY c.relname")
        names = {r["relname"]: r["relkind"] for r in ours}
        tables = {n for n, k in names.items() if k == "r"}
        assert {"voice_sessions", "jarvis_interactions", "gym_api_keys", "bookings"} <= tables
        assert {n for n, k in names.items() if k == "v"} == {"gyms", "gym_members", "gym_staff"}
        assert all(r["relrowsecurity"] for r in ours if r["relkind"] == "r")
        policies = {r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_policies WHERE schemaname = 'jarvis' AND 'service_role' = ANY(roles)")}
        assert policies == tables

        for role in ("anon", "authenticated"):
            await conn.execute(f"SET ROLE {role}")
            try:
                for name in names:
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.fetch(f"SELECT * FROM jarvis.{name} LIMIT 1")
                # The chain's own tables keep the access they had: the migration took nothing of theirs.
                assert await conn.fetchval("SELECT count(*) FROM public.gyms") == 2
            finally:
                await conn.execute("RESET ROLE")

        # The backend's service role reads ours (its policy) and the chain's through the mapping.
        await conn.execute("SET ROLE service_role")
        try:
            assert await conn.fetchval("SELECT count(*) FROM jarvis.gym_api_keys") >= 0
            assert await conn.fetchval("SELECT count(*) FROM jarvis.gym_members") == 2
        finally:
            await conn.execute("RESET ROLE")
    finally:
        await conn.close()


async def test_plain_postgresql_without_supabase_roles_migrates_the_same(databases: Databases) -> None:
    conn = await asyncpg.connect(databases.plain_dsn)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM jarvis.schema_migrations ORDER BY version")]
        files = sorted(p.stem for p in (Path(__file__).parents[2] / "supabase" / "migrations").glob("*.sql"))
        assert versions == files
        assert await conn.fetchval("SELECT count(*) FROM jarvis.gym_members") == 6  # the demo, in our schema
        assert await conn.fetchval("SELECT to_regclass('public.gym_members')") is None
        assert await conn.fetchval(
            "SELECT bool_and(c.relrowsecurity) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'jarvis' AND c.relkind = 'r'")
    finally:
        await conn.close()
