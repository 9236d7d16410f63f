// The scanner page: enrolment, scanning, the verdict on screen. What it shows is decided in docs/scanner.md:
// the verdict, why, the direction, the time and a masked QR id; never a name, birth date or document number.
// The code text itself lives only in the outbox until the engine has answered for it.

import { Camera } from "./camera.js";
import { EnrolError, enrol, isEnrolmentText, loadDevice, loadPrefs, saveDevice, savePrefs } from "./device.js";
import { language, setLanguage, t, verdictLabel } from "./i18n.js";
import { Sender, count, enqueue } from "./outbox.js";

const REPEAT_MS = 5000; // a code is scanned again only after it has been out of view this long
const SHOW_LATE_VERDICT_MS = 10_000; // a verdict that arrives later than this goes to the history only
const HISTORY_ITEMS = 8;
const API_BASE = new URL("../", location.href); // /scanner/ -> /, also behind a path prefix

const $ = (id) => document.getElementById(id);

// Read by people through the DOM, and by tests through window.scanner (no secret is ever put here).
const state = {
  mode: "loading", // loading | enrol | scan
  device: null,
  direction: "in",
  venue: null,
  current: null, // {scan_id, at, masked, direction}
  queue: 0,
  net: "online",
  tones: [],
  scans: 0,
  enrolling: false,
  sw: "none",
  lastError: "",
};
window.scanner = state;
let prefs = {}; // {lang, direction, venue}: kept in IndexedDB

// code text -> last time it was in view, per mode (memory only): a person's code shown while enrolling is not
// "already seen" once the page can scan it
const seen = { enrol: new Map(), scan: new Map(), loading: new Map() };

// -- display ---------------------------------------------------------------------------------------------
function maskedQrId(text) {
  const fields = String(text).split("|");
  if (fields.length !== 6) return ""; // a CCCD or anything else: its numbers are not shown at all
  const qid = fields[4];
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(qid)) return "";
  return qid.length > 6 ? "•••" + qid.slice(-4) : "•••";
}

function timeText(ms) {
  return new Date(ms).toLocaleTimeString(language() === "vi" ? "vi-VN" : "en-GB", { hour12: false });
}

function setVerdict(kind, title, why, meta = "") {
  const box = $("verdict");
  box.dataset.state = kind;
  $("verdict-title").textContent = title;
  $("verdict-title").removeAttribute("data-i18n");
  $("verdict-why").textContent = why;
  $("verdict-meta").textContent = meta;
  box.setAttribute("aria-label", why ? `${title}: ${why}` : title);
  box.dataset.text = why ? `${title}: ${why}` : title;
}

function metaFor(scan) {
  return [t(scan.direction), scan.masked, timeText(scan.at)].filter(Boolean).join(" · ");
}

function describe(result) {
  if (result.status === "rejected") {
    return { kind: "bad", title: t("not_accepted"), why: result.error || "", verdict: "rejected" };
  }
  const dup = result.status === "duplicate" ? ` (${t("duplicate")})` : "";
  if (result.verdict === "ok") return { kind: "ok", title: t("verified"), why: dup.trim(), verdict: "ok" };
  const reason = result.reason && result.reason !== "none" ? ` (${result.reason.replaceAll("_", " ")})` : "";
  return { kind: "bad", title: t("not_verified"), why: verdictLabel(result.verdict) + reason + dup, verdict: result.verdict };
}

function addHistory(scan, d) {
  const li = document.createElement("li");
  li.dataset.state = d.kind;
  li.dataset.scanId = scan.scan_id;
  li.dataset.verdict = d.verdict;
  li.textContent = [timeText(scan.at), t(scan.direction), scan.masked || "—", d.why ? `${d.title}: ${d.why}` : d.title].join("  ");
  const list = $("history");
  list.prepend(li);
  while (list.children.length > HISTORY_ITEMS) list.lastElementChild.remove();
}

let audio = null;
const TONES = {
  ok: { type: "sine", notes: [[880, 0, 0.12], [1320, 0.15, 0.18]] },
  bad: { type: "square", notes: [[220, 0, 0.5]] },
  queued: { type: "sine", notes: [[660, 0, 0.25]] },
  revoked: { type: "square", notes: [[260, 0, 0.3], [196, 0.35, 0.4]] },
};

function tone(kind) {
  try {
    audio ??= new AudioContext();
    if (audio.state === "suspended") audio.resume();
    const spec = TONES[kind];
    const t0 = audio.currentTime + 0.02;
    for (const [freq, at, dur] of spec.notes) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = spec.type;
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, t0 + at);
      gain.gain.exponentialRampToValueAtTime(0.25, t0 + at + 0.015);
      gain.gain.exponentialRampToValueAtTime(0.0001, t0 + at + dur);
      osc.connect(gain).connect(audio.destination);
      osc.start(t0 + at);
      osc.stop(t0 + at + dur + 0.03);
    }
    state.tones.push(kind);
  } catch (err) {
    state.lastError = "audio: " + err;
  }
}

async function refreshQueue() {
  state.queue = await count();
  const q = $("queue");
  q.dataset.count = String(state.queue);
  q.textContent = state.queue ? t("queue_count", { n: state.queue }) : t("queue_empty");
}

function setNet(net) {
  state.net = net;
  const pill = $("net");
  pill.dataset.state = net;
  pill.dataset.i18n = net;
  pill.textContent = t(net);
}

function showDevice() {
  const d = state.device;
  $("device").textContent = d ? `${t("device")}: ${d.device_id} · ${t("venue")}: ${state.venue}` : "";
}

function setMode(mode) {
  state.mode = mode;
  document.body.dataset.mode = mode;
  $("enrol").hidden = mode !== "enrol";
  $("scan").hidden = mode !== "scan";
  $("status").hidden = mode === "loading";
}

// -- enrolment -------------------------------------------------------------------------------------------
function showEnrol(revokedMessage = "") {
  setMode("enrol");
  const warn = $("reenrol");
  warn.hidden = !revokedMessage;
  warn.textContent = revokedMessage;
  showDevice();
}

async function tryEnrol(text) {
  if (state.enrolling) return;
  state.enrolling = true;
  $("enrol-error").textContent = t("enrol_working");
  $("enrol-submit").disabled = true;
  try {
    state.device = await enrol(API_BASE, text);
    state.venue = state.device.venue;
    $("enrol-error").textContent = "";
    $("enrol-code").value = "";
    startScanning();
    sender.kick(); // scans kept while the device had to re-enrol go out now
  } catch (err) {
    const message = err instanceof EnrolError ? `${err.message} (${err.status})` : String(err.message || err);
    $("enrol-error").textContent = message;
    state.lastError = message;
  } finally {
    state.enrolling = false;
    $("enrol-submit").disabled = false;
  }
}

async function onRevoked(status, message) {
  if (state.device) {
    state.device = { ...state.device, revoked: true, revoked_message: message };
    await saveDevice(state.device);
  }
  const text = /revoked/i.test(message) ? t("reenrol") : t("reenrol_unknown");
  showEnrol(text);
  setVerdict("revoked", text, "");
  tone("revoked");
}

// -- scanning --------------------------------------------------------------------------------------------
function startScanning() {
  setMode("scan");
  const venues = state.device.venues || [state.device.venue];
  const select = $("venue");
  select.replaceChildren(
    ...venues.map((v) => {
      const o = document.createElement("option");
      o.value = v;
      o.textContent = v;
      return o;
    }),
  );
  state.venue = venues.includes(prefs.venue) ? prefs.venue : venues[0];
  select.value = state.venue;
  select.disabled = venues.length < 2;
  $("reenrol").hidden = true;
  setDirection(state.direction);
  showDevice();
}

function setDirection(direction) {
  state.direction = direction;
  if (prefs.direction !== direction) {
    prefs = { ...prefs, direction };
    savePrefs(prefs);
  }
  for (const b of document.querySelectorAll(".direction button")) {
    b.setAttribute("aria-checked", String(b.dataset.dir === direction));
  }
}

function isRepeat(text, now) {
  const map = seen[state.mode];
  for (const [code, at] of map) if (now - at > REPEAT_MS) map.delete(code);
  const last = map.get(text);
  map.set(text, now); // sliding: a code held in view stays one scan however long it stays
  return last !== undefined;
}

async function onText(text) {
  const now = Date.now();
  if (isRepeat(text, now)) return;
  if (state.mode === "enrol") {
    if (isEnrolmentText(text)) await tryEnrol(text);
    else $("enrol-error").textContent = t("not_enrol_code");
    return;
  }
  if (state.mode !== "scan" || isEnrolmentText(text)) return;
  const scan = {
    scan_id: crypto.randomUUID(),
    qr: text,
    venue_id: state.venue,
    direction: state.direction,
    scanned_at: now,
  };
  await enqueue(scan);
  state.scans += 1;
  state.current = { scan_id: scan.scan_id, at: now, masked: maskedQrId(text), direction: scan.direction };
  setVerdict("sending", t("sending"), "", metaFor(state.current));
  await refreshQueue();
  sender.kick();
}

function onResults(items, results) {
  for (const r of results) {
    const item = items[r.index];
    if (!item) continue;
    const scan = { scan_id: item.scan_id, at: item.scanned_at, masked: maskedQrId(item.qr), direction: item.direction };
    const d = describe(r);
    addHistory(scan, d);
    const cur = state.current;
    if (cur && cur.scan_id === item.scan_id && Date.now() - cur.at < SHOW_LATE_VERDICT_MS) {
      setVerdict(d.kind, d.title, d.why, metaFor(cur));
      $("verdict").dataset.verdict = d.verdict;
      $("verdict").dataset.scanId = item.scan_id;
      tone(d.kind);
    }
  }
  setNet("online");
  refreshQueue();
}

function onSendState(s) {
  if (s.state === "offline") setNet("offline");
  if (s.state === "idle" || s.state === "sending") refreshQueue();
  const cur = state.current;
  if ((s.state === "offline" || s.state === "refused") && cur && $("verdict").dataset.state === "sending") {
    let why = t("queued_why");
    if (s.state === "refused") why = `${s.message} (${s.status})${s.hint ? "; " + t(s.hint) : ""}`;
    setVerdict("queued", t("queued"), why, metaFor(cur));
    $("verdict").dataset.verdict = "queued";
    $("verdict").dataset.scanId = cur.scan_id;
    tone("queued");
  }
}

const sender = new Sender(API_BASE, {
  getDevice: async () => state.device,
  onResults,
  onState: onSendState,
  onRevoked,
});
state.sends = sender.log; // {at, status, scan_ids, retry_after_ms}: what was sent when, for people and tests

// -- start -----------------------------------------------------------------------------------------------
function relabel() {
  setLanguage(prefs.lang || "vi");
  $("lang").textContent = t("lang_button");
  showDevice();
  refreshQueue();
}

async function main() {
  prefs = await loadPrefs();
  state.direction = prefs.direction === "out" ? "out" : "in";
  relabel();
  $("lang").addEventListener("click", async () => {
    prefs = { ...prefs, lang: language() === "vi" ? "en" : "vi" };
    relabel();
    await savePrefs(prefs);
    state.prefsSaved = prefs.lang;
  });
  for (const b of document.querySelectorAll(".direction button")) {
    b.addEventListener("click", () => setDirection(b.dataset.dir));
  }
  $("venue").addEventListener("change", (e) => {
    state.venue = e.target.value;
    prefs = { ...prefs, venue: state.venue };
    savePrefs(prefs);
    showDevice();
  });
  $("enrol-form").addEventListener("submit", (e) => {
    e.preventDefault();
    tryEnrol($("enrol-code").value);
  });
  window.addEventListener("online", () => sender.kick());
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && sender.kick());

  if ("serviceWorker" in navigator) {
    // The CSP demands Trusted Types for script URLs: this policy lets exactly our own worker through.
    const policy = window.trustedTypes?.createPolicy("scanner-sw", {
      createScriptURL: (url) => {
        if (url !== "sw.js") throw new TypeError("only sw.js may be registered as a service worker");
        return url;
      },
    });
    navigator.serviceWorker
      .register(policy ? policy.createScriptURL("sw.js") : "sw.js")
      .then(() => navigator.serviceWorker.ready)
      .then(() => (state.sw = "ready"))
      .catch((err) => (state.sw = "failed: " + err));
  }

  state.device = await loadDevice();
  if (!state.device) showEnrol();
  else if (state.device.revoked) {
    showEnrol(/revoked/i.test(state.device.revoked_message || "") ? t("reenrol") : t("reenrol_unknown"));
  } else {
    state.venue = state.device.venue;
    startScanning();
  }
  await refreshQueue();
  sender.kick(); // whatever an earlier visit left in the outbox

  const camera = new Camera($("video"), (text) => onText(text).catch((e) => (state.lastError = String(e))), (err) => {
    state.lastError = String(err);
  });
  state.camera = camera;
  try {
    await camera.start();
    $("camera-status").dataset.i18n = "camera_on";
    $("camera-status").textContent = t("camera_on");
  } catch (err) {
    state.lastError = String(err);
    $("camera-status").dataset.i18n = "camera_error";
    $("camera-status").textContent = `${t("camera_error")}: ${err.name || err}`;
  }
}

main().catch((err) => {
  state.lastError = String(err);
  $("camera-status").textContent = String(err);
});
