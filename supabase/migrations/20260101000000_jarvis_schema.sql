-- Schema jarvis holds every table JARVIS creates: nothing of ours in public, where the chain's own
-- Supabase tables live (gyms, gym_members, gym_staff, voice_sessions, ...) and which Supabase
-- exposes through its API. Each later migration starts with SET search_path = jarvis, public, and
-- every connection of ours sets the same search path (jarvis.db.create_pool), so our queries name
-- tables without a schema.
CREATE SCHEMA IF NOT EXISTS jarvis;

-- Nobody but the schema's owner (and service_role, 20261203000000_row_level_security.sql) may
-- even look inside it: not PUBLIC, so not Supabase's anon and authenticated either.
REVOKE ALL ON SCHEMA jarvis FROM PUBLIC;
