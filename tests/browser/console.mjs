// Drives Debian's headless Chromium (through playwright-core) against a real box's console.
// Run by tests/console.rs, which starts the box (and the reference cloud) and makes the real
// saves; this only looks at what the page shows. Three modes (HALLRELAY_MODE):
//   signin (default)  sign in, check the rows (and whose answers are encrypted), wait for the
//                     silent alert, use the keyboard, sign out
//   states            each row state the test produced, through the filter, one screenshot
//                     each (console-<name>.png), and page checks (banners, tiles)
//   hall              a full hall: time from load to rendered rows, attention first, filter
//                     and search, a phone without sideways scrolling (console-500*.png)
// Input from the environment:
//   HALLRELAY_URL          https://127.0.0.1:PORT
//   HALLRELAY_PIN          sha256//BASE64 (Chromium trusts exactly this key, nothing else)
//   HALLRELAY_ADMIN_TOKEN  an admin token;  HALLRELAY_CANDIDATE_TOKEN  a candidate token
//   HALLRELAY_EXPECT       JSON; signin: {rows: {candidate: {seq, final, answers}},
//                          encryption_alert, silent: candidate, wait_secs}; states and hall:
//                          see runStates and runHall below
//   HALLRELAY_SCREENSHOTS  folder for console.png (desktop) and console-phone.png
//   CHROMIUM               the browser binary (default /usr/bin/chromium)
// Prints one line per step; exits 1 with the reason at the first failure.
import { chromium } from "playwright-core";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const url = env("HALLRELAY_URL");
const pin = env("HALLRELAY_PIN");
const admin = env("HALLRELAY_ADMIN_TOKEN");
const mode = process.env.HALLRELAY_MODE || "signin";
const expect = JSON.parse(env("HALLRELAY_EXPECT"));
const shots = env("HALLRELAY_SCREENSHOTS");
const spki = pin.replace(/^sha256\/\//, "");

const step = (what) => console.log(`step: ${what}`);
function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`  ok: ${what}`);
}

const profile = mkdtempSync(join(tmpdir(), "hallrelay-chromium-"));
let browser;
try {
  // A fresh profile each run (playwright passes it as --user-data-dir).
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // Trust the box's self-signed certificate by its key's pin only.
      `--ignore-certificate-errors-spki-list=${spki}`,
    ],
  });
  const context = browser;
  const page = context.pages()[0] || await context.newPage();
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  if (mode === "states") await runStates(page);
  else if (mode === "hall") await runHall(page);
  else await runSignIn(page, browser);

  // Answers the test expects the box to give (401 before sign-in; others by expect's
  // allow_statuses) show up as failed loads; anything else is a script error.
  const allowed = new Set([401, 403, ...(expect.allow_statuses || [])]);
  check(consoleErrors.every((e) => {
    const m = /status of (\d{3})/.exec(e);
    return m && allowed.has(Number(m[1]));
  }), `no script errors (${JSON.stringify(consoleErrors)})`);
  console.log(`console: all checks passed (${mode})`);
} catch (e) {
  console.log(`console: FAILED: ${e.message}`);
  process.exitCode = 1;
} finally {
  if (browser) await browser.close();
  rmSync(profile, { recursive: true, force: true });
}

// The existing walk through the console: sign-in, rows, silent alert, keyboard, sign-out.
async function runSignIn(page, context) {
  step("open the console: it asks for a token");
  const first = await page.goto(`${url}/`);
  check(first.status() === 200, "GET / answers 200");
  const csp = first.headers()["content-security-policy"] || "";
  check(csp.includes("script-src 'self'"), "the page carries a strict CSP");
  await page.waitForSelector("#signin:not([hidden])");
  check(await page.isVisible("#token"), "the token field is shown");
  check(await page.evaluate(() => document.activeElement && document.activeElement.id === "token"),
    "the token field has the focus");

  step("a candidate token is refused");
  await page.fill("#token", env("HALLRELAY_CANDIDATE_TOKEN"));
  await page.press("#token", "Enter");
  await page.waitForFunction(() => document.getElementById("signin-error").textContent.length > 0);
  const refusal = await page.textContent("#signin-error");
  check(/admin token/.test(refusal), `the refusal says why: "${refusal}"`);
  check((await context.cookies()).length === 0, "no cookie was set");

  step("sign in with the admin token, by keyboard");
  await page.focus("#token");
  await page.keyboard.type(admin);
  await page.keyboard.press("Enter");
  await page.waitForSelector("#app:not([hidden])");
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "__Host-hallrelay-session");
  check(session !== undefined, "a session cookie is set");
  check(session.httpOnly && session.secure && session.sameSite === "Strict",
    "the cookie is HttpOnly, Secure and SameSite=Strict");
  check(!session.value.includes(admin) && session.value.length === 64, "the cookie is a session id, not the token");
  check(await page.evaluate(() => document.cookie === ""), "scripts cannot read the cookie");

  step("the rows show the saves");
  await page.waitForSelector("#rows-body tr");
  for (const [candidate, want] of Object.entries(expect.rows)) {
    const row = page.locator(`#rows-body tr[data-candidate="${candidate}"]`);
    await row.waitFor();
    const seq = await row.locator('td[data-label="Save no."]').textContent();
    check(seq === String(want.seq), `${candidate}: last save no. ${seq} is ${want.seq}`);
    const final = await row.locator('td[data-label="Final"]').textContent();
    check((final === "submitted") === want.final, `${candidate}: final "${final}"`);
    const answers = await row.locator('td[data-label="Answers"]').textContent();
    check(answers === want.answers, `${candidate}: answers "${answers}" are ${want.answers}`);
  }
  const plainAlert = await page.textContent("#encryption-alert");
  check(plainAlert.startsWith(expect.encryption_alert) && /require_encrypted = true/.test(plainAlert),
    `the alert about plain answers: "${plainAlert}"`);
  const name = await page.textContent("#box-name");
  const shownPin = await page.textContent("#box-pin");
  check(shownPin === pin, `the box's name (${name}) and pin are shown`);
  const banner = await page.textContent("#uplink");
  check(/No cloud is configured/.test(banner), `the uplink banner: "${banner}"`);
  // No cloud, no NTP server, no RTC: the hall clock is unsynced, and the page warns.
  const clockLine = await page.textContent("#clock");
  check(clockLine === "Clock not synchronised.", `the clock line: "${clockLine}"`);
  const clockAlert = await page.textContent("#alerts");
  check(/clock is NOT synchronised.*ntp_servers/.test(clockAlert), `the clock alert: "${clockAlert}"`);
  const summary = await page.textContent("#summary");
  check(/candidates? saving to this box; all saves safe here; .* waiting for the internet\./.test(summary),
    `the summary in plain words: "${summary}"`);
  const disk = await page.textContent("#disk-text");
  check(/% used/.test(disk), `the storage gauge: "${disk}"`);
  const holds = await page.textContent("#holds");
  check(/^Enough for about [0-9.+]+ more hours of 3 candidates/.test(holds), `the readiness line: "${holds}"`);

  step(`the silent alert fires for ${expect.silent} (the page refreshes by itself)`);
  await page.waitForFunction(
    (who) => [...document.querySelectorAll("#alerts .alert")].some((p) => p.textContent.startsWith(`${who} `)),
    expect.silent, { timeout: expect.wait_secs * 1000 });
  const alert = await page.textContent("#alerts");
  check(/has not saved for/.test(alert), `the alert: "${alert}"`);
  const stateWord = (who) => page.locator(`#rows-body tr[data-candidate="${who}"] td[data-label="State"] strong`).textContent();
  const silentRow = await stateWord(expect.silent);
  check(silentRow === "SILENT", `the row of ${expect.silent} says SILENT`);
  const firstRow = await page.getAttribute("#rows-body tr", "data-candidate");
  check(firstRow === expect.silent, `the silent candidate comes first (${firstRow})`);
  for (const other of Object.keys(expect.rows).filter((c) => c !== expect.silent)) {
    const state = await stateWord(other);
    check(state !== "SILENT", `${other} is not silent (${state})`);
  }

  step("screenshots");
  await page.screenshot({ path: join(shots, "console.png"), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `nothing overflows a phone's width (${overflow} px)`);
  await page.screenshot({ path: join(shots, "console-phone.png"), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });

  step("sign out by keyboard");
  await page.focus("#main");
  await page.keyboard.down("Shift");
  let reached = false;
  for (let i = 0; i < 10 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement && document.activeElement.id === "signout");
  }
  await page.keyboard.up("Shift");
  check(reached, "the sign-out button is reachable with the keyboard");
  await page.keyboard.press("Enter");
  await page.waitForSelector("#signin:not([hidden])");
  check((await context.cookies()).every((c) => c.name !== "__Host-hallrelay-session"), "the browser forgot the cookie");
  // Put the old cookie back: the box must have forgotten the session, not only the browser.
  await context.addCookies([{ ...session }]);
  const replayed = await page.evaluate(async () =>
    (await fetch("/console/state", { credentials: "same-origin", cache: "no-store" })).status);
  check(replayed === 401, `the old session id is refused on the box (${replayed})`);
  await context.clearCookies();
  await page.reload();
  await page.waitForSelector("#signin:not([hidden])");
  check(true, "after a reload the console asks for the token again");

}

// Signs in with the admin token through the form and waits for the first rendered state.
async function signIn(page) {
  const first = await page.goto(`${url}/`);
  check(first.status() === 200, "GET / answers 200");
  await page.waitForSelector("#signin:not([hidden])");
  await page.fill("#token", admin);
  await page.press("#token", "Enter");
  await page.waitForSelector("#app:not([hidden])");
  // A reading of the hall, or the box saying it cannot read its storage.
  await page.waitForFunction(() => Number(document.body.dataset.rendered) > 0
    || Number(document.body.dataset.unavailable) > 0);
}

// Waits (the page refreshes by itself) until `sel`'s text matches `re`, or its class list has
// `cls`; fails with what it said instead.
async function waitFor(page, { sel, re, cls }, seconds) {
  const ok = await page.waitForFunction(([sel, re, cls]) => {
    const el = document.querySelector(sel);
    if (!el || el.closest("[hidden]")) return false;
    return (!re || new RegExp(re).test(el.textContent)) && (!cls || el.classList.contains(cls));
  }, [sel, re || null, cls || null], { timeout: seconds * 1000 }).then(() => true, () => false);
  const said = await page.evaluate((sel) => {
    const el = document.querySelector(sel);
    return el ? `${el.closest("[hidden]") ? "(hidden) " : ""}class "${el.className}": ${el.textContent}` : "nothing";
  }, sel);
  check(ok, `${sel}${re ? ` says /${re}/` : ""}${cls ? ` is ${cls}` : ""} (${said.slice(0, 300)})`);
}

// The rows the page shows (not hidden by the filter or the search), in order.
function shownRows(page) {
  return page.evaluate(() => [...document.querySelectorAll("#rows-body tr")]
    .filter((tr) => !tr.hidden)
    .map((tr) => ({ candidate: tr.dataset.candidate, exam: tr.dataset.exam, state: tr.dataset.state,
      attention: Number(tr.dataset.attention) })));
}

// The page from its top (no field focused), at most `height` pixels of it.
async function shoot(page, name, height) {
  const full = await page.evaluate(() => {
    document.activeElement.blur();
    window.scrollTo(0, 0);
    return document.documentElement.scrollHeight;
  });
  const width = page.viewportSize().width;
  await page.screenshot({ path: join(shots, name), fullPage: true,
    clip: { x: 0, y: 0, width, height: Math.min(full, height) } });
}

async function show(page, filter, needle) {
  await page.selectOption("#filter", filter);
  await page.fill("#search", needle || "");
  await page.waitForTimeout(200); // the search waits 120 ms for the typing to pause
}

// HALLRELAY_EXPECT: {wait_secs, pause? (a path: once signed in, write PATH.ready and wait for
//   PATH.go, while the test changes the box), order: [candidate…] (the first rows, most urgent first),
//   checks: [{sel, re?, cls?}] (page-wide, before the shots),
//   states: [{name, candidate?, state?, word?, hint?, checks?}]}: for each, the row of
//   `candidate` comes to say `state` (its word matching `word`, its note `hint`), the filter
//   set to that state shows it and only rows in that state, `checks` hold, and the page is
//   kept as console-<name>.png.
async function runStates(page) {
  const wait = expect.wait_secs || 20;
  step("sign in");
  await signIn(page);
  if (expect.pause) {
    // The test changes the box now (say, breaks its disk) while the page stays open.
    writeFileSync(`${expect.pause}.ready`, "");
    step("wait while the test changes the box");
    for (let i = 0; !existsSync(`${expect.pause}.go`); i++) {
      if (i > 600) throw new Error("the test never said go");
      await page.waitForTimeout(100);
    }
  }
  for (const c of expect.checks || []) await waitFor(page, c, wait);
  for (const s of expect.states) {
    step(`state ${s.name}`);
    await show(page, "all", "");
    if (s.candidate) {
      const row = `#rows-body tr[data-candidate="${s.candidate}"]`;
      await waitFor(page, { sel: `${row} td[data-label="State"]`, re: s.word, cls: `state-${s.state}` }, wait);
      if (s.hint) await waitFor(page, { sel: `${row} .hint`, re: s.hint }, wait);
      await show(page, s.state, "");
      const rows = await shownRows(page);
      check(rows.some((r) => r.candidate === s.candidate) && rows.every((r) => r.state === s.state),
        `the filter "${s.state}" shows ${s.candidate} and only rows in that state (${JSON.stringify(rows)})`);
      await show(page, s.state, s.candidate);
      const found = await shownRows(page);
      check(found.length >= 1 && found.every((r) => r.candidate.includes(s.candidate)),
        `the search finds ${s.candidate} (${found.length} shown)`);
      await page.fill("#search", "");
      await page.waitForTimeout(200);
    }
    for (const c of s.checks || []) await waitFor(page, c, wait);
    await shoot(page, `console-${s.name}.png`, 4000);
  }
  if (expect.spare) await spareLaptop(page, expect.spare);
  if (expect.order) {
    await show(page, "all", "");
    const first = (await shownRows(page)).slice(0, expect.order.length).map((r) => r.candidate);
    check(JSON.stringify(first) === JSON.stringify(expect.order),
      `the most urgent come first: ${JSON.stringify(first)}`);
  }
}

// The "Spare laptop" form, as an invigilator uses it: {exam, candidate, issued (whether this
// box issues tokens: then the token is shown and printed as "spare-token: …" for the test to
// save with; else the page says the box cannot)}.
async function spareLaptop(page, spare) {
  step("spare laptop");
  await show(page, "all", "");
  await page.click("#spare-details summary");
  await page.fill("#spare-exam", spare.exam);
  await page.fill("#spare-candidate", spare.candidate);
  let posted = 0;
  const count = (req) => { if (req.url().endsWith("/console/tokens")) posted++; };
  page.on("request", count);
  await page.click("#spare-form button[type=submit]");
  await page.waitForTimeout(300);
  check(posted === 0 && await page.isHidden("#spare-result"), "no token without the identity check ticked");
  await page.check("#spare-checked");
  await page.click("#spare-form button[type=submit]");
  if (spare.issued) {
    await page.waitForSelector("#spare-result:not([hidden])", { timeout: 10000 });
    const token = await page.textContent("#spare-token");
    check(token.length > 20, "the token is shown");
    check(await page.textContent("#spare-pin") === pin, "with this box's pin");
    check((await page.textContent("#spare-box")).length > 0, "and its name");
    await page.click("#spare-copy-all");
    await waitFor(page, { sel: "#spare-copied", re: "copied|by hand" }, 5);
    console.log(`spare-token: ${token}`);
  } else {
    await waitFor(page, { sel: "#spare-error", re: "cannot issue spare-laptop tokens" }, 10);
  }
  check(posted === 1, `one request (${posted})`);
  page.off("request", count);
  await shoot(page, "console-spare-laptop.png", 4000);
}

// HALLRELAY_EXPECT: {total, order: [candidate…] (the first rows), attention_includes:
//   [candidate…], silent (how many), search: {needle, shown: [candidate…] in order}}.
async function runHall(page) {
  step(`a hall of ${expect.total}: load to rendered rows`);
  const t0 = Date.now();
  await signIn(page);
  await page.waitForFunction((n) => document.querySelectorAll("#rows-body tr").length >= n, expect.total,
    { timeout: 30000 });
  const loaded = Date.now() - t0;
  const renderMs = await page.evaluate(() => document.body.dataset.renderMs);
  console.log(`hall: ${expect.total} rows on screen ${loaded} ms after the page was asked for ` +
    `(sign-in included); one render of the rows takes ${renderMs} ms in the page`);
  const all = await shownRows(page);
  check(all.length === expect.total, `every candidate has a row (${all.length})`);

  step("those who need attention come first");
  const first = all.slice(0, expect.order.length).map((r) => r.candidate);
  check(JSON.stringify(first) === JSON.stringify(expect.order), `the first rows: ${JSON.stringify(first)}`);
  const firstCalm = all.findIndex((r) => !(r.attention > 0));
  check(all.slice(firstCalm).every((r) => !(r.attention > 0)), `no row needing attention after the calm ones (from ${firstCalm})`);

  step("the filter");
  await show(page, "attention", "");
  // Both from one look at the page: a refresh may have come since the first.
  const [attention, urgent] = await page.evaluate(() => {
    const trs = [...document.querySelectorAll("#rows-body tr")];
    return [trs.filter((tr) => !tr.hidden).map((tr) => ({ candidate: tr.dataset.candidate, attention: Number(tr.dataset.attention) })),
      trs.filter((tr) => Number(tr.dataset.attention) > 0).length];
  });
  check(attention.length === urgent && attention.every((r) => r.attention > 0),
    `"needs attention" shows the ${attention.length} urgent rows and no other`);
  const named = new Set(attention.map((r) => r.candidate));
  check(expect.attention_includes.every((c) => named.has(c)), `among them ${expect.attention_includes.join(", ")}`);
  await show(page, "silent", "");
  const silent = await shownRows(page);
  check(silent.length === expect.silent && silent.every((r) => r.state === "silent"),
    `"silent" shows the ${silent.length} silent candidates`);
  const shown = await page.textContent("#shown");
  check(shown === `Showing ${expect.silent} of ${expect.total} candidates.`, `the count line: "${shown}"`);

  step("the filter survives a refresh");
  const before = await page.evaluate(() => Number(document.body.dataset.rendered));
  await page.waitForFunction((n) => Number(document.body.dataset.rendered) > n, before, { timeout: 15000 });
  check(await page.inputValue("#filter") === "silent" && (await shownRows(page)).length === expect.silent,
    "after the next refresh the page still shows the silent ones only");

  step("the search");
  await show(page, "all", expect.search.needle);
  const found = (await shownRows(page)).map((r) => r.candidate);
  check(JSON.stringify(found) === JSON.stringify(expect.search.shown),
    `searching "${expect.search.needle}" shows ${JSON.stringify(found)}`);
  await show(page, "all", "");
  await shoot(page, "console-500.png", 2400);

  step("on a phone");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `nothing overflows a phone's width (${overflow} px)`);
  for (const sel of ["#filter", "#search", "#signout", "#spare-details summary"]) {
    const box = await page.locator(sel).boundingBox();
    check(box && box.height >= 40, `${sel} is large enough to touch (${box && Math.round(box.height)} px)`);
  }
  await show(page, "attention", "");
  await shoot(page, "console-500-phone.png", 5000);
  await show(page, "all", "");
}
