// The outbox: every scan is written to IndexedDB before it is sent, and leaves only when the engine has
// answered for it (stored, duplicate or rejected: all final). A retry resends the SAME scan ids, so the engine
// answers "duplicate" for anything it already has: each scan is stored exactly once however often the network
// fails between the engine's fsync and our reading of the 202. One batch is in flight at a time (and, with
// the Web Locks API, one per browser profile, so two open tabs cannot race each other).

import { idb, signRequest, tx } from "./device.js";

const MAX_BATCH = 50;
const BASE_DELAY_MS = 1000;
const MAX_NETWORK_DELAY_MS = 10_000; // a phone back in coverage should not wait long
const MAX_SERVER_DELAY_MS = 300_000; // an engine's Retry-After is honoured up to five minutes
const TIMEOUT_MS = 15_000;

export async function enqueue(scan) {
  await tx("outbox", "readwrite", (s) => idb(s.add({ ...scan, queued_at: Date.now() })));
}

export async function pending(limit = MAX_BATCH) {
  return tx("outbox", "readonly", (s) => idb(s.getAll(null, limit)));
}

export async function count() {
  return tx("outbox", "readonly", (s) => idb(s.count()));
}

async function remove(seqs) {
  await tx("outbox", "readwrite", async (s) => {
    for (const seq of seqs) await idb(s.delete(seq));
  });
}

function retryAfterMs(res) {
  const value = res.headers.get("Retry-After");
  if (!value) return 0;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : 0;
}

export class Sender {
  // hooks: getDevice() -> device or null; onResults(items, results); onState({state, ...}); onRevoked(status, message)
  constructor(apiBase, hooks) {
    this.url = new URL("v1/scans", apiBase);
    this.hooks = hooks;
    this.attempt = 0;
    this.batchSize = MAX_BATCH;
    this.notBefore = 0; // set by Retry-After: nothing is sent earlier, not even on a new scan
    this.timer = null;
    this.running = false;
    this.again = false;
    this.stopped = false;
    this.log = []; // the last requests: {sent_at, at (answered), status, scan_ids, retry_after_ms}
  }

  record(entry) {
    this.log.push(entry);
    if (this.log.length > 50) this.log.shift();
  }

  // Send now if allowed (a new scan, the network came back, the page became visible).
  kick() {
    if (this.stopped) return;
    const wait = this.notBefore - Date.now();
    if (wait > 0) return this.schedule(wait);
    if (this.running) {
      this.again = true;
      return;
    }
    clearTimeout(this.timer);
    this.timer = null;
    this.running = true;
    const run = () => this.drain().finally(() => {
      this.running = false;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
    if (navigator.locks) navigator.locks.request("vnqr-outbox", run);
    else run();
  }

  schedule(ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.kick();
    }, ms);
    this.hooks.onState({ state: "waiting", retryInMs: ms });
  }

  backoff(serverMs, capMs) {
    const exp = Math.min(capMs, BASE_DELAY_MS * 2 ** this.attempt) * (0.8 + Math.random() * 0.4);
    this.attempt += 1;
    const ms = Math.max(serverMs, exp);
    if (serverMs > 0) this.notBefore = Date.now() + serverMs;
    this.schedule(Math.min(ms, MAX_SERVER_DELAY_MS));
    return ms;
  }

  async drain() {
    for (;;) {
      const device = await this.hooks.getDevice();
      if (!device || device.revoked) return; // the page asks for (re-)enrolment; scans wait in the outbox
      const items = await pending(this.batchSize);
      if (items.length === 0) {
        this.attempt = 0;
        this.hooks.onState({ state: "idle" });
        return;
      }
      const outcome = await this.post(device, items);
      if (outcome !== "sent") return;
    }
  }

  async post(device, items) {
    const scans = items.map((i) => ({
      scan_id: i.scan_id,
      qr: i.qr,
      venue_id: i.venue_id,
      direction: i.direction,
      scanned_at: i.scanned_at,
    }));
    const body = new TextEncoder().encode(JSON.stringify({ device_id: device.device_id, scans }));
    const headers = {
      "Content-Type": "application/json",
      ...(await signRequest(device, "POST", this.url.pathname + this.url.search, body)),
    };
    this.hooks.onState({ state: "sending", items: items.length });
    let res;
    const sentAt = Date.now();
    const abort = new AbortController();
    const timeout = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      res = await fetch(this.url, { method: "POST", headers, body, cache: "no-store", signal: abort.signal });
    } catch (err) {
      this.record({ sent_at: sentAt, at: Date.now(), status: 0, scan_ids: items.map((i) => i.scan_id), retry_after_ms: 0 });
      const ms = this.backoff(0, MAX_NETWORK_DELAY_MS);
      this.hooks.onState({ state: "offline", retryInMs: ms, error: String(err) });
      return "failed";
    } finally {
      clearTimeout(timeout);
    }
    let answer = null;
    try {
      answer = await res.json();
    } catch {
      answer = null;
    }
    const message = (answer && answer.message) || `engine answered ${res.status}`;
    const retryAfter = retryAfterMs(res);
    this.record({ sent_at: sentAt, at: Date.now(), status: res.status, scan_ids: items.map((i) => i.scan_id), retry_after_ms: retryAfter });
    if (res.status === 202 && answer && Array.isArray(answer.results)) {
      this.attempt = 0;
      this.notBefore = 0;
      const done = [];
      for (const r of answer.results) {
        if (items[r.index]) done.push(items[r.index].seq);
      }
      await remove(done);
      this.hooks.onResults(items, answer.results);
      return "sent";
    }
    // 403: revoked. The engine answers an unknown device exactly like a bad signature (401 "request not
    // authenticated: …", so strangers cannot tell which ids exist); for this page either means its key is no
    // longer the registered one: enrol again, as for an unknown device before.
    if (res.status === 403 || (res.status === 401 && /^request not authenticated/.test(message))) {
      this.hooks.onRevoked(res.status, message);
      return "failed";
    }
    if (res.status === 413 && this.batchSize > 1) {
      this.batchSize = Math.max(1, Math.floor(this.batchSize / 2));
      return "sent"; // try again at once, smaller
    }
    let cap = MAX_NETWORK_DELAY_MS * 3;
    let hint = "";
    if (res.status === 401) hint = "clock"; // stale timestamp is the usual cause on a phone
    if (res.status === 429 || res.status === 503) cap = MAX_SERVER_DELAY_MS;
    if (res.status === 400) cap = 60_000; // a bug on our side: keep the scans, do not hammer the engine
    const ms = this.backoff(retryAfter, cap);
    this.hooks.onState({ state: "refused", status: res.status, message, hint, retryInMs: ms });
    return "failed";
  }
}
