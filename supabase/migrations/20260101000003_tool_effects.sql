-- Our tables live in schema jarvis (20260101000000_jarvis_schema.sql); unqualified names resolve there.
SET search_path = jarvis, public;

-- Exactly-once tools: the first result of every write tool (book_session, contact_coach,
-- log_churn_risk, create_mission), written in the same transaction as the row it describes.
-- A repeat of the same call (same LLM tool-call id, or the same tool and arguments within one
-- turn) finds its key here and gets the first answer back instead of writing a second row; a
-- crash can never leave an effect without its record, or a record without its effect.
CREATE TABLE tool_effects (
    -- No foreign key to voice_sessions: that row is written off the conversation's path and
    -- may not exist yet when a tool runs (the tools' own rows point at it only when it does).
    session_id  uuid NOT NULL,
    gym_id      uuid NOT NULL REFERENCES gyms(id) ON DELETE CASCADE,
    -- 'call:<tool-call id>' or 'args:<turn>:<tool>:<sha256 of the normalised arguments>'
    effect_key  text NOT NULL,
    tool_name   text NOT NULL,
    -- the effect's row: bookings, coach_requests, churn_flags or missions (for the manager)
    effect_id   uuid,
    -- what the member was told; NULL only inside the transaction that writes the effect
    result      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, effect_key)
);
CREATE INDEX tool_effects_gym ON tool_effects (gym_id, created_at DESC);
