// The service worker: keeps the scanner usable with the engine out of reach. Every file the page needs is
// cached at install, and served from the cache first; the engine stamps this file with a hash of all of them
// (engine/web/scanner.py), so any change to the page makes the browser install a new worker, which replaces the
// cache. API calls (/v1/...) are never touched: scans are queued by the page itself (outbox.js), in IndexedDB.

const VERSION = "__ASSETS_VERSION__";
const CACHE = "vnqr-scanner-" + VERSION;
const SCOPE_PATH = new URL("./", self.location).pathname;
const ASSETS = [
  "./",
  "app.js",
  "camera.js",
  "device.js",
  "i18n.js",
  "outbox.js",
  "scanner.css",
  "manifest.webmanifest",
  "icon.svg",
  "icon-192.png",
  "icon-512.png",
  "vendor/zxing-wasm/dist/es/reader/index.js",
  "vendor/zxing-wasm/dist/es/share.js",
  "vendor/zxing-wasm/dist/reader/zxing_reader.wasm",
];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(ASSETS.map((a) => new Request(a, { cache: "reload" }))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith("vnqr-scanner-") && k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || !url.pathname.startsWith(SCOPE_PATH)) return; // the API: network only
  event.respondWith(
    caches.open(CACHE).then(async (cache) => {
      const hit = await cache.match(request, { ignoreSearch: true });
      if (hit) return hit;
      const response = await fetch(request);
      if (response.ok && response.type === "basic") cache.put(request, response.clone());
      return response;
    }),
  );
});
