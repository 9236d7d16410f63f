-- Only verified-genuine scans create links a trusted trace follows (issue 12; docs/payload.md section 5, Rule 3).
-- person_by_qr (QR id -> person key) was fed from every scan with a QR id, whatever its verdict: one hand-made
-- unsigned code naming a victim's QR id added its own person key under that QR id, and a trusted trace by QR
-- id then read that key's verified visits. Each pair now carries `verified`: 1 when a scan with verdict 'ok'
-- showed it, 0 when only other scans did. A trusted trace follows only verified = 1; --include-unverified
-- follows both and marks the rows it reached through a 0 (engine/tracing/queries.py). The flag is part of the
-- sorting key, so a verified pair and an unverified claim of the same pair are two rows that never replace
-- each other. ClickHouse extends a sorting key only with a column added in the same ALTER, without a default.
ALTER TABLE {db}.{local:person_by_qr}{on_cluster}
    ADD COLUMN IF NOT EXISTS verified UInt8,
    MODIFY ORDER BY (qr_id, person_key, verified);

{distributed_add_column:person_by_qr:verified UInt8};

-- The view is replaced to write the flag (a view's query cannot be altered in place here). Malformed scans name
-- nobody and carry no QR id; every other verdict is recorded, as a claim, with verified = 0. Migrations run
-- before the engine accepts scans, so no insert passes between the drop and the create.
DROP VIEW IF EXISTS {db}.person_by_qr_mv{on_cluster};

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.person_by_qr_mv{on_cluster}
TO {db}.{local:person_by_qr}
AS SELECT qr_id, person_key, scanned_at, toUInt8(verdict = 'ok') AS verified
FROM {db}.{local:scans}
WHERE qr_id != '';

-- Pairs stored before this migration read verified = 0 (unknown, so not trusted). The ones a verified scan
-- still in the store showed are written again with verified = 1, from each node's own scans (scans and
-- person_by_qr are sharded alike, by person key). Re-running it writes the same pairs, which collapse.
INSERT INTO {db}.{local:person_by_qr} (qr_id, person_key, scanned_at, verified)
SELECT qr_id, person_key, max(scanned_at), 1
FROM {db}.{local:scans}
WHERE qr_id != '' AND verdict = 'ok'
GROUP BY qr_id, person_key;

-- Identity links (Rule 2): a genuine signed code printing its document number whole carries a link key,
-- HMAC(pk1: + number), the identity of that person's CCCD and of their codes from other issuers. The scan row
-- keeps it (16 zero bytes for every other code, and for rows stored before this migration: they link nothing
-- new; an old row whose code printed the number whole already has it as its person key).
ALTER TABLE {db}.{local:scans}{on_cluster} ADD COLUMN IF NOT EXISTS link_key FixedString(16);

{distributed_add_column:scans:link_key FixedString(16)};

-- identity_links holds each link both ways, person key -> link key and link key -> person key, so a trace goes
-- from a person to their document and from the document to its other identities by two lookups in one range
-- each. Fed only by scans with verdict 'ok': no unverified scan links anything. The latest scan of each pair is
-- kept, for the TTL.
CREATE TABLE IF NOT EXISTS {db}.{local:identity_links}{on_cluster}
(
    key FixedString(16),
    linked FixedString(16),
    scanned_at DateTime64(3, 'UTC')
)
ENGINE = {replacing:identity_links:scanned_at}
ORDER BY (key, linked)
TTL toDateTime(scanned_at) + INTERVAL {retention_days} DAY
SETTINGS {dedup_window}, fsync_after_insert = 1, fsync_part_directory = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.identity_links_mv{on_cluster}
TO {db}.{local:identity_links}
AS SELECT person_key AS key, link_key AS linked, scanned_at
FROM {db}.{local:scans}
WHERE verdict = 'ok' AND NOT empty(link_key);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.identity_links_back_mv{on_cluster}
TO {db}.{local:identity_links}
AS SELECT link_key AS key, person_key AS linked, scanned_at
FROM {db}.{local:scans}
WHERE verdict = 'ok' AND NOT empty(link_key);

{distributed:identity_links:sipHash64(key)};
