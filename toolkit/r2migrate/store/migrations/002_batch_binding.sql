-- Version 2: every batch records its target (endpoint, bucket, location) and its source (disk
-- MEDIA_ROOT or media URL) at plan time, and every later command acts on those, never on the
-- settings of the day. A key is unique per target, so one ledger can migrate the same files to
-- a staging bucket and then to production.

ALTER TABLE {schema}.batches
    ADD COLUMN endpoint_url text NOT NULL DEFAULT '',   -- normalised; '' = AWS's own endpoint
    ADD COLUMN source_kind  text NOT NULL DEFAULT 'disk' CHECK (source_kind IN ('disk', 'http')),
    ADD COLUMN media_root   text,                       -- absolute, for source_kind = 'disk'
    ADD COLUMN media_url    text;                       -- normalised, for source_kind = 'http'

-- Batches of version 1 kept the (redacted) settings they were planned with: read the binding
-- from there. The endpoint is normalised as binding.normalize_endpoint does (lower case, no
-- default port, no trailing '/'); an R2 account id gives R2's endpoint.
UPDATE {schema}.batches SET
    endpoint_url = regexp_replace(regexp_replace(regexp_replace(lower(coalesce(
        nullif(settings->>'endpoint_url', ''),
        'https://' || nullif(settings->>'r2_account_id', '') || '.r2.cloudflarestorage.com',
        '')), '/+$', ''), '^(http://[^/]*):80(/|$)', '\1\2'), '^(https://[^/]*):443(/|$)', '\1\2'),
    source_kind = CASE WHEN settings->>'source' = 'http' THEN 'http' ELSE 'disk' END,
    media_root = CASE WHEN coalesce(settings->>'source', 'disk') <> 'http'
                      THEN nullif(settings->>'media_root', '') END,
    media_url = CASE WHEN settings->>'source' = 'http'
                     THEN regexp_replace(settings->>'media_url', '/*$', '/') END;

-- The namespace of a file's key, copied from its batch: a unique index cannot reach across
-- tables. '<endpoint or aws>/<bucket>', as binding.Target.target_id spells it.
ALTER TABLE {schema}.files ADD COLUMN target_id text;
UPDATE {schema}.files f SET target_id = coalesce(nullif(b.endpoint_url, ''), 'aws') || '/' || b.bucket_name
    FROM {schema}.batches b WHERE b.batch_id = f.batch_id;
ALTER TABLE {schema}.files ALTER COLUMN target_id SET NOT NULL;

DROP INDEX {schema}.files_live_key;
-- A key belongs to at most one live batch per target: planning twice never queues the same
-- upload twice, and a second target is planned independently.
CREATE UNIQUE INDEX files_live_key ON {schema}.files (target_id, object_key)
    WHERE status <> 'rolled_back';
