// The exam page of the browser tests (tests/web_client.rs drives it through
// tests/browser/webclient.mjs): it uses the hallrelay web client package as an exam platform's
// page would, saving the candidate's answer every `every` ms, and registers a service worker
// (sw.js) so that it still loads when its own origin is gone.
//
// Everything comes from the query string: cloud, exam, candidate, token, relays (JSON list of
// {name, urls}), privacy, failover / probe / timeout (ms, the client's timings), every (ms
// between saves), db (IndexedDB name), size (bytes of filler per save), autosave=0 to save only
// when asked. Each save's outcome and every client event are reported to the driver through
// window.hallReport (a Playwright binding) and shown on the page.
import { Autosaver } from "./dist/index.js";

const q = new URLSearchParams(location.search);
const load = crypto.getRandomValues(new Uint32Array(1))[0].toString(16).padStart(8, "0");
const candidate = q.get("candidate") ?? "";
const exam = q.get("exam") ?? "";
const num = (name, fallback) => (q.has(name) ? Number(q.get(name)) : fallback);

function report(message) {
  const line = { candidate, load, at: Date.now(), ...message };
  if (typeof window.hallReport === "function") {
    window.hallReport(line).catch(() => undefined);
  } else {
    console.log("report", JSON.stringify(line));
  }
}

const where = document.getElementById("where");
function show(text, attributes = {}) {
  where.textContent = text;
  for (const name of ["data-kind", "data-landed"]) where.removeAttribute(name);
  for (const [name, value] of Object.entries(attributes)) where.setAttribute(name, value);
}
document.getElementById("exam").textContent = exam;
document.getElementById("candidate").textContent = candidate;
document.getElementById("load").textContent = load;
document.getElementById("served").textContent = navigator.serviceWorker?.controller
  ? "the service worker"
  : "the network";

const state = {
  state: "starting",
  load,
  error: null,
  saves: 0,
  controlled: Boolean(navigator.serviceWorker?.controller),
};
window.exam = state;

// The service worker: registered on every load (a no-op once installed), so that a reload with
// the origin gone is served from its cache.
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.addEventListener("controllerchange", () => {
    state.controlled = true;
    report({ type: "sw", state: "controlling" });
  });
  navigator.serviceWorker.register("sw.js").catch((e) => {
    // With the origin gone the script cannot be re-fetched: the installed worker stays.
    report({ type: "sw", state: "register-failed", error: String(e) });
  });
}

const filler = "x".repeat(Math.max(0, num("size", 200)));
let n = 0;

async function saveOnce(saver, options) {
  n += 1;
  const payload = `${candidate} load ${load} save ${n} ${new Date().toISOString()} ${filler}`;
  const started = performance.now();
  try {
    const result = await saver.save(payload, options);
    state.saves += 1;
    document.getElementById("count").textContent = String(state.saves);
    report({
      type: "save",
      n,
      payload,
      seq: result.seq,
      landed: result.landed,
      box: result.box ?? null,
      url: result.url ?? null,
      receipt: typeof result.receipt === "string" && result.receipt.length > 0,
      final: Boolean(options?.final),
      ms: Math.round(performance.now() - started),
    });
    return result;
  } catch (e) {
    report({ type: "save-error", n, payload, error: `${e?.name}: ${e?.message}` });
    throw e;
  }
}

try {
  const relays = q.has("relays") ? JSON.parse(q.get("relays")) : [];
  const saver = await Autosaver.open({
    cloud: q.get("cloud") ?? "",
    exam,
    candidate,
    token: q.get("token") ?? "",
    relays,
    privacy: q.get("privacy") ?? "encrypt",
    failoverAfterMs: num("failover", 1500),
    probeEveryMs: num("probe", 1000),
    requestTimeoutMs: num("timeout", 3000),
    database: q.get("db") ?? `exam-${exam}-${candidate}`,
    onEvent: (event) => {
      report({ type: "event", event });
      show(event.message, { "data-kind": event.kind, ...(event.landed ? { "data-landed": event.landed } : {}) });
    },
  });
  state.saver = saver;
  state.stop = () => clearInterval(state.timer);
  state.save = (text, final) => saveOnce(saver, { final: Boolean(final) }).then((r) => ({ ...r }));
  state.flush = () => saver.flush();
  state.pending = () => saver.pending();
  saver.start().catch((e) => report({ type: "start-error", error: `${e?.name}: ${e?.message}` }));
  const every = num("every", 1000);
  if (q.get("autosave") !== "0") {
    state.timer = setInterval(() => saveOnce(saver).catch(() => undefined), every);
  }
  state.state = "ready";
  report({ type: "ready", persisted: saver.persisted ?? null });
} catch (e) {
  state.state = "failed";
  state.error = `${e?.name}: ${e?.message}`;
  show(`The exam client did not start: ${state.error}`);
  report({ type: "failed", error: state.error });
}
