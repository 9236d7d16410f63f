-- The deployment's verified-code set (docs/payload.md section 6; engine/ingest/codeset.py): one row per code whose
-- signature a node verified, so no other node of the deployment verifies it again in its validity period. A row
-- holds no personal data: the tag is a keyed BLAKE2b-128 over the exact code bytes (signature included), the key
-- id is the issuer's, exp the code's. mac is a BLAKE2b MAC under the deployment secret over (tag, kid, exp): a
-- node loads only rows whose MAC it reproduces, so whoever can write here without the secret can add nothing that
-- makes a forged code pass. (tag, mac) is the key, so a forged row beside a genuine one with the same tag never
-- collapses the genuine one away in a merge. added_at is set by the server and drives the other nodes' polls;
-- day partitions keep a poll on today's parts. Rows go at the code's exp. Deployment-wide: on a sharded cluster
-- the rows live on the registry shard and every node reads the same table, like devices. Parts are fsync'd like
-- every table the engine writes: one small insert per scans insert.
CREATE TABLE IF NOT EXISTS {db}.verified_codes{on_cluster}
(
    tag FixedString(16),
    kid FixedString(8),
    exp Int64,
    mac FixedString(16),
    node LowCardinality(String),
    added_at DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX added_at_minmax added_at TYPE minmax GRANULARITY 1
)
ENGINE = {replacing:verified_codes:added_at:all}
PARTITION BY toYYYYMMDD(added_at)
ORDER BY (tag, mac)
TTL toDateTime(least(greatest(exp, 0), 4294967295))
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;
