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
