-- Registered scanner devices. Small, so on a cluster it is replicated to every node (no {shard} in the
-- path) and read locally; the latest row per device (by updated_at) is its state.
CREATE TABLE IF NOT EXISTS {db}.devices{on_cluster}
(
    device_id String,
    public_key String,
    label String,
    revoked UInt8,
    registered_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC')
)
ENGINE = {replacing:devices:updated_at:all}
ORDER BY device_id;
