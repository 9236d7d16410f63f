#!/usr/bin/env node
// Reference scanner client for the vnqr-engine device API (docs/device-api.md), in a second language.
//
// It exists to prove the contract outside Python: it uses nothing but Node's built-in `crypto` (Ed25519,
// SHA-256) and `fetch`, reads the key file the engine's `device-register` writes, and signs exactly the
// message the document specifies. tests/test_device_contract.py runs it against a real engine and checks it
// reproduces the document's worked example byte for byte. No npm packages; Node 18 or later (global fetch,
// Ed25519 in crypto, base64url), tested with Node 20.
//
//   node scanner.mjs pubkey --key venue-0042.key
//   node scanner.mjs sign   --key K --device-id D --body-file F [--method POST] [--path /v1/scans]
//                           [--timestamp SECONDS] [--nonce N]
//   node scanner.mjs post   --url http://127.0.0.1:8080 --key K --scans scans.json [--device-id D]
//                           [--timestamp SECONDS] [--nonce N]
//
// `scans.json` is a JSON array of items; `scan_id` (a new UUID), `direction` ("in") and `scanned_at` (now, in
// epoch ms) are filled in when absent, `qr` and `venue_id` are required. `post` prints one JSON line:
// {"status", "retry_after", "body"} and exits 0 whenever the engine answered (whatever the status), 1 when it
// could not be reached, 2 on bad input. Statuses (docs/device-api.md section 6): 401 is also the answer for a
// device the engine does not know, word for word the one a wrong signature gets; 403 only for a revoked device
// (after its valid signature); 429 is a budget of this device's own (requests, scans, cold verifies, replay
// quota, queue share, quarantine) and 503 the engine's: both carry Retry-After.

import { createHash, createPrivateKey, createPublicKey, randomBytes, randomUUID, sign } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { argv, exit, stdout, stderr } from "node:process";

const DOMAIN = Buffer.from("VNQR-DEVICE-REQ-V1\u0000", "ascii");
const DEVICE_ID_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
const NONCE_RE = /^[A-Za-z0-9_-]{16,64}$/;
const TIMESTAMP_RE = /^[0-9]{1,12}$/;
// PKCS#8 DER header of an Ed25519 private key (RFC 8410); the 32-byte seed follows it.
const PKCS8_ED25519_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

class UsageError extends Error {}

function parseArgs(args) {
  const [command, ...rest] = args;
  const options = {};
  for (let i = 0; i < rest.length; i += 2) {
    const flag = rest[i];
    if (!flag.startsWith("--") || i + 1 >= rest.length) throw new UsageError(`expected --flag value, got ${flag}`);
    options[flag.slice(2)] = rest[i + 1];
  }
  return { command, options };
}

function required(options, name) {
  if (options[name] === undefined) throw new UsageError(`--${name} is required`);
  return options[name];
}

/** The key file: JSON {"owner", "seed": standard base64 with padding of the 32-byte Ed25519 seed}, mode 0600. */
export function readKeyFile(path) {
  const mode = statSync(path).mode;
  if (mode & 0o077) {
    throw new UsageError(`key file ${path} is accessible by group/others (mode ${(mode & 0o777).toString(8)}); chmod 600`);
  }
  const doc = JSON.parse(readFileSync(path, "utf8"));
  if (typeof doc.seed !== "string" || !/^[A-Za-z0-9+/]{43}=$/.test(doc.seed)) {
    throw new UsageError(`key file ${path}: "seed" must be 32 bytes in standard padded base64`);
  }
  const seed = Buffer.from(doc.seed, "base64");
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: "der", type: "pkcs8" });
  return { owner: String(doc.owner), privateKey };
}

/** The device's public key as the operator registers it: base64url without padding, 43 characters. */
export function publicKeyText(privateKey) {
  return createPublicKey(privateKey).export({ format: "jwk" }).x;
}

/** The exact bytes signed: DOMAIN + METHOD \n PATH \n device id \n timestamp \n nonce \n hex SHA-256(body). */
export function signedMessage(method, path, deviceId, timestamp, nonce, body) {
  const digest = createHash("sha256").update(body).digest("hex");
  const text = [method, path, deviceId, timestamp, nonce, digest].join("\n");
  if (!/^[\x00-\x7f]*$/.test(text)) throw new UsageError("method, path and headers must be ASCII (percent-encode the path)");
  return Buffer.concat([DOMAIN, Buffer.from(text, "ascii")]);
}

/** The four authentication headers for one request. */
export function signRequest(privateKey, deviceId, method, path, body, { timestamp, nonce } = {}) {
  const ts = timestamp ?? String(Math.floor(Date.now() / 1000));
  // 18 random bytes: 24 base64url characters, as the Python client makes them
  const n = nonce ?? randomBytes(18).toString("base64url");
  if (!DEVICE_ID_RE.test(deviceId)) throw new UsageError("device id must be 1..64 characters of A-Z a-z 0-9 _ . : -");
  if (!TIMESTAMP_RE.test(ts)) throw new UsageError("timestamp must be Unix seconds: 1..12 decimal digits");
  if (!NONCE_RE.test(n)) throw new UsageError("nonce must be 16..64 characters of A-Z a-z 0-9 _ -");
  const message = signedMessage(method.toUpperCase(), path, deviceId, ts, n, body);
  // Node's base64url has no padding and leaves the 4 unused low bits of the last character zero: canonical.
  const signature = sign(null, message, privateKey).toString("base64url");
  return { "X-Device-Id": deviceId, "X-Timestamp": ts, "X-Nonce": n, "X-Signature": signature };
}

function scanItems(path) {
  const items = JSON.parse(readFileSync(path, "utf8"));
  if (!Array.isArray(items) || items.length === 0) throw new UsageError(`${path} must hold a non-empty JSON array of scans`);
  return items.map((item, i) => {
    if (typeof item.qr !== "string" || typeof item.venue_id !== "string") {
      throw new UsageError(`scan #${i} needs "qr" and "venue_id" strings`);
    }
    return {
      scan_id: item.scan_id ?? randomUUID(),
      qr: item.qr,
      venue_id: item.venue_id,
      direction: item.direction ?? "in",
      scanned_at: item.scanned_at ?? Date.now(),
    };
  });
}

async function post(options) {
  const { owner, privateKey } = readKeyFile(required(options, "key"));
  const deviceId = options["device-id"] ?? owner;
  const path = "/v1/scans";
  // The signature covers these exact bytes; they are sent as they are (no re-serialisation afterwards).
  const body = Buffer.from(JSON.stringify({ device_id: deviceId, scans: scanItems(required(options, "scans")) }), "utf8");
  const headers = signRequest(privateKey, deviceId, "POST", path, body, options);
  const base = required(options, "url").replace(/\/+$/, "");
  let response;
  try {
    response = await fetch(base + path, { method: "POST", headers: { ...headers, "Content-Type": "application/json" }, body });
  } catch (error) {
    stderr.write(`error: no answer from ${base}: ${error.cause?.message ?? error.message}\n`);
    return 1;
  }
  const text = await response.text();
  let answer;
  try {
    answer = JSON.parse(text);
  } catch {
    answer = text;
  }
  const retryAfter = response.headers.get("retry-after");
  stdout.write(JSON.stringify({ status: response.status, retry_after: retryAfter, body: answer }) + "\n");
  return 0;
}

async function main() {
  const { command, options } = parseArgs(argv.slice(2));
  if (command === "pubkey") {
    stdout.write(publicKeyText(readKeyFile(required(options, "key")).privateKey) + "\n");
    return 0;
  }
  if (command === "sign") {
    const { owner, privateKey } = readKeyFile(required(options, "key"));
    const body = readFileSync(required(options, "body-file"));
    const headers = signRequest(privateKey, options["device-id"] ?? owner, options.method ?? "POST", options.path ?? "/v1/scans", body, options);
    stdout.write(JSON.stringify(headers) + "\n");
    return 0;
  }
  if (command === "post") return post(options);
  throw new UsageError(`unknown command ${JSON.stringify(command)}: use pubkey, sign or post`);
}

main().then(
  (code) => exit(code),
  (error) => {
    stderr.write(`error: ${error.message}\n`);
    exit(error instanceof UsageError || error instanceof SyntaxError || error.code === "ENOENT" ? 2 : 1);
  },
);
