// The exam page's service worker: it keeps the page, its script and the client package in a
// cache, so that the exam page still loads (a reload, a crashed tab) when its own origin is
// gone with the hall's uplink. Network first, the cache when the origin does not answer. Only
// same-origin GETs are handled: the client's requests to the cloud and the hall relay go
// straight to the network, untouched.
const CACHE = "exam-page-v1";

self.addEventListener("install", (event) => {
  event.waitUntil(
    (async () => {
      // The origin lists what the page needs (the page, its script, the package's modules).
      const listed = await fetch("precache.json", { cache: "no-store" });
      const files = await listed.json();
      const cache = await caches.open(CACHE);
      await cache.addAll(files);
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  event.respondWith(
    (async () => {
      const cache = await caches.open(CACHE);
      try {
        const answer = await fetch(request);
        if (answer.ok) {
          const key = new URL(url.pathname, url.origin).href;
          await cache.put(key, answer.clone());
        }
        return answer;
      } catch (offline) {
        const kept = await cache.match(request, { ignoreSearch: true });
        if (kept) return kept;
        throw offline;
      }
    })(),
  );
});
