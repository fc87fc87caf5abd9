-- Segments API (issue 5): what a segment is beside 001's columns. Additive only.
--
-- kind: 'dynamic' segments keep only their criteria and are evaluated live by the
-- audience store; 'static' ones froze their members into segment_members when they
-- were created; 'lookalike' ones are static segments ranked by a model from a seed
-- segment (source_segment_id) with the model's quality figures.
ALTER TABLE segments
    ADD COLUMN IF NOT EXISTS kind              VARCHAR(20) NOT NULL DEFAULT 'static',
    ADD COLUMN IF NOT EXISTS source_segment_id BIGINT REFERENCES segments (segment_id) ON DELETE SET NULL,
    ADD COLUMN IF NOT EXISTS quality           JSONB;

UPDATE segments SET kind = 'dynamic' WHERE dynamic AND kind = 'static';

ALTER TABLE segments DROP CONSTRAINT IF EXISTS segments_kind_check;
ALTER TABLE segments ADD CONSTRAINT segments_kind_check
    CHECK (kind IN ('static', 'dynamic', 'lookalike') AND dynamic = (kind = 'dynamic'));

-- DELETE refuses a segment that another segment excludes: find those by criteria.
CREATE INDEX IF NOT EXISTS segments_criteria_idx ON segments USING GIN (criteria jsonb_path_ops);
