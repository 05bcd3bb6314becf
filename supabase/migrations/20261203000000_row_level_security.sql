-- Row-level security on every table of ours, and no access at all for Supabase's API roles.
--
-- Supabase (PostgREST) queries the database as anon (no login) or authenticated (a logged-in app
-- user); service_role is the backend's key and bypasses RLS. Our tables hold member data and
-- session logs: only service_role and the owner (the role that runs these migrations, which our
-- services connect as) may read them.
--
-- On plain PostgreSQL those roles do not exist: this does nothing role-specific there (no role is
-- created), RLS is still switched on. Run again after every migration (python -m jarvis.migrate
-- does), so a table added later gets the same; a migration adding a table may also end with
-- SELECT jarvis.secure_own_tables();
SET search_path = jarvis, public;

CREATE OR REPLACE FUNCTION jarvis.secure_own_tables() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    tbl name;
    rls boolean;
    api_role name;
    has_service_role boolean := EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role');
BEGIN
    FOR tbl, rls IN
        SELECT c.relname, c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'jarvis' AND c.relkind IN ('r', 'p')
    LOOP
        -- The owner (our services) is not subject to RLS; every other role sees no row unless a
        -- policy lets it. Only where it is off: ALTER TABLE locks the table, even for nothing.
        IF NOT rls THEN
            EXECUTE format('ALTER TABLE jarvis.%I ENABLE ROW LEVEL SECURITY', tbl);
        END IF;
        IF has_service_role AND NOT EXISTS (
            SELECT 1 FROM pg_policies
             WHERE schemaname = 'jarvis' AND tablename = tbl AND policyname = 'jarvis_service_role_all'
        ) THEN
            EXECUTE format(
                'CREATE POLICY jarvis_service_role_all ON jarvis.%I FOR ALL TO service_role USING (true) WITH CHECK (true)',
                tbl);
        END IF;
    END LOOP;
    IF has_service_role THEN
        GRANT USAGE ON SCHEMA jarvis TO service_role;
        GRANT ALL ON ALL TABLES IN SCHEMA jarvis TO service_role;
        GRANT ALL ON ALL SEQUENCES IN SCHEMA jarvis TO service_role;
    END IF;
    -- Tables, views (the chain mapping's included) and sequences: nothing for PUBLIC, anon or
    -- authenticated, whatever default privileges the database grants them.
    REVOKE ALL ON SCHEMA jarvis FROM PUBLIC;
    REVOKE ALL ON ALL TABLES IN SCHEMA jarvis FROM PUBLIC;
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA jarvis FROM PUBLIC;
    FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated']::name[] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = api_role) THEN
            EXECUTE format('REVOKE ALL ON SCHEMA jarvis FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA jarvis FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA jarvis FROM %I', api_role);
            EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA jarvis FROM %I', api_role);
        END IF;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION jarvis.secure_own_tables() FROM PUBLIC;

SELECT jarvis.secure_own_tables();
