"""What makes several engine nodes one deployment: one person-key secret (checked against the store's record of
its fingerprint), one signed trust list polled from the store, and registries (devices, tracers, admin tokens)
refreshed from the store. A lower room than ``engine.web``: it knows the store, the codes and the registries,
never the HTTP application (docs/cluster.md)."""
