-- Delivery pipeline (issue 6): the explode stage's durable progress, one row per launch.
-- Additive only.
--
-- The audience is frozen here the first time a launch record is processed, so a
-- worker that crashes and a record that is delivered twice explode the same users:
--   members         sorted user ids, zlib-compressed int64 deltas (pipeline.explode.pack_ids)
--   language_codes  one int32 code per member, zlib-compressed, indexing languages[]
-- Progress: every chunk before next_chunk is acknowledged by Kafka; offsets maps each
-- message-requests partition to the offset just after the last acknowledged record, so a
-- resume reads only the records written since (sent, but not yet checkpointed).
CREATE TABLE IF NOT EXISTS launch_audiences (
    launch_id      UUID PRIMARY KEY,
    campaign_id    BIGINT NOT NULL,
    segment_id     BIGINT,
    state          VARCHAR(20) NOT NULL DEFAULT 'exploding'
                   CHECK (state IN ('exploding', 'done', 'skipped')),
    reason         TEXT,
    size           BIGINT NOT NULL DEFAULT 0,
    partitions     INTEGER NOT NULL,
    batch_size     INTEGER NOT NULL,
    chunks         INTEGER NOT NULL DEFAULT 0,
    members        BYTEA,
    language_codes BYTEA,
    languages      TEXT[] NOT NULL DEFAULT '{}',
    next_chunk     INTEGER NOT NULL DEFAULT 0,
    offsets        JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS launch_audiences_campaign_idx ON launch_audiences (campaign_id, created_at DESC);
