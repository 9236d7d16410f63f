-- What makes several nodes one deployment (issue 15, "Nodes that agree"; docs/cluster.md).
--
-- deployment: facts every node checks at start. Today one: name 'secret_fingerprint', value a keyed hash of the
-- person-key secret (HMAC-SHA256 under the secret itself, engine/deployment/secret.py), never the secret. The first
-- row written is the deployment's (argMin by at): a node whose own fingerprint differs refuses to start, because it
-- would hash the same person to another key and split every trace. (name, value) is the key, so two nodes starting
-- with the same secret at once collapse to one row, and two with different secrets both stay visible (the later one
-- refuses). Deployment-wide: on a sharded cluster the rows live on the registry shard, like devices.
CREATE TABLE IF NOT EXISTS {db}.deployment{on_cluster}
(
    name String,
    value String,
    node String,
    at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {replacing:deployment:at:all}
ORDER BY (name, value)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;

-- trust_lists: every version of the deployment's trust list, as the signed document trust publish wrote
-- (engine/codes/trust_root.py: version, publication time and the list, signed by the deployment root key).
-- Nodes poll for a version above theirs and apply it only if the signature verifies under their root key and the
-- version is higher than the one they hold (no rollback). Keyed by (version, hash of the document), so a document
-- written under an existing version by someone without the root key sits beside the genuine one instead of
-- replacing it in a merge: nodes refuse it (bad signature) and still see the genuine one.
CREATE TABLE IF NOT EXISTS {db}.trust_lists{on_cluster}
(
    version UInt64,
    published_at DateTime64(3, 'UTC'),
    document String,
    publisher String,
    added_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {replacing:trust_lists:added_at:all}
ORDER BY (version, cityHash64(document))
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;
