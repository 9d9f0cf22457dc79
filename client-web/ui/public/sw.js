// Tsunagu's service worker: keeps the app shell (index.html, the hashed
// scripts, styles and the wasm engine) so that the page opens without a
// network and the timelines stored on this device stay readable offline.
// It never touches the API (/v1/...): no personal data is cached here, and
// everything a person reads offline comes from the engine's IndexedDB.
const CACHE = "tsunagu-shell-v1";

// On install: the page and the scripts and styles it names. The wasm file
// (loaded by the script) is cached the first time it is fetched.
self.addEventListener("install", (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      const page = await fetch("/", { cache: "no-store" });
      if (page.ok) {
        const html = await page.clone().text();
        await cache.put("/", page);
        const assets = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((m) => m[1]);
        await cache.addAll(assets);
      }
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (url.pathname.startsWith("/v1/") || url.pathname === "/healthz" || url.pathname === "/readyz" || url.pathname === "/metrics") return;

  if (request.mode === "navigate") {
    // The page: the network first (a new release shows at once), the cached
    // shell when offline.
    event.respondWith(
      fetch(request)
        .then((response) => {
          if (response.ok) {
            const copy = response.clone();
            caches.open(CACHE).then((c) => c.put("/", copy));
          }
          return response;
        })
        .catch(() => caches.match("/").then((r) => r ?? Response.error())),
    );
    return;
  }
  if (url.pathname.startsWith("/assets/")) {
    // Content-hashed files never change: the cache first.
    event.respondWith(
      caches.match(request).then(
        (cached) =>
          cached ??
          fetch(request).then((response) => {
            if (response.ok) {
              const copy = response.clone();
              caches.open(CACHE).then((c) => c.put(request, copy));
            }
            return response;
          }),
      ),
    );
  }
});
