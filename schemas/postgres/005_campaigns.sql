-- Campaign authoring (issue 5): what the campaign API keeps beside 001's columns.
-- Additive only.

ALTER TABLE campaigns
    ADD COLUMN IF NOT EXISTS trigger              JSONB,
    ADD COLUMN IF NOT EXISTS budget_spent         NUMERIC(18, 4) NOT NULL DEFAULT 0,
    -- Optimistic concurrency: bumped by every update, sent as the ETag.
    ADD COLUMN IF NOT EXISTS version              INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS estimated_recipients BIGINT,
    ADD COLUMN IF NOT EXISTS estimated_cost       NUMERIC(18, 4),
    -- The current launch (see schemas/campaigns.py) and the audience size frozen at launch.
    ADD COLUMN IF NOT EXISTS launch_id            UUID,
    ADD COLUMN IF NOT EXISTS audience_size        BIGINT,
    ADD COLUMN IF NOT EXISTS paused_at            TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS cancelled_at         TIMESTAMPTZ;

-- Listing filters by channel; the keyset walks the primary key.
CREATE INDEX IF NOT EXISTS campaigns_channels_idx ON campaigns USING GIN (channels);
-- A scheduler finds due campaigns by start time.
CREATE INDEX IF NOT EXISTS campaigns_scheduled_start_idx ON campaigns (start_time) WHERE status = 'scheduled';
