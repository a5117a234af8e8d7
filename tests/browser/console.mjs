// Drives Debian's headless Chromium (through playwright-core) against a real box's console:
// sign in, check the rows (and whose answers are encrypted), wait for the silent alert, use
// the keyboard, sign out. Run by tests/console.rs, which starts the box and makes the saves.
// Input from the environment:
//   HALLRELAY_URL          https://127.0.0.1:PORT
//   HALLRELAY_PIN          sha256//BASE64 (Chromium trusts exactly this key, nothing else)
//   HALLRELAY_ADMIN_TOKEN  an admin token;  HALLRELAY_CANDIDATE_TOKEN  a candidate token
//   HALLRELAY_EXPECT       JSON: {rows: {candidate: {seq, final, answers}}, encryption_alert,
//                          silent: candidate, wait_secs}
//   HALLRELAY_SCREENSHOTS  folder for console.png (desktop) and console-phone.png
//   CHROMIUM               the browser binary (default /usr/bin/chromium)
// Prints one line per step; exits 1 with the reason at the first failure.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
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
const candidateToken = env("HALLRELAY_CANDIDATE_TOKEN");
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
  await page.fill("#token", candidateToken);
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
    const cells = await row.locator("td").allTextContents();
    check(cells[3] === String(want.seq), `${candidate}: last save no. ${cells[3]} is ${want.seq}`);
    check((cells[5] === "submitted") === want.final, `${candidate}: final "${cells[5]}"`);
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
  const silentRow = await page.locator(`#rows-body tr[data-candidate="${expect.silent}"] td`).last().textContent();
  check(silentRow === "SILENT", `the row of ${expect.silent} says SILENT`);
  for (const other of Object.keys(expect.rows).filter((c) => c !== expect.silent)) {
    const state = await page.locator(`#rows-body tr[data-candidate="${other}"] td`).last().textContent();
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

  check(consoleErrors.length === 0 || consoleErrors.every((e) => /status of 40[13]/.test(e)),
    `no script errors (${JSON.stringify(consoleErrors)})`);
  console.log("console: all checks passed");
} catch (e) {
  console.log(`console: FAILED: ${e.message}`);
  process.exitCode = 1;
} finally {
  if (browser) await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
