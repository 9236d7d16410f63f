-- The bookkeeping table. Store.migrate() runs this file's statements on every start (they are all
-- IF NOT EXISTS) before it can ask which migrations were applied.
-- On a cluster the table is replicated to every node (no {shard} in its path), so any node knows.
CREATE DATABASE IF NOT EXISTS {db}{on_cluster};

CREATE TABLE IF NOT EXISTS {db}.schema_migrations{on_cluster}
(
    name String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {replacing:schema_migrations:applied_at:all}
ORDER BY name;
