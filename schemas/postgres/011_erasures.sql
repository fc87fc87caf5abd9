-- GDPR erase and export (issue 16, pipeline/erase.py). Additive only.
--
-- erasures: one row per DELETE /api/v1/users/{id}; ``stores`` holds each store's state
-- ("pending" | "done" | "failed: ..."), filled in by the API for what it erases itself and by the
-- workers (agents/erase_state.py) for the Faust tables they own. done_at is set when all are done.
-- The user id is kept here (the erasure must be traceable to its request, Art. 17(1) and 5(2)),
-- nothing else about the person.
CREATE TABLE IF NOT EXISTS erasures (
    erasure_id   UUID PRIMARY KEY,
    user_id      BIGINT NOT NULL,
    requested_by VARCHAR(255),
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    stores       JSONB NOT NULL DEFAULT '{}'::jsonb,
    done_at      TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS erasures_user_idx ON erasures (user_id);

-- Who was erased, as a keyed hash of the user id (HMAC-SHA256, pipeline/erase.py user_marker), so that a
-- profile or event arriving later is dropped instead of bringing the person back, unless it is a new
-- sign-up (a profile created after erased_at). A new sign-up deletes the row.
CREATE TABLE IF NOT EXISTS erased_users (
    user_hash BYTEA PRIMARY KEY,
    erased_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- An erased person's opt-out outlives them as a keyed hash of the address (the address itself is
-- cleared): the row no longer belongs to a user (user_id NULL), so it survives the user's deletion.
ALTER TABLE unsubscribes ADD COLUMN IF NOT EXISTS address_hash BYTEA;
CREATE INDEX IF NOT EXISTS unsubscribes_address_hash_idx ON unsubscribes (address_hash) WHERE address_hash IS NOT NULL;
