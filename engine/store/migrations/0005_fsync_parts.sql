-- The WAL forgets a scan once the drain has inserted it, so from then on the part on disk is the only copy.
-- ClickHouse does not fsync new parts by default; without these settings a power cut shortly after an insert
-- could lose scans a device was told are safe. One fsync per insert (a few per second) costs nothing here.
ALTER TABLE {db}.{local:scans}{on_cluster} MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE {db}.{local:scans_by_person}{on_cluster} MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
