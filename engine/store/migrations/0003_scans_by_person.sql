-- The same scans ordered by person, for contact tracing ("where was this person, and who was there then").
-- Fed by a materialized view on each node from the node's own scans, so on a cluster it follows the same
-- person-key sharding. Not a projection: see docs/cluster.md for what was measured. Weekly partitions and
-- 1024-row granules: a 14-day person trace at 10M rows went from ~165 ms to ~56 ms p50 (bench/trace_bench.py).
CREATE TABLE IF NOT EXISTS {db}.{local:scans_by_person}{on_cluster}
(
    person_key FixedString(16),
    scanned_at DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    scan_id UUID,
    venue_id String,
    direction Enum8('in' = 1, 'out' = 2),
    device_id LowCardinality(String),
    verdict {enum:verdict},
    code_kind {enum:code_kind},
    qr_id String,
    key_id LowCardinality(String)
)
ENGINE = {replacing:scans_by_person}
PARTITION BY toMonday(scanned_at)
ORDER BY (person_key, scanned_at, scan_id)
TTL toDateTime(scanned_at) + INTERVAL {retention_days} DAY
SETTINGS {dedup_window}, index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.scans_by_person_mv{on_cluster}
TO {db}.{local:scans_by_person}
AS SELECT person_key, scanned_at, scan_id, venue_id, direction, device_id, verdict, code_kind, qr_id, key_id
FROM {db}.{local:scans};

{distributed:scans_by_person:sipHash64(person_key)};

-- QR id -> person key, for tracing by QR id (unpartitioned, so each pair collapses to its latest scan): a bloom filter on scans_by_person.qr_id did not help (a person's
-- QR id is in most parts) and was slower than no index; this small table ordered by qr_id answers in one range.
CREATE TABLE IF NOT EXISTS {db}.{local:person_by_qr}{on_cluster}
(
    qr_id String,
    person_key FixedString(16),
    scanned_at DateTime64(3, 'UTC')  -- the latest scan: ReplacingMergeTree keeps it
)
ENGINE = {replacing:person_by_qr:scanned_at}
ORDER BY (qr_id, person_key)
TTL toDateTime(scanned_at) + INTERVAL {retention_days} DAY
SETTINGS {dedup_window};

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.person_by_qr_mv{on_cluster}
TO {db}.{local:person_by_qr}
AS SELECT qr_id, person_key, scanned_at
FROM {db}.{local:scans}
WHERE qr_id != '';

{distributed:person_by_qr:sipHash64(person_key)};
