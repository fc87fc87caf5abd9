-- Preferences and the audit trail (issue 5): consent history, a change counter
-- for the preference-updates topic, where an opt-out came from, and indexes
-- for GET /api/v1/audit, which pages by audit_id under equality filters.

-- {"email": {"granted": false, "at": "...", "source": "unsubscribe_link"}, ...}:
-- the last explicit consent decision per channel.
ALTER TABLE user_preferences ADD COLUMN IF NOT EXISTS consent JSONB NOT NULL DEFAULT '{}'::jsonb;
-- Incremented by every change; published as PreferenceUpdate.version.
ALTER TABLE user_preferences ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 0;

-- 'api' (PATCH preferences), 'unsubscribe_api' (POST /api/v1/unsubscribe), 'one_click' (RFC 8058 link).
ALTER TABLE unsubscribes ADD COLUMN IF NOT EXISTS source VARCHAR(30);

CREATE INDEX IF NOT EXISTS audit_log_entity_page_idx ON audit_log (entity_type, entity_id, audit_id DESC);
CREATE INDEX IF NOT EXISTS audit_log_actor_page_idx ON audit_log (actor, audit_id DESC);
CREATE INDEX IF NOT EXISTS audit_log_action_page_idx ON audit_log (action, audit_id DESC);
