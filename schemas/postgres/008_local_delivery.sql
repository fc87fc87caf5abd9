-- Each recipient's local hour (issue 13): a campaign's delivery option. Additive only.
--
--   {"local_time": "09:00", "if_passed": "next_day" | "skip", "timezone": "Europe/Paris"}
--
-- The gate (pipeline/gate.py, local_release) defers each recipient to local_time on their own
-- clock, counted from the launch; "if_passed" says what happens to those whose hour had passed
-- at launch (default next_day); "timezone" is the zone of users who have none (default: the
-- schedule's, else UTC). NULL: sent as soon as the gate releases it, as before.
ALTER TABLE campaigns ADD COLUMN IF NOT EXISTS delivery JSONB;
