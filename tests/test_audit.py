"""Accountable tracing (issue 14): every trace needs a tracer token and a case id, is audited before its answer
leaves, the audit chain shows a removed, edited, inserted or cut-off record, tokens expire and are revoked,
allowances hold per tracer, failed authentications are counted and logged at a bounded rate. Real engines,
real chdb, real HTTP.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from engine.__main__ import main
from engine.devices.client import make_scan
from engine.errors import AuthError
from engine.store.store import Store
from engine.testing.engines import admin_headers, make_fixture
from engine.tracing import audit
from engine.tracing.credentials import TracerRegistry

CASE = "HN-2026-0042"


async def _trace(e: Any, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    return await e.client.request("GET", path, headers_override=headers)  # type: ignore[no-any-return]


async def test_every_trace_is_audited_before_its_answer(engine: Any) -> None:
    e = await engine()
    await e.client.post_scans([make_scan(e.fx.code(1), "venue-1"), make_scan(e.fx.code(2), "venue-1")])
    await e.drained()
    auth = e.tracer("epi-hanoi")
    status, body = await _trace(e, "/v1/trace/person?qr_id=QID0000000001&case_id=" + CASE, auth)
    assert status == 200 and len(body["visits"]) == 1 and len(body["exposures"]) == 1, body
    status, body = await _trace(e, f"/v1/trace/venue?venue_id=venue-1&case_id={CASE}&days=2", auth)
    assert status == 200 and len(body["stays"]) == 2
    records = await e.rt.in_store_thread(audit.list_records, e.rt.store)
    venue, person = records  # newest first
    assert (person.tracer, person.kind, person.subject, person.case_id) == (
        "epi-hanoi", "person", "qr_id=QID0000000001", CASE,
    )  # fmt: skip
    assert person.result_size == 2 and person.client == "127.0.0.1" and person.seq == 1
    assert json.loads(person.parameters)["days"] == 14.0 and json.loads(venue.parameters)["days"] == 2.0
    assert (venue.subject, venue.result_size, venue.seq, venue.prev_hash) == ("venue_id=venue-1", 2, 2, person.hash)
    status, doc = await e.client.request("GET", "/v1/admin/audit/verify", headers_override=admin_headers(e.fx.data_dir))
    assert status == 200 and doc["ok"] is True and doc["chains"][0]["anchored"] is True, doc
    # the anchor kept outside the table is the head the engine last wrote
    assert audit.read_anchor(e.fx.data_dir) == audit.Head(venue.chain, 2, venue.hash)
    _, metrics = await e.ops.request("GET", "/metrics")
    assert 'engine_traces_total{kind="person"} 1.0' in metrics and "engine_audit_chain_ok 1.0" in metrics


async def test_a_trace_without_a_case_id_is_refused_and_not_answered(engine: Any) -> None:
    e = await engine()
    auth = e.tracer()
    for query in ("", "&case_id=", "&case_id=x", "&case_id=bad%0Acase"):
        status, body = await _trace(e, "/v1/trace/person?qr_id=QID0000000001" + query, auth)
        assert status == 400 and "case_id" in body["message"], (query, body)
    assert await e.rt.in_store_thread(audit.list_records, e.rt.store) == []


async def test_expired_and_revoked_tokens_are_refused_and_counted(engine: Any) -> None:
    e = await engine()
    registry = TracerRegistry.for_data_dir(e.fx.data_dir)
    old = registry.add("old-tracer", 1, now=time.time() - 2 * 86_400)  # issued two days ago for one day
    path = f"/v1/trace/venue?venue_id=v&case_id={CASE}"
    status, body = await _trace(e, path, {"Authorization": f"Bearer {old}"})
    assert status == 401 and "expired" in body["message"], body
    live = e.tracer("live-tracer")
    assert (await _trace(e, path, live))[0] == 200
    registry.revoke("live-tracer")
    status, body = await _trace(e, path, live)  # effective on the very next request, no restart
    assert status == 401 and "revoked" in body["message"], body
    with pytest.raises(AuthError):
        registry.authenticate(live["Authorization"][7:])
    _, metrics = await e.ops.request("GET", "/metrics")
    for reason in ("expired", "revoked"):
        assert f'engine_auth_failures_total{{credential="tracer",reason="{reason}"}} 1.0' in metrics


async def test_failed_authentications_are_logged_at_a_bounded_rate(
    engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    e = await engine()
    path = f"/v1/trace/person?qr_id=Q1&case_id={CASE}"
    with caplog.at_level(logging.WARNING, logger="engine.auth"):
        for i in range(30):
            assert (await _trace(e, path, {"Authorization": f"Bearer guess-{i}"}))[0] == 401
        for _ in range(5):
            assert (await _trace(e, "/v1/admin/devices", {"Authorization": "Bearer wrong"}))[0] == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "engine.auth"]
    assert len(lines) == 2, lines  # one per credential kind within the interval, not 35
    assert any("credential=tracer reason=unknown" in ln for ln in lines)
    _, metrics = await e.ops.request("GET", "/metrics")
    assert 'engine_auth_failures_total{credential="tracer",reason="unknown"} 30.0' in metrics
    assert 'engine_auth_failures_total{credential="admin",reason="invalid"} 5.0' in metrics


async def test_allowances_per_tracer_stricter_for_venue_and_second_degree(engine: Any) -> None:
    e = await engine(tracer_person_per_hour=12, tracer_wide_per_hour=6)  # bursts of 2 and 1
    a, b = e.tracer("a"), e.tracer("b")
    person = f"/v1/trace/person?qr_id=Q1&case_id={CASE}"
    assert [(await _trace(e, person, a))[0] for _ in range(3)] == [200, 200, 429]
    status, body = await _trace(e, f"/v1/trace/venue?venue_id=v&case_id={CASE}", a)
    assert status == 200
    status, body = await _trace(e, person + "&second_degree=1", a)  # second degree spends the stricter allowance
    assert status == 429 and "venue and second-degree" in body["message"], body
    assert (await _trace(e, person, b))[0] == 200  # another tracer has its own
    records = await e.rt.in_store_thread(audit.list_records, e.rt.store)
    assert sorted(r.kind for r in records) == ["person", "person", "person", "venue"]  # refusals are not answers


# -- the chain -------------------------------------------------------------------------------------------------
@pytest.fixture
def chain(tmp_path: Path) -> Any:
    """A data directory with a real store and five audit records written by the real writer."""
    fx = make_fixture(tmp_path / "d")
    store = Store.connect(f"chdb://{fx.data_dir / 'store'}", retention_days=28)
    store.migrate()
    log = audit.AuditLog(store, fx.data_dir).open()
    for i in range(5):
        log.append(
            tracer="epi-1", kind="person", subject=f"qr_id=Q{i}", case_id=CASE, parameters={"days": 14},
            result_size=i, client="127.0.0.1",
        )  # fmt: skip
    yield store, fx.data_dir, log
    log.close()
    store.close()


def _problems(store: Store, data_dir: Path) -> list[str]:
    anchor = audit.read_anchor(data_dir)
    (report,) = audit.verify_store(store, [anchor] if anchor else [])
    return report.problems


def _mutate(store: Store, sql: str) -> None:
    store.command(sql + " SETTINGS mutations_sync = 2")


def test_intact_chain_verifies(chain: Any) -> None:
    store, data_dir, _ = chain
    assert _problems(store, data_dir) == []


def test_a_deleted_record_is_found(chain: Any) -> None:
    store, data_dir, _ = chain
    _mutate(store, "ALTER TABLE audit_log DELETE WHERE seq = 3")
    problems = _problems(store, data_dir)
    assert any("record(s) 3 are missing" in p for p in problems), problems


def test_an_edited_record_is_found_even_with_its_hash_recomputed(chain: Any) -> None:
    store, data_dir, _ = chain
    _mutate(store, "ALTER TABLE audit_log UPDATE subject = 'qr_id=SOMEONE-ELSE' WHERE seq = 2")
    problems = _problems(store, data_dir)
    assert problems == ["record 2 was altered: its hash does not match its contents"], problems
    # a forger who also recomputes that record's hash breaks the link to the next record instead
    rec = next(r for r in audit.iter_chain(store, audit.chains(store)[0]) if r.seq == 2)
    _mutate(store, f"ALTER TABLE audit_log UPDATE hash = '{rec.computed_hash()}' WHERE seq = 2")
    assert _problems(store, data_dir) == ["record 3 does not follow the record before it (altered or removed)"]


def test_removing_the_last_records_is_found_through_the_anchor(chain: Any) -> None:
    store, data_dir, log = chain
    head = log.head
    _mutate(store, "ALTER TABLE audit_log DELETE WHERE seq >= 4")
    problems = _problems(store, data_dir)
    assert problems == ["the chain ends at record 3 but its anchor says 5: record(s) 4..5 were removed"], (
        problems
    )  # the shorter chain is valid in itself: only the anchor tells
    # an auditor's head kept off-host shows it too, even with the local anchor gone
    (data_dir / audit.HEAD_FILE).unlink()
    (report,) = audit.verify_store(store, [head])
    assert not report.ok and "4..5 were removed" in report.problems[0]
    (report,) = audit.verify_store(store)
    assert report.ok and not report.anchored  # what `audit verify` then says: not anchored here


def test_an_inserted_record_is_found(chain: Any) -> None:
    store, data_dir, _ = chain
    (c,) = audit.chains(store)
    forged = next(r for r in audit.iter_chain(store, c) if r.seq == 2)
    store.insert_rows(
        audit.TABLE, audit.COLUMNS, audit._TYPES,
        [[forged.chain], [2], [forged.at_ms], ["nobody"], ["person"], ["qr_id=X"], [CASE], ["{}"], [0], ["x"],
         [forged.prev_hash], ["00" * 32]],
    )  # fmt: skip
    problems = _problems(store, data_dir)
    assert any("record 2 appears more than once" in p for p in problems), problems


async def test_a_broken_chain_refuses_tracing_at_the_next_start(chain: Any, aiohttp_server: Any) -> None:
    store, data_dir, log = chain
    _mutate(store, "ALTER TABLE audit_log DELETE WHERE seq = 5")  # the last record, quietly
    log.close()
    store.close()
    from engine.testing.engines import engine_config
    from engine.web.app import create_app
    from engine.web.keys import LISTENERS

    server = await aiohttp_server(create_app(engine_config(data_dir)))
    token = TracerRegistry.for_data_dir(data_dir).add("epi-2")
    import aiohttp

    async with aiohttp.ClientSession() as http:
        url = str(server.make_url(f"/v1/trace/venue?venue_id=v&case_id={CASE}"))
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
            body = await r.json()
            assert r.status == 503 and "records 5..5 of audit chain" in body["message"], body
        async with http.get(server.app[LISTENERS].ops_url + "/metrics") as r:
            assert "engine_audit_chain_ok 0.0" in await r.text()
    await server.close()


# -- the CLI's direct path ---------------------------------------------------------------------------------
def test_cli_direct_trace_needs_a_credential_and_is_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fx = make_fixture(tmp_path / "d")
    args = ["trace", "venue", "--venue-id", "v", "--data-dir", str(fx.data_dir), "--port", "1", "--format", "json"]
    monkeypatch.delenv("ENGINE_TRACER_TOKEN", raising=False)
    assert main([*args, "--case-id", CASE]) == 2  # no engine runs, still no credential, no answer
    assert "tracer token" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args)  # no case id: argparse refuses
    token = TracerRegistry.for_data_dir(fx.data_dir).add("epi-cli")
    monkeypatch.setenv("ENGINE_TRACER_TOKEN", "trc_wrong")
    assert main([*args, "--case-id", CASE]) == 2
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o644)
    assert main([*args, "--case-id", CASE, "--token-file", str(token_file)]) == 2  # a readable token file
    assert "chmod 600" in capsys.readouterr().err
    token_file.chmod(0o600)
    assert main([*args, "--case-id", CASE, "--token-file", str(token_file)]) == 0
    assert json.loads(capsys.readouterr().out)["venue_id"] == "v"
    assert main(["audit", "list", "--data-dir", str(fx.data_dir), "--port", "1", "--json"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)["records"]
    assert rec["tracer"] == "epi-cli" and rec["subject"] == "venue_id=v" and rec["client"].startswith("cli ")
    assert main(["audit", "verify", "--data-dir", str(fx.data_dir), "--port", "1"]) == 0
    assert "OK, anchored" in capsys.readouterr().out
    assert main(["audit", "head", "--data-dir", str(fx.data_dir), "--port", "1"]) == 0
    head = capsys.readouterr().out.strip()
    assert head.endswith(":1:" + rec["hash"])
    bogus = head.rsplit(":", 1)[0] + ":" + "0" * 64
    assert main(["audit", "verify", "--data-dir", str(fx.data_dir), "--port", "1", "--expect", bogus]) == 1
    TracerRegistry.for_data_dir(fx.data_dir).revoke("epi-cli")
    assert main([*args, "--case-id", CASE, "--token-file", str(token_file)]) == 2
    assert "revoked" in capsys.readouterr().err


def test_tracer_commands_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = make_fixture(tmp_path / "d")
    d = ["--data-dir", str(fx.data_dir)]
    out = tmp_path / "t.token"
    assert main(["tracer-add", "epi-1", "--valid-days", "30", "--token-out", str(out), *d]) == 0
    assert out.stat().st_mode & 0o777 == 0o600 and out.read_text().startswith("trc_")
    assert out.read_text().strip() not in capsys.readouterr().out  # not printed when written to a file
    assert main(["tracer-add", "epi-1", *d]) == 2  # active: revoke first
    assert main(["tracer-revoke", "epi-1", *d]) == 0
    assert main(["tracer-list", "--json", *d]) == 0
    doc = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    (t,) = doc["tracers"]
    assert t["state"] == "revoked" and 29 * 86_400 < t["expires"] - t["created"] <= 30 * 86_400
    assert main(["tracer-add", "epi-1", "--valid-days", "400", *d]) == 2  # longer than a token may live
