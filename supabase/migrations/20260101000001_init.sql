-- Our tables live in schema jarvis (20260101000000_jarvis_schema.sql); unqualified names resolve there.
SET search_path = jarvis, public;

-- JARVIS Voice Engine schema. Plain PostgreSQL (runs unchanged on Supabase, in its own schema).
-- Personal data stays in gym_members; every other table refers to members by id only.

-- gen_random_uuid() on PostgreSQL < 13 (Supabase has it already, in schema extensions).
CREATE EXTENSION IF NOT EXISTS pgcrypto SCHEMA public;

CREATE TABLE gyms (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug                  text NOT NULL UNIQUE,
    name                  text NOT NULL,
    city                  text NOT NULL,
    address               text NOT NULL,
    timezone              text NOT NULL DEFAULT 'Europe/Paris',
    -- {"mon": [["06:00","22:00"]], ..., "sun": []}: closed when a day is empty or absent
    opening_hours         jsonb NOT NULL DEFAULT '{}'::jsonb,
    equipment             text[] NOT NULL DEFAULT '{}',
    -- [{"name": "RPM", "day": "mon", "time": "18:45", "coach": "Karim"}]
    classes               jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- [{"label": "Abonnement mensuel", "eur": 29.90}]
    prices                jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- per-gym agent settings: {"tone": "...", "rules": ["..."], "voice": "...", "mcp_servers": [{"url": "..."}]}
    agent_settings        jsonb NOT NULL DEFAULT '{}'::jsonb,
    rate_limit_per_minute integer NOT NULL DEFAULT 100 CHECK (rate_limit_per_minute > 0),
    created_at            timestamptz NOT NULL DEFAULT now()
);

-- Gym API keys are stored as SHA-256 hex digests; the clear key is shown once, at creation.
CREATE TABLE gym_api_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    gym_id      uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    key_hash    text NOT NULL UNIQUE CHECK (length(key_hash) = 64),
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE gym_staff (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    gym_id        uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    first_name    text NOT NULL,
    last_name     text NOT NULL DEFAULT '',
    role          text NOT NULL CHECK (role IN ('coach', 'manager', 'reception')),
    speciality    text,
    -- {"mon": [["09:00","12:00"],["14:00","19:00"]], ...}: when the coach can be booked
    availability  jsonb NOT NULL DEFAULT '{}'::jsonb,
    is_active     boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gym_staff_gym ON gym_staff (gym_id);

CREATE TABLE gym_members (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    gym_id              uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    badge_id            text NOT NULL UNIQUE,
    first_name          text NOT NULL,
    last_name           text NOT NULL DEFAULT '',
    birth_date          date,
    goal                text,
    experience_level    text CHECK (experience_level IN ('debutant', 'intermediaire', 'avance')),
    preferred_coach_id  uuid REFERENCES gym_staff(id) ON DELETE SET NULL,
    member_since        date NOT NULL DEFAULT current_date,
    is_active           boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gym_members_gym ON gym_members (gym_id);

CREATE TABLE member_visits (
    id          bigserial PRIMARY KEY,
    gym_id      uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    member_id   uuid NOT NULL REFERENCES gym_members(id) ON DELETE CASCADE,
    visited_at  timestamptz NOT NULL
);
CREATE INDEX member_visits_member ON member_visits (member_id, visited_at DESC);

CREATE TABLE voice_sessions (
    id               uuid PRIMARY KEY,
    gym_id           uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    member_id        uuid NOT NULL REFERENCES gym_members(id) ON DELETE CASCADE,
    kiosk_id         text NOT NULL,
    room             text NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    ended_at         timestamptz,
    duration_s       real,
    outcome          text,
    summary          text,
    sentiment        text CHECK (sentiment IN ('positive', 'neutral', 'negative')),
    latency_summary  jsonb,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX voice_sessions_member ON voice_sessions (member_id, started_at DESC);
CREATE INDEX voice_sessions_gym ON voice_sessions (gym_id, started_at DESC);

CREATE TABLE jarvis_interactions (
    id           bigserial PRIMARY KEY,
    session_id   uuid NOT NULL REFERENCES voice_sessions(id) ON DELETE CASCADE,
    gym_id       uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('user', 'agent', 'tool')),
    text         text,
    tool_name    text,
    tool_args    jsonb,
    tool_result  jsonb,
    latency_ms   real,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jarvis_interactions_session ON jarvis_interactions (session_id, id);

CREATE TABLE missions (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    gym_id       uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    session_id   uuid REFERENCES voice_sessions(id) ON DELETE SET NULL,
    member_id    uuid REFERENCES gym_members(id) ON DELETE SET NULL,
    title        text NOT NULL,
    description  text NOT NULL DEFAULT '',
    status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done', 'cancelled')),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bookings (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    gym_id        uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    member_id     uuid NOT NULL REFERENCES gym_members(id) ON DELETE CASCADE,
    coach_id      uuid REFERENCES gym_staff(id) ON DELETE SET NULL,
    session_id    uuid REFERENCES voice_sessions(id) ON DELETE SET NULL,
    starts_at     timestamptz NOT NULL,
    duration_min  integer NOT NULL DEFAULT 60 CHECK (duration_min > 0),
    status        text NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'cancelled')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bookings_coach ON bookings (coach_id, starts_at);

CREATE TABLE coach_requests (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    gym_id       uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    member_id    uuid NOT NULL REFERENCES gym_members(id) ON DELETE CASCADE,
    coach_id     uuid REFERENCES gym_staff(id) ON DELETE SET NULL,
    session_id   uuid REFERENCES voice_sessions(id) ON DELETE SET NULL,
    message      text NOT NULL,
    urgency      text NOT NULL DEFAULT 'medium' CHECK (urgency IN ('low', 'medium', 'high')),
    status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'acknowledged', 'done')),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE churn_flags (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    gym_id       uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    member_id    uuid NOT NULL REFERENCES gym_members(id) ON DELETE CASCADE,
    session_id   uuid REFERENCES voice_sessions(id) ON DELETE SET NULL,
    reason       text NOT NULL,
    severity     text NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE exercise_videos (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    gym_id        uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    slug          text NOT NULL,
    title         text NOT NULL,
    -- other names a member may use: "bench press", "developpe-couche"
    aliases       text[] NOT NULL DEFAULT '{}',
    url           text NOT NULL,
    muscle_group  text,
    UNIQUE (gym_id, slug)
);
