-- 0005 made the scans tables fsync their new parts; two more tables are written and then trusted on restart.
-- person_by_qr: the QR id -> person index is written by the same insert as scans (materialized view), and the
-- WAL forgets that insert once it returns, so an unsynced part lost in a power cut would leave scans that a
-- trace by QR id can no longer reach. devices: a revocation is only as durable as its row; a power cut that
-- lost it would bring a revoked scanner back. Both get the same settings as scans (one fsync per insert).
ALTER TABLE {db}.{local:person_by_qr}{on_cluster} MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE {db}.devices{on_cluster} MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
