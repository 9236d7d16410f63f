-- A scan is identified by (device_id, scan_id), not scan_id alone (issue 12): keyed by scan_id only, a device that
-- reused another device's scan id made the two rows collapse into one in these ReplacingMergeTrees, so a genuine
-- scan could be replaced by whatever another device sent under its id. ClickHouse can only extend a sorting key
-- with a column added in the same ALTER and without a default (old parts must stay sorted), so the device part
-- of the key is a new column, scan_device, that the engine writes equal to device_id. Rows stored before this
-- migration hold '' there: they stay readable as they were and keep the scan_id-only deduplication they were
-- stored under (docs/reliability.md, "Scan identity"). Every statement is re-runnable.
ALTER TABLE {db}.{local:scans}{on_cluster}
    ADD COLUMN IF NOT EXISTS scan_device LowCardinality(String),
    MODIFY ORDER BY (venue_id, scanned_at, scan_id, scan_device);

{distributed_add_column:scans:scan_device LowCardinality(String)};

ALTER TABLE {db}.{local:scans_by_person}{on_cluster}
    ADD COLUMN IF NOT EXISTS scan_device LowCardinality(String),
    MODIFY ORDER BY (person_key, scanned_at, scan_id, scan_device);

{distributed_add_column:scans_by_person:scan_device LowCardinality(String)};

-- The view that feeds scans_by_person must carry the new column; a view's query cannot be altered in place
-- here, so it is replaced. Migrations run before the engine accepts scans, so no insert passes meanwhile.
DROP VIEW IF EXISTS {db}.scans_by_person_mv{on_cluster};

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.scans_by_person_mv{on_cluster}
TO {db}.{local:scans_by_person}
AS SELECT person_key, scanned_at, scan_id, venue_id, direction, device_id, verdict, code_kind, qr_id, key_id,
    scan_device
FROM {db}.{local:scans};

-- Devices bound to venues (issue 12): the venue ids a device may post scans for. Empty means unbound: every row
-- written before this migration reads [] here, so existing devices keep working as before (any venue), are listed
-- as unbound by device-list, and are refused only once the operator sets --require-venue-binding
-- (docs/device-api.md, "Venue binding"). A deployment-wide table: on a sharded cluster the column is added to
-- devices_local and to the Distributed devices table alike (engine/store/schema.py).
ALTER TABLE {db}.devices{on_cluster} ADD COLUMN IF NOT EXISTS venues Array(String);
