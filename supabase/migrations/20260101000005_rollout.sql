-- Our tables live in schema jarvis (20260101000000_jarvis_schema.sql); unqualified names resolve there.
SET search_path = jarvis, public;

-- Rollout (issue 13): which kiosks talk to JARVIS and which keep the chain's current provider.
-- PostgreSQL is the source of truth; every token-service instance reads these two tables into a
-- snapshot at most JARVIS_ROLLOUT_REFRESH_S old (0.5 s), so a change here takes effect within 1 s.
--
--   kill switch (everyone back to the old provider):  UPDATE jarvis_rollout_global SET kill_switch = true;
--   a gym at 10 %:  INSERT INTO jarvis_rollout (gym_id, mode, percent) VALUES ('<gym>', 'percent', 10)
--                   ON CONFLICT (gym_id, kiosk_id) DO UPDATE SET mode = excluded.mode, percent = excluded.percent;
--   one pilot kiosk: the same with kiosk_id = 'accueil-1' (a kiosk's row wins over its gym's).

-- One row: the kill switch and the mode of a gym that has no row of its own.
CREATE TABLE jarvis_rollout_global (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id),
    kill_switch      boolean NOT NULL DEFAULT false,
    default_mode     text NOT NULL DEFAULT 'on' CHECK (default_mode IN ('off', 'percent', 'on')),
    default_percent  smallint NOT NULL DEFAULT 0 CHECK (default_percent BETWEEN 0 AND 100),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- 'on' keeps what every gym had before this migration; a chain starting its rollout sets 'off'.
INSERT INTO jarvis_rollout_global (id) VALUES (true);

-- Per gym (kiosk_id = '') or per kiosk of a gym. percent: the share of the gym's members (hash of
-- gym and member id: the same member always gets the same provider) when mode = 'percent'.
CREATE TABLE jarvis_rollout (
    gym_id      uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    kiosk_id    text NOT NULL DEFAULT '',
    mode        text NOT NULL CHECK (mode IN ('off', 'percent', 'on')),
    percent     smallint NOT NULL DEFAULT 0 CHECK (percent BETWEEN 0 AND 100),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gym_id, kiosk_id)
);

-- Our tables are for the service role only (every table of ours gets the same in 20261203000000_row_level_security.sql).
ALTER TABLE jarvis_rollout_global ENABLE ROW LEVEL SECURITY;
ALTER TABLE jarvis_rollout ENABLE ROW LEVEL SECURITY;
