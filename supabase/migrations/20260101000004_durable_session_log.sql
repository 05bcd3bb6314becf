-- Our tables live in schema jarvis (20260101000000_jarvis_schema.sql); unqualified names resolve there.
SET search_path = jarvis, public;

-- The durable session log (agent/session_log.py, agent/sweeper.py).
--
-- Each jarvis_interactions row carries the id its worker gave it when it was spooled to the
-- worker's local outbox: replaying the outbox after a crash or an outage inserts it at most
-- once (INSERT ... ON CONFLICT (log_id) DO NOTHING). Rows from before this migration have none.
ALTER TABLE jarvis_interactions ADD COLUMN log_id uuid;
CREATE UNIQUE INDEX jarvis_interactions_log_id ON jarvis_interactions (log_id);

-- A live session's job touches heartbeat_at every few seconds; the sweeper ends the open
-- sessions not heard of for a while (their worker died) with outcome 'interrompue'. NULL until
-- the first beat: a row written late (replayed after an outage) counts from its created_at.
ALTER TABLE voice_sessions ADD COLUMN heartbeat_at timestamptz;
CREATE INDEX voice_sessions_open ON voice_sessions ((coalesce(heartbeat_at, created_at))) WHERE ended_at IS NULL;
