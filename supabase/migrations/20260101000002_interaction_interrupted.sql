-- Our tables live in schema jarvis (20260101000000_jarvis_schema.sql); unqualified names resolve there.
SET search_path = jarvis, public;

-- Barge-in: an agent line the member talked over. Its text is what had been said when it
-- stopped; the manager sees where members cut JARVIS short, and the voice tests prove barge-in
-- really stopped the answer (not only that the audio paused and resumed).
ALTER TABLE jarvis_interactions ADD COLUMN interrupted boolean NOT NULL DEFAULT false;
