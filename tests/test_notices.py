"""Rate-limited log lines (engine.ops.notices): the first at once, then one per interval counting the rest."""

from __future__ import annotations

import logging

import pytest

from engine.ops.notices import Notices


def test_one_line_per_key_per_interval_with_the_suppressed_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    notices = Notices(logging.getLogger("test.notices"), interval_s=60.0, clock=lambda: now[0])
    with caplog.at_level("INFO", logger="test.notices"):
        assert notices.emit("pool", logging.ERROR, "replay memory full (%d nonces)", 10)
        for _ in range(99):
            assert not notices.emit("pool", logging.ERROR, "replay memory full (%d nonces)", 10)
        assert notices.emit("quota:dev-a", logging.WARNING, "device %s over quota", "dev-a")  # its own key
        now[0] = 61.0
        assert notices.emit("pool", logging.ERROR, "replay memory full (%d nonces)", 11)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "replay memory full (10 nonces)",
        "device dev-a over quota",
        "replay memory full (11 nonces) (99 more suppressed in the last 61 s)",
    ]
