-- Templates as the authoring API stores them (pipeline/content, api/templates.py).
-- Additive: the original subject/body columns stay and mirror the main parts.

ALTER TABLE templates ADD COLUMN IF NOT EXISTS parts JSONB NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE templates ADD COLUMN IF NOT EXISTS variants JSONB NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE templates ADD COLUMN IF NOT EXISTS category VARCHAR(50);
ALTER TABLE templates ADD COLUMN IF NOT EXISTS description TEXT;

-- Rows written before parts existed keep working: their parts come from subject/body.
UPDATE templates SET parts = jsonb_strip_nulls(CASE channel
        WHEN 'email' THEN jsonb_build_object('subject', subject, 'html', body)
        WHEN 'push' THEN jsonb_build_object('title', subject, 'body', body)
        WHEN 'in_app' THEN jsonb_build_object('title', subject, 'body', body)
        WHEN 'webhook' THEN jsonb_build_object('payload', body)
        ELSE jsonb_build_object('body', body) END)
    WHERE parts = '{}'::jsonb;

-- Listing by channel pages through template_id.
CREATE INDEX IF NOT EXISTS templates_channel_id_idx ON templates (channel, template_id);
