-- Tracer and operator credentials, one registry per deployment (issue 15; engine/tracing/credentials.py): before
-- this, each data directory held its own tracers.json and admin.token, so a tracer added on node A was refused by
-- node B. Only the SHA-256 of a token is kept, never the token. kind is 'tracer' or 'admin'; the latest row per
-- (kind, name) by updated_at is the credential's state (a revocation is a new row with revoked set), read with
-- argMax, so no FINAL is needed. Deployment-wide: on a sharded cluster the rows live on the registry shard.
CREATE TABLE IF NOT EXISTS {db}.credentials{on_cluster}
(
    kind LowCardinality(String),
    name String,
    token_sha256 String,
    created Int64,
    expires Int64,
    revoked Int64,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = {replacing:credentials:updated_at:all}
ORDER BY (kind, name)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;
