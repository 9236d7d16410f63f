// The device identity: an Ed25519 key made by WebCrypto inside this browser (non-extractable: the private key
// can sign but can never be read out, not even by this page), kept in IndexedDB with the enrolment answer,
// and the request signing of the device contract (engine/devices.py), byte for byte what engine/client.py does.

export const DB_NAME = "vnqr-scanner";
const DB_VERSION = 1;
const DEVICE_DOMAIN = "VNQR-DEVICE-REQ-V1\u0000";
const PROOF_DOMAIN = "VNQR-ENROL-PROOF-V1\u0000";
export const ENROL_QR_PREFIX = "VNQR-ENROL-1:";
const CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CODE_CHARS = 20;

const encoder = new TextEncoder();

// -- IndexedDB -------------------------------------------------------------------------------------------
let dbPromise = null;

export function openDb() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const req = indexedDB.open(DB_NAME, DB_VERSION);
      req.onupgradeneeded = () => {
        const db = req.result;
        db.createObjectStore("config");
        // autoIncrement keeps scans in the order they were made; scan_id is unique (a retry is the same scan)
        const outbox = db.createObjectStore("outbox", { keyPath: "seq", autoIncrement: true });
        outbox.createIndex("scan_id", "scan_id", { unique: true });
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
  return dbPromise;
}

export function idb(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export async function tx(storeName, mode, fn) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    const t = db.transaction(storeName, mode);
    let result;
    Promise.resolve(fn(t.objectStore(storeName))).then((r) => (result = r), reject);
    t.oncomplete = () => resolve(result);
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error ?? new Error("IndexedDB transaction aborted"));
  });
}

export async function loadDevice() {
  return (await tx("config", "readonly", (s) => idb(s.get("device")))) ?? null;
}

export async function saveDevice(device) {
  await tx("config", "readwrite", (s) => idb(s.put(device, "device")));
  return device;
}

// Language, direction and venue: IndexedDB rather than localStorage, which the browser writes to disk lazily
// (a phone switched off soon after a change would forget it).
export async function loadPrefs() {
  return (await tx("config", "readonly", (s) => idb(s.get("prefs")))) ?? {};
}

export async function savePrefs(prefs) {
  await tx("config", "readwrite", (s) => idb(s.put(prefs, "prefs")));
}

// -- encodings -------------------------------------------------------------------------------------------
export function b64url(bytes) {
  let bin = "";
  for (const b of new Uint8Array(bytes)) bin += String.fromCharCode(b);
  return btoa(bin).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

export function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function sha256Hex(bytes) {
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

// -- the device contract ---------------------------------------------------------------------------------
// b"VNQR-DEVICE-REQ-V1\x00" + b"\n".join([METHOD, PATH, device_id, timestamp, nonce, sha256(body).hexdigest()])
export async function signedMessage(method, pathQs, deviceId, timestamp, nonce, body) {
  const parts = [method, pathQs, deviceId, timestamp, nonce, await sha256Hex(body)];
  for (const p of parts) {
    if (!/^[\x20-\x7e]*$/.test(p)) throw new Error("every signed part must be printable ASCII: " + JSON.stringify(p));
  }
  return encoder.encode(DEVICE_DOMAIN + parts.join("\n"));
}

export function newNonce() {
  return b64url(crypto.getRandomValues(new Uint8Array(18))); // 24 characters, 144 random bits
}

export async function signRequest(device, method, pathQs, body, now = Date.now(), nonce = newNonce()) {
  const timestamp = String(Math.floor(now / 1000));
  const message = await signedMessage(method.toUpperCase(), pathQs, device.device_id, timestamp, nonce, body);
  const signature = await crypto.subtle.sign({ name: "Ed25519" }, device.privateKey, message);
  return {
    "X-Device-Id": device.device_id,
    "X-Timestamp": timestamp,
    "X-Nonce": nonce,
    "X-Signature": b64url(signature),
  };
}

// -- enrolment (engine/devices/enrollment.py + engine/web/enroll.py) --------------------------------------------------------------------
// The same normalisation as normalize_code(): prefix, spaces and dashes dropped, any case, O/I/L read as 0/1.
export function normalizeCode(text) {
  let raw = String(text ?? "").trim();
  if (raw.toUpperCase().startsWith(ENROL_QR_PREFIX)) raw = raw.slice(ENROL_QR_PREFIX.length);
  const code = raw.replace(/[\s-]+/g, "").toUpperCase().replaceAll("O", "0").replaceAll("I", "1").replaceAll("L", "1");
  if (code.length !== CODE_CHARS || [...code].some((c) => !CODE_ALPHABET.includes(c))) return null;
  return code;
}

export function isEnrolmentText(text) {
  return String(text).toUpperCase().startsWith(ENROL_QR_PREFIX);
}

// A retry of the same code reuses the same key pair, so an answer lost on the way back can be asked for again.
let pending = null;

export async function enrol(apiBase, codeText) {
  const code = normalizeCode(codeText);
  if (code === null) {
    throw new EnrolError(`an enrolment code has ${CODE_CHARS} characters of ${CODE_ALPHABET}`, 400);
  }
  if (!pending || pending.code !== code) {
    const keys = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
    pending = { code, keys };
  }
  const { keys } = pending;
  const publicKey = b64url(await crypto.subtle.exportKey("raw", keys.publicKey));
  const proof = b64url(
    await crypto.subtle.sign({ name: "Ed25519" }, keys.privateKey, encoder.encode(PROOF_DOMAIN + code + "\n" + publicKey)),
  );
  const res = await fetch(new URL("v1/enroll", apiBase), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ code, public_key: publicKey, proof }),
    cache: "no-store",
  });
  const answer = await res.json().catch(() => ({ message: `engine answered ${res.status}` }));
  if (!res.ok) throw new EnrolError(answer.message || `engine answered ${res.status}`, res.status);
  pending = null;
  const device = {
    device_id: answer.device_id,
    venues: answer.venues,
    venue: answer.venues[0],
    label: answer.label,
    publicKey,
    privateKey: keys.privateKey, // a CryptoKey: IndexedDB stores it as such, still non-extractable
    enrolled_at: Date.now(),
    revoked: false,
  };
  return saveDevice(device);
}

export class EnrolError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}
