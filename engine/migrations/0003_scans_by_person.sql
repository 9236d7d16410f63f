-- The same scans ordered by person, for contact tracing ("where was this person, and who was there then").
-- Fed by a materialized view on each node from the node's own scans, so on a cluster it follows the same
-- person-key sharding. Not a projection: see docs/cluster.md for what was measured.
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
    key_id LowCardinality(String),
    INDEX qr_id_bloom qr_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = {replacing:scans_by_person}
PARTITION BY toDate(scanned_at)
ORDER BY (person_key, scanned_at, scan_id)
TTL toDateTime(scanned_at) + INTERVAL {retention_days} DAY
SETTINGS {dedup_window};

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.scans_by_person_mv{on_cluster}
TO {db}.{local:scans_by_person}
AS SELECT person_key, scanned_at, scan_id, venue_id, direction, device_id, verdict, code_kind, qr_id, key_id
FROM {db}.{local:scans};

{distributed:scans_by_person:sipHash64(person_key)};
