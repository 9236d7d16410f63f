-- One-time enrolment codes for browser scanners (engine/devices/enrollment.py + engine/web/enroll.py, docs/scanner.md). The code itself is
-- never stored, only its SHA-256 (hex): a copy of the store cannot enrol a device. One row per state change
-- (issued, then used); the latest row per code by updated_at is its state, read with argMax as devices are.
-- The device id the code will register is chosen when the code is issued, so the operator knows what to revoke.
-- Small and needed by whichever node a scanner reaches, so on a cluster it is replicated to every node (no
-- {shard} in its path), like devices; parts are fsync'd because a lost "used" row would make a code reusable.
CREATE TABLE IF NOT EXISTS {db}.enrollments{on_cluster}
(
    code_sha256 String,
    device_id String,
    venues Array(String),
    label String,
    created_at DateTime64(3, 'UTC'),
    expires_at DateTime64(3, 'UTC'),
    used UInt8,
    used_at DateTime64(3, 'UTC'),
    public_key String,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = {replacing:enrollments:updated_at:all}
ORDER BY code_sha256
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;
