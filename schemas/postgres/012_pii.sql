-- Email and phone encrypted at rest (issue 16). Additive only: main's code still writes and reads the
-- plaintext columns while this runs on a shared database; Herald's code from here on writes NULL there
-- and keeps the addresses only as ciphertext (AES-256-GCM, "<key id>:<base64url>", pipeline/pii.py)
-- beside a keyed blind index (HMAC-SHA256 hex of the normalized value) that every lookup by address
-- uses. Rows written before are read from the plaintext columns until a backfill encrypts them; a
-- later migration drops users.email, users.phone and unsubscribes.email and their indexes.
ALTER TABLE users ADD COLUMN IF NOT EXISTS email_enc TEXT;
ALTER TABLE users ADD COLUMN IF NOT EXISTS email_idx TEXT;
ALTER TABLE users ADD COLUMN IF NOT EXISTS phone_enc TEXT;
ALTER TABLE users ADD COLUMN IF NOT EXISTS phone_idx TEXT;
CREATE INDEX IF NOT EXISTS users_email_blind_idx ON users (email_idx) WHERE email_idx IS NOT NULL;
CREATE INDEX IF NOT EXISTS users_phone_blind_idx ON users (phone_idx) WHERE phone_idx IS NOT NULL;

ALTER TABLE unsubscribes ADD COLUMN IF NOT EXISTS email_enc TEXT;
ALTER TABLE unsubscribes ADD COLUMN IF NOT EXISTS email_idx TEXT;
CREATE INDEX IF NOT EXISTS unsubscribes_email_blind_idx ON unsubscribes (email_idx) WHERE email_idx IS NOT NULL;
