-- The tracing audit log (engine/tracing/audit.py): one row per answered trace, hash-chained per writer.
-- Append-only by use: the engine only INSERTs and SELECTs; on a server, give the engine's user no ALTER/DELETE
-- on this table (docs/security.md). No TTL: an audit record outlives the scans it is about. Plain MergeTree,
-- never Replacing: a row inserted later under an existing (chain, seq) must stay visible beside the original, so
-- the verifier sees the duplicate instead of a merge quietly keeping one of them. On a cluster each node keeps its
-- own chain in its own table (ON CLUSTER creates one per node). Parts fsync'd like the scans'.
CREATE TABLE IF NOT EXISTS {db}.audit_log{on_cluster}
(
    chain String,
    seq UInt64,
    at DateTime64(3, 'UTC'),
    tracer String,
    kind LowCardinality(String),
    subject String,
    case_id String,
    parameters String,
    result_size UInt64,
    client String,
    prev_hash String,
    hash String
)
ENGINE = MergeTree
ORDER BY (chain, seq)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;
