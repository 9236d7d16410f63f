-- Stays paired once (engine/tracing/stays.py), so a trace reads who overlapped a venue instead of pairing
-- everyone's scans at query time. One row per scan that can anchor a stay (every scan but malformed ones): its
-- entry, or its exit when nobody entered. The row holds what the pairing rule (engine/tracing/pairing.py) makes
-- of that scan twice: over trusted scans only (t_*) and over every scan (a_*, for --include-unverified), so one
-- rewrite of a scan's row keeps both in step. kind 'none' means the scan anchors no stay in that scope (an exit
-- paired with the entry before it, or an unverified scan in the trusted scope); a row with 'none' in both is a
-- tombstone (is_deleted), which is how an exit that a late entry now closes stops being "exit without entry".
-- The key is the anchor scan only, never the pairing's result, so a re-pairing replaces the row (the highest
-- version, the pairing run's block horizon, wins) however the stay changed. scanned_at is the anchor scan's
-- time; a stay starts at it (or the default dwell before it, for an exit without entry) and lasts at most
-- max_stay, so "who was at V between t1 and t2" is one key range per venue.
CREATE TABLE IF NOT EXISTS {db}.{local:stays}{on_cluster}
(
    venue_id String,
    scanned_at DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    person_key FixedString(16),
    scan_id UUID,
    device_id LowCardinality(String),
    qr_id String,
    verdict {enum:verdict},
    version UInt64,
    is_deleted UInt8,
    t_kind Enum8('none' = 0, 'paired' = 1, 'inferred_exit' = 2, 'exit_without_entry' = 3),
    t_start Int64,
    t_end Int64,
    t_last_scan_id UUID,
    t_last_device_id LowCardinality(String),
    t_last_qr_id String,
    t_last_verdict {enum:verdict},
    a_kind Enum8('none' = 0, 'paired' = 1, 'inferred_exit' = 2, 'exit_without_entry' = 3),
    a_start Int64,
    a_end Int64,
    a_last_scan_id UUID,
    a_last_device_id LowCardinality(String),
    a_last_qr_id String,
    a_last_verdict {enum:verdict}
)
ENGINE = {replacing:stays:version, is_deleted}
PARTITION BY toMonday(scanned_at)
ORDER BY (venue_id, scanned_at, person_key, scan_id)
TTL toDateTime(scanned_at) + INTERVAL {retention_days} DAY
SETTINGS index_granularity = 1024, fsync_after_insert = 1, fsync_part_directory = 1;

{distributed:stays:sipHash64(person_key)};

-- How far the stays reach: every scan in a block of `scans` numbered up to `block` is paired into them, with
-- these pairing parameters (a trace asking for others falls back to pairing scans). One row per parameter set;
-- the highest block wins. The job runs on a single node only for now (block numbers are per shard), so on a
-- cluster this table stays empty and traces pair scans as before.
CREATE TABLE IF NOT EXISTS {db}.stays_horizon{on_cluster}
(
    dwell_ms Int64,
    max_stay_ms Int64,
    block UInt64,
    paired_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {replacing:stays_horizon:block:all}
ORDER BY (dwell_ms, max_stay_ms)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;
