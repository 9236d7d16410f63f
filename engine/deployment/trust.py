"""One signed trust list per deployment: loaded from the store at start, polled, refused when wrong.

With ``--trust-root-key`` a node uses only trust lists signed by the deployment root key
(:mod:`engine.codes.trust_root`). At start it takes the highest valid version among

* its own copy of the last version it applied (``<data_dir>/trust.signed.json``): the high-water mark, so that
  after a restart it still refuses versions older than the one it ran (no rollback through a restart);
* the newest valid version in the store (``trust_lists``, migration 0013);
* the ``--trust-list`` file, if it holds a signed document (how a deployment starts before its first publish);

and refuses to start if there is none. Then it polls the store every ``--trust-poll-s`` seconds for a version
above its own and applies it between two verify batches. Everything refused (a bad signature, an older version, a
reused version, an unsigned or malformed document) is logged once per document and counted in
``engine_trust_list_refused_total{reason}``; the list in use stays. ``engine_trust_list_version`` and
``engine_trust_list_age_seconds`` say what each node runs (an alert fires when a node lags the others).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from engine.codes.trust_root import SignedTrustList, TrustListRefused, check_newer, is_signed, verify
from engine.durable import replace_file
from engine.errors import ConfigError, EngineError
from engine.ops.metrics import Metrics
from engine.store.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

CACHE_FILE = "trust.signed.json"


class TrustFeed:
    """This node's signed trust list and where new versions come from."""

    def __init__(
        self, store: Store, root_key: bytes, metrics: Metrics, data_dir: Path, file_path: Path | None, node: str
    ) -> None:
        self._store = store
        self._root = root_key
        self._metrics = metrics
        self._cache = data_dir / CACHE_FILE
        self._file = file_path
        self._node = node
        self._refused: set[bytes] = set()  # digests of documents already refused: logged and counted once
        self.current: SignedTrustList | None = None
        metrics.on_scrape(self._refresh_metrics)

    # -- start ----------------------------------------------------------------------------------------------
    def load_at_start(self) -> SignedTrustList:
        """The highest valid version among this node's copy, the store and the file (store thread)."""
        if self._cache.exists():
            self._consider(self._cache.read_bytes(), f"this node's copy {self._cache}")
        if self._file is not None and self._file.exists():
            raw = self._file.read_bytes()
            if is_signed(raw):
                self._consider(raw, f"trust list file {self._file}")
            else:
                log.warning(
                    "trust list file %s is not signed: not used (with --trust-root-key only lists signed by the "
                    "root key are; sign and publish it with trust publish)",
                    self._file,
                )
        newer = self.newer_in_store()
        if newer is not None:
            self._adopt(newer)
        if self.current is None:
            raise ConfigError(
                "refusing to start: no trust list signed by the deployment root key, neither in the store nor in "
                f"{self._file or 'a --trust-list file'}: publish one with python -m engine trust publish"
            )
        self._save()
        return self.current

    def _consider(self, raw: bytes, source: str) -> None:
        try:
            signed = verify(raw, self._root, source)
            check_newer(signed, self.current, source)
        except TrustListRefused as exc:
            self._refuse(raw, exc)
            return
        if self.current is None or signed.version > self.current.version:
            self._adopt(signed)

    # -- polling --------------------------------------------------------------------------------------------
    def newer_in_store(self) -> SignedTrustList | None:
        """The highest valid version in the store above the one in use, or None (store thread)."""
        held = self.current.version if self.current is not None else 0
        rows = self._store.query(
            "SELECT version, document FROM trust_lists WHERE version >= {v:UInt64} ORDER BY version DESC, "
            "published_at DESC",
            {"v": held},
        )
        if rows:
            self._metrics.trust_list_store_version.set(max(int(r[0]) for r in rows))
        for version, document in rows:
            raw = document.encode() if isinstance(document, str) else bytes(document)
            if self.current is not None and raw == self.current.document:
                continue
            source = f"store trust_lists version {version}"
            try:
                signed = verify(raw, self._root, source)
                if signed.version != int(version):
                    raise TrustListRefused(
                        f"{source}: the document inside says version {signed.version}", "version_mismatch"
                    )
                check_newer(signed, self.current, source)
            except TrustListRefused as exc:
                self._refuse(raw, exc)
                continue
            if self.current is None or signed.version > self.current.version:
                return signed
        return None

    async def keep_polling(
        self,
        in_store_thread: Callable[[Callable[[], SignedTrustList | None]], Awaitable[SignedTrustList | None]],
        apply: Callable[[SignedTrustList], Awaitable[object]],
        interval_s: float,
    ) -> None:
        """Every ``interval_s``: look for a newer signed version in the store; apply it (between two batches)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                found = await in_store_thread(self.newer_in_store)
                if found is not None:
                    await apply(found)
            except EngineError as exc:  # the store is down: the drain reports it; try again next time
                log.debug("trust list poll failed: %s", exc)
            except Exception:
                log.exception("trust list poll failed unexpectedly")

    def adopted(self, signed: SignedTrustList) -> None:
        """Record that ``signed`` is now in use (after the verifier took it)."""
        self._adopt(signed)
        self._save()
        log.info(
            "trust list version %d in use (published %s, %d keys, %d revoked codes)",
            signed.version,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(signed.published_at)),
            len(signed.trust.keys),
            len(signed.trust.revoked_codes),
        )

    # -- publishing ------------------------------------------------------------------------------------------
    def publish(self, document: bytes, publisher: str) -> SignedTrustList:
        """Check a signed document and put it in the store (store thread): refused unless above every version
        the store and this node know. Returns it; the caller applies it."""
        return publish(self._store, self._root, document, publisher, self.current)

    # -- plumbing -------------------------------------------------------------------------------------------
    def _adopt(self, signed: SignedTrustList) -> None:
        self.current = signed
        self._metrics.trust_list_version.set(signed.version)
        self._refresh_metrics()

    def _save(self) -> None:
        if self.current is not None:
            replace_file(self._cache, self.current.document)

    def _refuse(self, raw: bytes, exc: TrustListRefused) -> None:
        digest = hashlib.sha256(raw).digest()
        if digest in self._refused:
            return
        self._refused.add(digest)
        self._metrics.trust_list_refused.labels(reason=exc.reason).inc()
        log.error("trust list refused (%s): %s", exc.reason, exc)

    def _refresh_metrics(self) -> None:
        if self.current is not None:
            self._metrics.trust_list_age.set(max(0.0, time.time() - self.current.published_at))


def publish(
    store: Store, root_key: bytes, document: bytes, publisher: str, current: SignedTrustList | None = None
) -> SignedTrustList:
    """Verify a signed document and insert it into ``trust_lists`` if its version is above the store's newest."""
    signed = verify(document, root_key, "published trust list")
    check_newer(signed, current, "published trust list")
    rows = store.query("SELECT max(version), count() FROM trust_lists")
    newest = int(rows[0][0]) if rows and int(rows[0][1]) else 0
    if signed.version <= newest:
        raise TrustListRefused(
            f"published trust list: version {signed.version} is not above version {newest} in the store "
            f"(publish version {newest + 1})",
            "rollback",
        )
    store.insert_rows(
        "trust_lists",
        ["version", "published_at", "document", "publisher"],
        ["UInt64", "DateTime64(3, 'UTC')", "String", "String"],
        [
            [signed.version],
            [datetime.fromtimestamp(signed.published_at_ms / 1000, UTC)],
            [document.decode()],
            [publisher],
        ],
    )
    return signed


def newest_version(store: Store) -> int:
    rows = store.query("SELECT max(version), count() FROM trust_lists")
    return int(rows[0][0]) if rows and int(rows[0][1]) else 0
