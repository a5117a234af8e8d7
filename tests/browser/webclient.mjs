// The browser half of tests/web_client.rs: owns Debian's headless Chromium (through
// playwright-core) and the exam page's origin, a small HTTP server on 127.0.0.1 that serves
// tests/browser/exam-page/ and the built package (clients/web/dist/ under /dist/). The Rust
// test owns the cloud and the boxes and sends one JSON command a line on stdin; each gets one
// JSON answer line on stdout: {"id", "ok": true, ...} or {"id", "ok": false, "error"}. Logs go
// to stderr.
//
// Input from the environment:
//   WEBCLIENT_ORIGIN_PORT  the page's origin port (the boxes' cors_origins name it)
//   WEBCLIENT_TRUST        pins the exam browser trusts (sha256//BASE64, comma-separated): its
//                          configuration, as SEB's embedded certificates or MDM would give it
//   WEBCLIENT_PUBLIC       ip:port list marked public (the origin, the cloud)
//   WEBCLIENT_LOCAL        ip:port list marked local (the hall network: the boxes)
//   WEBCLIENT_DIST         the package's dist/ folder;  WEBCLIENT_PAGE  the exam page's folder
//   WEBCLIENT_PROFILES     where browser profiles live (one folder per profile name)
//   WEBCLIENT_ARTIFACTS    folder for screenshots and the browser's console log
//   CHROMIUM               the browser binary (default /usr/bin/chromium)
//
// Commands: origin {up}; launch {profile, lna: "granted"|"denied"}; open {query}; reload;
// reports {since, net_since} (what the pages reported, and the page's network log, from those
// indexes on); eval {expr}; sw (waits until the service worker controls the page); kill
// (SIGKILL to the browser process, found in the profile's SingletonLock); close;
// screenshot {name}; quit.
import { chromium } from "playwright-core";
import http from "node:http";
import { createInterface } from "node:readline";
import { appendFileSync, existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, statSync } from "node:fs";
import { extname, join, normalize, sep } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const originPort = Number(env("WEBCLIENT_ORIGIN_PORT"));
const origin = `http://127.0.0.1:${originPort}`;
const trust = env("WEBCLIENT_TRUST").split(",").map((p) => p.replace(/^sha256\/\//, ""));
const list = (name) => (process.env[name] || "").split(",").filter(Boolean);
const overrides = [
  ...list("WEBCLIENT_PUBLIC").map((a) => `${a}=public`),
  ...list("WEBCLIENT_LOCAL").map((a) => `${a}=local`),
];
const dist = env("WEBCLIENT_DIST");
const pageDir = env("WEBCLIENT_PAGE");
const profiles = env("WEBCLIENT_PROFILES");
const artifacts = env("WEBCLIENT_ARTIFACTS");
const consoleLog = join(artifacts, "webclient-console.log");
const started = Date.now();
const log = (...what) => console.error(`[driver +${((Date.now() - started) / 1000).toFixed(1)}s]`, ...what);

// ---- the exam page's origin --------------------------------------------------------------
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".json": "application/json", ".map": "application/json" };
let server = null;
let served = 0;

/** Every file the page needs, for the service worker's install step. */
function precacheList() {
  const files = ["/", "/index.html"];
  for (const name of readdirSync(pageDir)) if (name !== "sw.js") files.push(`/${name}`);
  const walk = (dir, prefix) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path, `${prefix}${name}/`);
      else if (name.endsWith(".js")) files.push(`${prefix}${name}`);
    }
  };
  walk(dist, "/dist/");
  return [...new Set(files)];
}

function fileFor(pathname) {
  const [root, rest] = pathname.startsWith("/dist/") ? [dist, pathname.slice(6)] : [pageDir, pathname.slice(1)];
  const path = normalize(join(root, rest || "index.html"));
  if (!path.startsWith(normalize(root + sep)) && path !== normalize(root)) return null;
  return existsSync(path) && statSync(path).isFile() ? path : null;
}

function startOrigin() {
  return new Promise((resolve, reject) => {
    server = http.createServer((req, res) => {
      served += 1;
      const { pathname } = new URL(req.url, origin);
      const headers = { "cache-control": "no-cache" };
      if (pathname === "/precache.json") {
        res.writeHead(200, { ...headers, "content-type": TYPES[".json"] });
        res.end(JSON.stringify(precacheList()));
        return;
      }
      const path = fileFor(pathname);
      if (!path) {
        res.writeHead(404, { ...headers, "content-type": "text/plain" });
        res.end("not found");
        return;
      }
      res.writeHead(200, { ...headers, "content-type": TYPES[extname(path)] || "application/octet-stream" });
      res.end(readFileSync(path));
    });
    server.once("error", reject);
    server.listen(originPort, "127.0.0.1", () => resolve());
  });
}

async function stopOrigin() {
  if (!server) return;
  const s = server;
  server = null;
  await new Promise((resolve) => {
    s.close(() => resolve());
    s.closeAllConnections();
  });
}

// ---- the browser -------------------------------------------------------------------------
let context = null;
let page = null;
let pid = null;
let profileDir = null;
const reports = [];
const network = [];

function browserArgs() {
  return [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    // The exam browser's configuration trusts the hall box (and the cloud of this test) by
    // key, as SEB's embedded certificates or an MDM-installed certificate would; nothing else.
    `--ignore-certificate-errors-spki-list=${trust.join(",")}`,
    // The page's origin and the cloud are on the internet; the boxes on the hall network: so
    // Local Network Access applies to the boxes as in a real exam.
    `--ip-address-space-overrides=${overrides.join(",")}`,
  ];
}

/** The browser process's pid: Chromium names it in the profile's SingletonLock (host-pid). */
function browserPid(dir) {
  const target = readlinkSync(join(dir, "SingletonLock"));
  const n = Number(target.slice(target.lastIndexOf("-") + 1));
  if (!Number.isInteger(n) || n <= 0) throw new Error(`no pid in SingletonLock -> ${target}`);
  return n;
}

function alive(n) {
  try {
    const stat = readFileSync(`/proc/${n}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** Processes whose command line names the profile folder (the browser's helpers included). */
function processesOf(dir) {
  const found = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const cmdline = readFileSync(`/proc/${name}/cmdline`, "utf8");
      if (cmdline.includes(dir) && alive(Number(name))) found.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

async function launch({ profile, lna }) {
  if (context) throw new Error("a browser is already running");
  profileDir = join(profiles, profile);
  mkdirSync(profileDir, { recursive: true });
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1000, height: 700 },
    args: browserArgs(),
  });
  context.on("close", () => log("the browser context closed"));
  await context.exposeBinding("hallReport", (_source, message) => {
    reports.push({ t: Date.now(), ...message });
  });
  if (lna === "granted") {
    // What a managed exam browser has from LocalNetworkAccessAllowedForUrls: the exam's origin
    // may reach the hall network with no prompt. Per launch, through CDP
    // Browser.grantPermissions (local-network-access and its successors local-network and
    // loopback-network), not a machine-wide policy file.
    await context.grantPermissions(["local-network-access"], { origin });
  } else if (lna === "denied") {
    // The candidate (or a policy) refused it: no prompt, every hall-network request fails.
    const cdp = await context.newCDPSession(context.pages()[0] || (await context.newPage()));
    let set = 0;
    for (const name of ["local-network-access", "local-network", "loopback-network"]) {
      try {
        await cdp.send("Browser.setPermission", { permission: { name }, setting: "denied", origin });
        set += 1;
      } catch (e) {
        log(`Browser.setPermission ${name}: ${e.message}`);
      }
    }
    if (set === 0) throw new Error("the browser refuses every way to deny Local Network Access");
  } else {
    throw new Error(`lna must be granted or denied, not ${lna}`);
  }
  pid = browserPid(profileDir);
  page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => appendFileSync(consoleLog, `${new Date().toISOString()} ${profile} ${m.type()}: ${m.text()}\n`));
  page.on("pageerror", (e) => appendFileSync(consoleLog, `${new Date().toISOString()} ${profile} pageerror: ${e}\n`));
  page.on("requestfailed", (r) => network.push({ t: Date.now(), url: r.url(), method: r.method(), failure: r.failure()?.errorText ?? "" }));
  page.on("requestfinished", (r) => network.push({ t: Date.now(), url: r.url(), method: r.method(), failure: null }));
  log(`launched Chromium pid ${pid} (profile ${profile}, Local Network Access ${lna})`);
  return { pid, profile: profileDir };
}

async function waitReady() {
  await page.waitForFunction(() => window.exam && window.exam.state !== "starting", null, { timeout: 20_000 });
  const state = await page.evaluate(() => ({ state: window.exam.state, error: window.exam.error, load: window.exam.load, controlled: window.exam.controlled }));
  if (state.state !== "ready") throw new Error(`the exam page did not start: ${state.error}`);
  const permissions = await page.evaluate(async () => {
    const out = {};
    for (const name of ["local-network-access", "local-network", "loopback-network"]) {
      try {
        out[name] = (await navigator.permissions.query({ name })).state;
      } catch (e) {
        out[name] = `unknown (${e.message})`;
      }
    }
    return out;
  });
  return { ...state, permissions };
}

const commands = {
  async origin({ up }) {
    if (up) {
      if (!server) await startOrigin();
    } else {
      await stopOrigin();
    }
    return { up: Boolean(server), served };
  },
  launch,
  async open({ query }) {
    await page.goto(`${origin}/?${query}`);
    return waitReady();
  },
  async reload() {
    await page.reload();
    return waitReady();
  },
  async reports({ since, net_since }) {
    return { reports: reports.slice(since || 0), network: network.slice(net_since || 0) };
  },
  async eval({ expr }) {
    return { value: await page.evaluate(expr) };
  },
  async sw() {
    await page.waitForFunction(() => navigator.serviceWorker && navigator.serviceWorker.controller !== null, null, { timeout: 20_000 });
    const cached = await page.evaluate(async () => (await (await caches.open("exam-page-v1")).keys()).map((r) => new URL(r.url).pathname));
    return { cached };
  },
  async kill() {
    if (!context) throw new Error("no browser runs");
    const victim = pid;
    const dir = profileDir;
    const closed = new Promise((resolve) => context.once("close", resolve));
    process.kill(victim, "SIGKILL");
    const deadline = Date.now() + 10_000;
    while (alive(victim) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    if (alive(victim)) throw new Error(`Chromium (pid ${victim}) survived SIGKILL`);
    await Promise.race([closed, new Promise((r) => setTimeout(r, 5_000))]);
    // Its helpers (renderer, GPU, utility) follow their browser out.
    let left = processesOf(dir);
    while (left.length > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      left = processesOf(dir);
    }
    context = null;
    page = null;
    pid = null;
    log(`killed Chromium pid ${victim} with SIGKILL; helpers left: ${left.length}`);
    return { killed: victim, helpers_left: left.length };
  },
  async close() {
    if (context) await context.close();
    context = null;
    page = null;
    pid = null;
    return {};
  },
  async screenshot({ name }) {
    const path = join(artifacts, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    return { path };
  },
  async quit() {
    return {};
  },
};

mkdirSync(artifacts, { recursive: true });
mkdirSync(profiles, { recursive: true });
await startOrigin();
log(`origin ${origin}; trust ${trust.length} keys; address spaces ${overrides.join(",")}`);
process.stdout.write(`${JSON.stringify({ id: 0, ok: true, origin })}\n`);

const lines = createInterface({ input: process.stdin });
let queue = Promise.resolve();
let quitting = false;
lines.on("line", (line) => {
  queue = queue.then(async () => {
    let id = null;
    try {
      const command = JSON.parse(line);
      id = command.id;
      const run = commands[command.cmd];
      if (!run) throw new Error(`unknown command ${command.cmd}`);
      const answer = await run(command);
      process.stdout.write(`${JSON.stringify({ id, ok: true, ...answer })}\n`);
      if (command.cmd === "quit") quitting = true;
    } catch (e) {
      process.stdout.write(`${JSON.stringify({ id, ok: false, error: String(e?.stack || e) })}\n`);
    }
  });
});
lines.on("close", () => {
  queue.then(async () => {
    if (!quitting) log("stdin closed: stopping");
    if (context) await context.close().catch(() => undefined);
    await stopOrigin();
    process.exit(0);
  });
});
