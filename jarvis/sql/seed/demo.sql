-- Demo data: two gyms in two cities, for the demo and the tests. Never applied in production.
-- The demo API keys below are public, for loopback use only:
--   Lyon:     demo-key-lyon-part-dieu
--   Bordeaux: demo-key-bordeaux-chartrons

INSERT INTO gyms (id, slug, name, city, address, opening_hours, equipment, classes, prices, agent_settings, rate_limit_per_minute) VALUES
('11111111-1111-4111-8111-111111111111', 'energie-lyon-part-dieu', 'Énergie Club Lyon Part-Dieu', 'Lyon',
 '12 rue Garibaldi, 69003 Lyon',
 '{"mon": [["06:00","23:00"]], "tue": [["06:00","23:00"]], "wed": [["06:00","23:00"]], "thu": [["06:00","23:00"]], "fri": [["06:00","22:00"]], "sat": [["08:00","20:00"]], "sun": [["09:00","13:00"]]}',
 ARRAY['racks à squat', 'bancs de développé couché', 'haltères jusqu''à 50 kg', 'rameurs', 'vélos RPM', 'tapis de course'],
 '[{"name": "RPM", "day": "mon", "time": "18:45", "coach": "Karim"}, {"name": "Yoga", "day": "wed", "time": "12:15", "coach": "Sophie"}, {"name": "Cross training", "day": "sat", "time": "10:00", "coach": "Karim"}]',
 '[{"label": "Abonnement mensuel", "eur": 29.90}, {"label": "Séance de coaching", "eur": 45.00}, {"label": "Carte dix entrées", "eur": 89.00}]',
 '{"tone": "énergique et motivant", "rules": ["Rappelle que le cours de RPM du lundi est souvent complet : conseille de réserver."]}',
 100),
('22222222-2222-4222-8222-222222222222', 'atlas-bordeaux-chartrons', 'Atlas Fitness Bordeaux Chartrons', 'Bordeaux',
 '48 quai des Chartrons, 33000 Bordeaux',
 '{"mon": [["07:00","22:00"]], "tue": [["07:00","22:00"]], "wed": [["07:00","22:00"]], "thu": [["07:00","22:00"]], "fri": [["07:00","21:00"]], "sat": [["09:00","18:00"]]}',
 ARRAY['machines guidées', 'kettlebells', 'sacs de frappe', 'vélos elliptiques'],
 '[{"name": "Boxe fitness", "day": "tue", "time": "19:00", "coach": "Inès"}, {"name": "Pilates", "day": "thu", "time": "12:30", "coach": "Marc"}]',
 '[{"label": "Abonnement mensuel", "eur": 34.90}, {"label": "Séance de coaching", "eur": 50.00}]',
 '{"tone": "calme et bienveillant"}',
 100);

INSERT INTO gym_api_keys (gym_id, key_hash, label) VALUES
('11111111-1111-4111-8111-111111111111', encode(sha256('demo-key-lyon-part-dieu'::bytea), 'hex'), 'demo'),
('22222222-2222-4222-8222-222222222222', encode(sha256('demo-key-bordeaux-chartrons'::bytea), 'hex'), 'demo');

INSERT INTO gym_staff (id, gym_id, first_name, last_name, role, speciality, availability) VALUES
('a1111111-0000-4000-8000-000000000001', '11111111-1111-4111-8111-111111111111', 'Karim', 'Benali', 'coach', 'musculation et force',
 '{"mon": [["09:00","12:00"],["14:00","20:00"]], "tue": [["09:00","12:00"],["14:00","20:00"]], "wed": [["14:00","20:00"]], "thu": [["09:00","12:00"],["14:00","20:00"]], "fri": [["09:00","18:00"]], "sat": [["09:00","13:00"]]}'),
('a1111111-0000-4000-8000-000000000002', '11111111-1111-4111-8111-111111111111', 'Sophie', 'Marchand', 'coach', 'yoga et mobilité',
 '{"mon": [["07:00","12:00"]], "wed": [["07:00","14:00"]], "fri": [["07:00","12:00"]]}'),
('a1111111-0000-4000-8000-000000000003', '11111111-1111-4111-8111-111111111111', 'Laurent', 'Dubois', 'manager', NULL, '{}'),
('b2222222-0000-4000-8000-000000000001', '22222222-2222-4222-8222-222222222222', 'Inès', 'Moreau', 'coach', 'boxe et cardio',
 '{"mon": [["10:00","19:00"]], "tue": [["10:00","20:00"]], "thu": [["10:00","19:00"]], "sat": [["09:00","17:00"]]}'),
('b2222222-0000-4000-8000-000000000002', '22222222-2222-4222-8222-222222222222', 'Marc', 'Lefèvre', 'coach', 'pilates et rééducation',
 '{"tue": [["08:00","16:00"]], "thu": [["08:00","16:00"]]}'),
('b2222222-0000-4000-8000-000000000003', '22222222-2222-4222-8222-222222222222', 'Claire', 'Garnier', 'manager', NULL, '{}');

INSERT INTO gym_members (id, gym_id, badge_id, first_name, last_name, birth_date, goal, experience_level, preferred_coach_id, member_since, is_active) VALUES
('c1111111-0000-4000-8000-000000000001', '11111111-1111-4111-8111-111111111111', 'LYON-0001', 'Camille', 'Martin', '1994-03-12', 'perdre du poids et gagner en endurance', 'debutant', 'a1111111-0000-4000-8000-000000000001', '2025-09-01', true),
('c1111111-0000-4000-8000-000000000002', '11111111-1111-4111-8111-111111111111', 'LYON-0002', 'Thomas', 'Petit', '1988-11-02', 'prise de masse', 'avance', NULL, '2022-01-15', true),
('c1111111-0000-4000-8000-000000000003', '11111111-1111-4111-8111-111111111111', 'LYON-0003', 'Julie', 'Roux', '1999-06-30', 'remise en forme', 'intermediaire', 'a1111111-0000-4000-8000-000000000002', '2024-02-10', false),
('c1111111-0000-4000-8000-000000000004', '11111111-1111-4111-8111-111111111111', 'LYON-0004', 'Nadia', '', NULL, NULL, NULL, NULL, current_date, true),
('d2222222-0000-4000-8000-000000000001', '22222222-2222-4222-8222-222222222222', 'BDX-0001', 'Léa', 'Fontaine', '1991-08-21', 'préparer un semi-marathon', 'intermediaire', 'b2222222-0000-4000-8000-000000000001', '2023-05-04', true),
('d2222222-0000-4000-8000-000000000002', '22222222-2222-4222-8222-222222222222', 'BDX-0002', 'Hugo', 'Blanc', '1979-01-09', 'soulager le dos', 'debutant', 'b2222222-0000-4000-8000-000000000002', '2026-06-20', true);

-- Visit history: regular for Camille and Léa, fading for Thomas (a churn risk), none for Nadia.
INSERT INTO member_visits (gym_id, member_id, visited_at)
SELECT '11111111-1111-4111-8111-111111111111', 'c1111111-0000-4000-8000-000000000001', now() - make_interval(days => d) + time '18:30'
FROM generate_series(1, 60, 2) AS d;
INSERT INTO member_visits (gym_id, member_id, visited_at)
SELECT '11111111-1111-4111-8111-111111111111', 'c1111111-0000-4000-8000-000000000002', now() - make_interval(days => d) + time '07:15'
FROM generate_series(20, 120, 5) AS d;
INSERT INTO member_visits (gym_id, member_id, visited_at)
SELECT '22222222-2222-4222-8222-222222222222', 'd2222222-0000-4000-8000-000000000001', now() - make_interval(days => d) + time '12:10'
FROM generate_series(1, 45, 3) AS d;
INSERT INTO member_visits (gym_id, member_id, visited_at)
SELECT '22222222-2222-4222-8222-222222222222', 'd2222222-0000-4000-8000-000000000002', now() - make_interval(days => d) + time '19:00'
FROM generate_series(2, 30, 7) AS d;

INSERT INTO voice_sessions (id, gym_id, member_id, kiosk_id, room, started_at, ended_at, duration_s, outcome, summary, sentiment) VALUES
('e1111111-0000-4000-8000-000000000001', '11111111-1111-4111-8111-111111111111', 'c1111111-0000-4000-8000-000000000001', 'kiosk-accueil', 'jarvis-e1111111', now() - interval '9 days', now() - interval '9 days' + interval '3 minutes', 180, 'completed',
 'A demandé comment bien faire un squat ; vidéo montrée.', 'positive'),
('e1111111-0000-4000-8000-000000000002', '11111111-1111-4111-8111-111111111111', 'c1111111-0000-4000-8000-000000000001', 'kiosk-accueil', 'jarvis-e1111112', now() - interval '3 days', now() - interval '3 days' + interval '2 minutes', 120, 'completed',
 'Douleur au genou après la course ; séance réservée avec Karim.', 'neutral'),
('e1111111-0000-4000-8000-000000000003', '11111111-1111-4111-8111-111111111111', 'c1111111-0000-4000-8000-000000000002', 'kiosk-accueil', 'jarvis-e1111113', now() - interval '25 days', now() - interval '25 days' + interval '4 minutes', 240, 'completed',
 'Se plaint de l''attente aux racks à squat le soir.', 'negative');

INSERT INTO exercise_videos (gym_id, slug, title, aliases, url, muscle_group)
SELECT g.id, v.slug, v.title, v.aliases, '/videos/' || g.slug || '/' || v.slug || '.mp4', v.muscle_group
FROM gyms g CROSS JOIN (VALUES
    ('squat', 'Le squat', ARRAY['squat barre', 'flexion de jambes', 'back squat'], 'jambes'),
    ('developpe-couche', 'Le développé couché', ARRAY['développé couché', 'bench press', 'bench', 'developpe couche'], 'pectoraux'),
    ('souleve-de-terre', 'Le soulevé de terre', ARRAY['soulevé de terre', 'deadlift'], 'dos et jambes'),
    ('tractions', 'Les tractions', ARRAY['traction', 'pull-up', 'pull up'], 'dos'),
    ('fentes', 'Les fentes', ARRAY['fente', 'lunges', 'lunge'], 'jambes')
) AS v(slug, title, aliases, muscle_group);
