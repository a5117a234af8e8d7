// The invigilator console: signs in with an admin token, then polls /console/state every few
// seconds and renders it. The box makes every judgement (silent, disk level); this only shows
// them in plain words. Text is always set with textContent, never parsed as HTML.
"use strict";

const REFRESH_MS = 3000;
let timer = null;

const $ = (id) => document.getElementById(id);
// Formatters built once: building one per call costs a hall of 500 a tenth of a second.
const NUMBER = new Intl.NumberFormat("en-US");
const TIME = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const num = (n) => NUMBER.format(Number(n));
const plural = (n, one, many) => `${num(n)} ${n === 1 ? one : many}`;

function duration(secs) {
  if (secs === null || secs === undefined) return "–";
  if (secs < 60) return plural(secs, "second", "seconds");
  const mins = Math.floor(secs / 60);
  if (mins < 60) return plural(mins, "minute", "minutes");
  const hours = Math.floor(mins / 60);
  const rest = mins % 60;
  return rest ? `${plural(hours, "hour", "hours")} ${plural(rest, "minute", "minutes")}` : plural(hours, "hour", "hours");
}

function bytes(n) {
  if (n === null || n === undefined) return "unknown";
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return i === 0 ? `${num(v)} bytes` : `${v.toFixed(1)} ${units[i]}`;
}

function clock(rfc3339) {
  const d = new Date(rfc3339);
  return isNaN(d) ? rfc3339 : TIME.format(d);
}

function uplinkText(u) {
  switch (u.state) {
    case "up": return "Internet uplink is up: saves held here are being sent to the cloud.";
    case "down": return `Internet uplink is DOWN since ${clock(u.since)}. Saves are kept safe on this box and will be sent when it returns.`;
    case "refused": return "The cloud refuses this box's credential: call IT. Saves are kept safe on this box.";
    case "not_configured": return "No cloud is configured: this box keeps every save but sends none anywhere.";
    default: return "Checking the internet uplink…";
  }
}

// How far the box's enrollment with its platform has got: a line under the pin, and an
// alert with the next step while it is not enrolled.
function enrollmentText(e) {
  if (!e) return "";
  switch (e.state) {
    case "enrolled": {
      const age = e.keys_age_secs == null ? "" : `; platform keys ${Math.round(e.keys_age_secs / 3600)} h old`;
      return `Enrolled in venue ${e.venue} since ${e.since}${age}.`;
    }
    case "static": return "Uses a credential issued by the platform (no enrollment).";
    default: return "Not enrolled with the platform.";
  }
}

function summaryText(s) {
  const parts = [`${plural(s.active, "candidate", "candidates")} saving to this box`];
  parts.push(s.stored > 0 ? "all saves safe here" : "no saves here yet");
  parts.push(s.pending.count > 0 ? `${num(s.pending.count)} waiting for the internet` : "nothing waiting for the internet");
  return parts.join("; ") + ".";
}

function cell(row, label, text, cls) {
  const td = document.createElement("td");
  td.dataset.label = label;
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function clockText(c) {
  if (!c) return "";
  const bound = c.uncertainty_ms === null ? "" : ` ±${c.uncertainty_ms < 1000 ? `${c.uncertainty_ms} ms` : duration(Math.ceil(c.uncertainty_ms / 1000))}`;
  switch (c.state) {
    case "synced": return `Clock synced from the ${c.source === "ntp" ? "venue's NTP server" : c.source}${bound}.`;
    case "holding": return `Clock holding since its last sync${bound}. ${c.advice}`;
    default: return "Clock not synchronised.";
  }
}

// How each candidate's saves reached the box: encrypted for the platform or readable.
const ANSWERS = {
  encrypted: "encrypted",
  plain: "plain (readable)",
  mixed: "mixed: some plain",
  unknown: "unknown (saved before this was recorded)",
};

// Each row's state, as the box judged it, in plain words: the label shown in the row, and
// what the invigilator should do about it. The box sends `state`; older boxes do not, and
// then the row is judged from `silent` and `finals` alone.
const STATES = {
  silent: { label: "SILENT", filter: "Silent", hint: "has stopped saving: check their laptop" },
  conflict: { label: "CONFLICT", filter: "Conflict", hint: "different answers under one save number were refused: call IT" },
  continued_elsewhere: { label: "continued on another device", filter: "Continued on another device",
    hint: "an old laptop of theirs still tries to save: make sure they use only the new one" },
  after_final: { label: "saved after final", filter: "Saved after a final", hint: "saved again after submitting" },
  box_only: { label: "only on this box", filter: "Only on this box", hint: "saves wait here for the internet" },
  saving: { label: "saving", filter: "Saving", hint: "" },
  submitted: { label: "submitted", filter: "Submitted", hint: "" },
  back_on_cloud: { label: "back on the cloud", filter: "Back on the cloud", hint: "saves to the cloud again: nothing to do" },
  idle: { label: "idle", filter: "Idle", hint: "" },
};
const STATE_ORDER = Object.keys(STATES);

function stateOf(r) {
  if (r.state) return r.state;
  if (r.silent) return "silent";
  return r.finals > 0 ? "submitted" : "saving";
}

// Lower is more urgent; 0 (or absent) is nothing to do, and goes last.
function urgency(r) {
  const a = r.attention ?? (r.silent ? 1 : 0);
  return a > 0 ? a : Number.MAX_SAFE_INTEGER;
}

// What the state cell says below the state's word: the count behind it, and the next step.
function stateHint(r, state) {
  const parts = [];
  if (state === "after_final") {
    if (r.after_final_refused > 0) parts.push(`${plural(r.after_final_refused, "save", "saves")} after the final refused`);
    if (r.after_final_accepted > 0) parts.push(`${plural(r.after_final_accepted, "save", "saves")} after the final accepted and flagged`);
  } else if (state === "conflict") {
    parts.push(`${plural(r.conflicts ?? r.refused_conflicts ?? 0, "conflict", "conflicts")}: different answers under one save number; call IT`);
  } else if (state === "continued_elsewhere") {
    parts.push(`${plural(r.continued_elsewhere ?? 0, "save", "saves")} refused from a laptop they left: make sure they use only the new one`);
  } else if (STATES[state] && STATES[state].hint) {
    parts.push(STATES[state].hint);
  }
  if (r.also_held_by) parts.push("also held by another box in this hall");
  return parts.join("; ");
}

// The filter and the search survive refreshes: they live in the form, and each refresh
// applies them to the rows it builds before those rows reach the page.
let lastRows = [];
// When the box last answered with the hall (for a page that then loses its storage).
let lastGood = null;

function matches(r, filter, needle) {
  if (filter === "attention" && urgency(r) === Number.MAX_SAFE_INTEGER) return false;
  if (filter !== "all" && filter !== "attention" && stateOf(r) !== filter) return false;
  if (!needle) return true;
  return r.candidate.toLowerCase().includes(needle) || r.exam.toLowerCase().includes(needle);
}

function filterOptions(rows) {
  const counts = {};
  let attention = 0;
  for (const r of rows) {
    const st = stateOf(r);
    counts[st] = (counts[st] || 0) + 1;
    if (urgency(r) !== Number.MAX_SAFE_INTEGER) attention++;
  }
  const select = $("filter");
  const chosen = select.value || "all";
  const options = [["all", `Everyone (${num(rows.length)})`], ["attention", `Needs attention (${num(attention)})`]];
  for (const st of STATE_ORDER) {
    if (counts[st] || st === chosen) options.push([st, `${STATES[st].filter} (${num(counts[st] || 0)})`]);
  }
  for (const st of Object.keys(counts)) {
    if (!STATES[st]) options.push([st, `${st} (${num(counts[st])})`]);
  }
  // Rebuilt only when the choices changed, so an open list is not snatched from a finger.
  const key = options.map((o) => o.join("=")).join("|");
  if (select.dataset.key !== key) {
    select.replaceChildren(...options.map(([value, text]) => {
      const o = document.createElement("option");
      o.value = value;
      o.textContent = text;
      return o;
    }));
    select.value = chosen;
    select.dataset.key = key;
  }
}

// Shows only the rows that match; the rows are built already, so this only flips `hidden`.
function applyFilter() {
  const filter = $("filter").value || "all";
  const needle = $("search").value.trim().toLowerCase();
  const trs = $("rows-body").children;
  let shown = 0;
  for (let i = 0; i < trs.length; i++) {
    const ok = matches(lastRows[i], filter, needle);
    if (trs[i].hidden === ok) trs[i].hidden = !ok;
    if (ok) shown++;
  }
  const total = lastRows.length;
  $("shown").textContent = total === 0 ? "" : shown === total ? `Showing all ${plural(total, "candidate", "candidates")}.`
    : `Showing ${num(shown)} of ${plural(total, "candidate", "candidates")}.`;
  $("no-match").hidden = total === 0 || shown > 0;
}

const lastSave = (r) => `${clock(r.last_received_at)} (${duration(r.last_age_secs)} ago)`;

// Each candidate's row, kept between refreshes with what it was built from: a refresh
// builds only the rows whose candidate changed and updates the age of the others, so a
// hall of 500 costs little more than the rows that moved.
const rowCache = new Map();

function rowFor(r) {
  const key = `${r.exam}\u0000${r.candidate}`;
  const { last_age_secs: age, ...rest } = r;
  const sig = JSON.stringify(rest);
  let entry = rowCache.get(key);
  if (!entry || entry.sig !== sig) {
    const tr = rowElement(r);
    entry = { sig, tr, ago: tr.querySelector('td[data-label="Last save"]'), age };
    rowCache.set(key, entry);
  } else if (entry.age !== age) {
    entry.ago.textContent = lastSave(r);
    entry.age = age;
  }
  entry.seen = true;
  return entry.tr;
}

function rowElement(r) {
  const state = stateOf(r);
  const tr = document.createElement("tr");
  tr.className = `state-${state}`;
  tr.dataset.candidate = r.candidate;
  tr.dataset.exam = r.exam;
  tr.dataset.state = state;
  tr.dataset.attention = String(r.attention ?? (r.silent ? 1 : 0));
  cell(tr, "Candidate", r.candidate, "who");
  cell(tr, "Exam", r.exam);
  const st = cell(tr, "State", "", `state state-${state}`);
  const word = document.createElement("strong");
  word.textContent = state === "after_final" && r.after_final_refused > 0 && !(r.after_final_accepted > 0)
    ? "refused after final" : (STATES[state] ? STATES[state].label : state);
  st.appendChild(word);
  const hint = stateHint(r, state);
  if (hint) {
    const span = document.createElement("span");
    span.className = "hint";
    span.textContent = hint;
    st.appendChild(span);
  }
  cell(tr, "Last save", lastSave(r));
  cell(tr, "Save no.", String(r.last_seq));
  cell(tr, "In the cloud", r.delivered === r.saves ? `all ${num(r.saves)}` : `${num(r.delivered)} of ${num(r.saves)}`);
  cell(tr, "Final", r.finals > 0 ? "submitted" : "not yet");
  cell(tr, "Saving only to this box for", duration(r.box_only_secs));
  cell(tr, "Answers", ANSWERS[r.encryption] || r.encryption, `answers-${r.encryption}`);
  return tr;
}

function alertLine(text, id) {
  const p = document.createElement("p");
  p.className = "alert";
  if (id) p.id = id;
  p.textContent = text;
  return p;
}

// The most silent candidates named one by one in the alerts; the rest are counted.
const SILENT_NAMED = 5;

function render(s) {
  $("box-name").textContent = s.name;
  $("box-pin").textContent = s.pin;
  $("version").textContent = s.version;
  const up = $("uplink");
  up.textContent = uplinkText(s.uplink);
  up.className = `banner ${s.uplink.state}`;
  const banner = s.conflict ? s.conflict.banner
    : (s.conflicts > 0 ? `${plural(s.conflicts, "conflict", "conflicts")}: different answers were sent under one save number. Call IT.` : null);
  $("conflict-banner").textContent = banner || "";
  $("conflict-banner").hidden = !banner;
  $("summary").textContent = summaryText(s);
  $("enrollment").textContent = enrollmentText(s.enrollment);
  $("clock").textContent = clockText(s.clock);

  const alerts = [];
  // Full or failing: the box's own advice (a sentence ending in "call IT") as an alert.
  const storage = (s.storage === "full" || s.storage === "failing") && s.disk.advice ? s.disk.advice : {
    full: "Storage is full: this box refuses new saves. Everything already here is safe. Call IT now.",
    failing: "This box's disk reported an error and the box is recovering: call IT. Saves already here are kept.",
  }[s.storage];
  const e = s.enrollment;
  if (e && (e.state === "code_refused" || (e.state === "not_enrolled" && s.uplink.state !== "not_configured"))) {
    alerts.push(alertLine(`This box is not enrolled with the platform: ${e.reason || "not yet"}. Next: ${e.next_step}. Saves are kept safe on this box meanwhile.`));
  }
  if (s.clock && s.clock.state === "unsynced") {
    alerts.push(alertLine(`This box's clock is NOT synchronised. Saves are still kept safe. ${s.clock.advice}`));
  }
  if (storage) alerts.push(alertLine(storage, "storage-alert"));
  if (s.encryption.advice) alerts.push(alertLine(s.encryption.advice, "encryption-alert"));
  const silent = s.rows.filter((r) => stateOf(r) === "silent");
  for (const r of silent.slice(0, SILENT_NAMED)) {
    alerts.push(alertLine(`${r.candidate} (${r.exam}) has not saved for ${duration(r.last_age_secs)}: check their laptop. ` +
      "They may also be saving to the cloud again."));
  }
  if (silent.length > SILENT_NAMED) {
    alerts.push(alertLine(`${plural(silent.length - SILENT_NAMED, "more candidate has", "more candidates have")} stopped saving: ` +
      "choose \"Silent\" under Show to see them all."));
  }
  $("alerts").replaceChildren(...alerts);

  $("pending-count").textContent = num(s.pending.count);
  $("pending-detail").textContent = s.pending.count > 0
    ? `${bytes(s.pending.bytes)}; oldest waiting ${duration(s.pending.oldest_age_secs)}`
    : "everything here is in the cloud";
  $("delivered").textContent = num(s.delivered);
  const c = s.conflict;
  $("conflicts").textContent = num(c ? c.refused + c.cloud : s.conflicts);
  $("conflicts-detail").textContent = c
    ? `different answers under one save number: ${num(c.refused)} refused here, ${num(c.cloud)} reported by the cloud; ` +
      `${plural(c.candidates, "candidate", "candidates")}`
    : "different answers sent under one save number";
  $("conflicts-tile").className = (c ? c.refused + c.cloud : s.conflicts) > 0 ? "tile critical" : "tile";
  const back = s.back_on_cloud ?? s.rows.filter((r) => r.back_on_cloud).length;
  $("back-count").textContent = num(back);
  const af = s.after_final;
  $("after-final-tile").hidden = !af;
  if (af) {
    $("after-final-count").textContent = num(af.accepted + af.refused);
    $("after-final-detail").textContent = `${num(af.accepted)} accepted and flagged, ${num(af.refused)} refused ` +
      `(this exam's rule: ${af.policy === "refuse" ? "refuse" : "accept"} saves after a final)`;
    $("after-final-tile").className = af.accepted + af.refused > 0 ? "tile warn" : "tile";
  }
  const continued = s.continued_elsewhere;
  $("continued-tile").hidden = continued === undefined || continued === null;
  $("continued-count").textContent = num(continued ?? 0);
  $("continued-tile").className = continued > 0 ? "tile critical" : "tile";
  const held = s.also_held;
  $("also-held-tile").hidden = !held;
  $("also-held-count").textContent = held ? num(held.candidates) : "";
  renderParked(s.parked);

  const d = s.disk;
  const failing = s.storage === "failing";
  const full = s.storage === "full";
  const level = failing || full ? "critical" : d.level;
  $("disk-tile").className = `tile ${level}`;
  $("disk-meter").value = full ? 100 : (d.used_percent ?? 0);
  const words = { ok: "", warn: " Getting full: tell IT.", critical: " Nearly full: call IT now.", unknown: "" }[d.level] || "";
  const used = d.used_percent === null ? "Storage use unknown." : `${d.used_percent} % used, ${bytes(d.free_bytes)} free of ${bytes(d.total_bytes)}.`;
  $("disk-text").textContent = failing ? `FAILING: the disk reported an error. ${used}`
    : full ? `FULL: new saves are refused. ${used}`
    : `${used}${words}`;
  // Red says what to do in three words; the sentence behind it is in the alerts above.
  const advice = failing || full ? "Call IT now." : d.advice;
  $("disk-advice").textContent = advice || "";
  $("disk-advice").hidden = !advice;

  const r = s.readiness;
  $("holds").textContent = r.hours_held === null ? "" :
    `Enough for about ${r.hours_held > 999 ? "999+" : r.hours_held.toFixed(1)} more hours of ${plural(r.candidates, "candidate", "candidates")} ` +
    `saving ${bytes(r.size)} every ${r.interval_secs} seconds (hallrelay check gives the full verdict).`;

  // Most urgent first (the box sorts so already; an older box only by silence).
  const started = performance.now();
  const rows = s.rows.slice().sort((a, b) => urgency(a) - urgency(b)
    || (a.exam < b.exam ? -1 : a.exam > b.exam ? 1 : 0)
    || (a.candidate < b.candidate ? -1 : a.candidate > b.candidate ? 1 : 0));
  lastRows = rows;
  filterOptions(rows);
  // The rows are reused or built off the page, and put in place only when the order
  // changed: one layout per refresh, however many candidates.
  for (const entry of rowCache.values()) entry.seen = false;
  const trs = rows.map(rowFor);
  for (const [key, entry] of rowCache) if (!entry.seen) rowCache.delete(key);
  const body = $("rows-body");
  const now = body.children;
  if (now.length !== trs.length || trs.some((tr, i) => now[i] !== tr)) body.replaceChildren(...trs);
  applyFilter();
  $("rows").hidden = rows.length === 0;
  $("no-rows").hidden = rows.length !== 0;
  $("find").hidden = rows.length === 0;
  document.body.dataset.renderMs = String(Math.round(performance.now() - started));
  $("updated").textContent = clock(s.now);
  lastGood = clock(s.now);
  document.body.dataset.rendered = String((Number(document.body.dataset.rendered) || 0) + 1);
}

function renderParked(p) {
  $("parked-count").textContent = num(p.count);
  $("parked-detail").textContent = p.count > 0
    ? `${bytes(p.bytes)} kept here, not sent again until you ask`
    : "nothing refused";
  $("parked-tile").className = p.count > 0 ? "tile warn" : "tile";
  const body = $("parked-body");
  body.replaceChildren();
  for (const item of p.items) {
    const tr = document.createElement("tr");
    cell(tr, "Candidate", item.candidate);
    cell(tr, "Exam", item.exam);
    cell(tr, "Save no.", `${item.seq}${item.final ? " (final)" : ""}`);
    cell(tr, "Size", bytes(item.size));
    cell(tr, "Refused at", clock(item.parked_at));
    cell(tr, "The cloud's answer", item.reason);
    body.appendChild(tr);
  }
  $("parked").hidden = p.count === 0;
}

function showSignIn(message) {
  clearTimeout(timer);
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("token").focus();
}

function showApp() {
  const wasHidden = $("app").hidden;
  $("signin").hidden = true;
  $("app").hidden = false;
  if (wasHidden) $("main").focus();
}

// The box is up but cannot read its own storage (a failing disk it is trying to recover
// from): it cannot say who is safe, so the page says that, in red, rather than showing the
// last good reading as if nothing were wrong.
function renderUnavailable(message) {
  $("disk-tile").className = "tile critical";
  $("disk-text").textContent = `FAILING: the box cannot read its storage (${message}).`;
  $("disk-advice").textContent = "Call IT now.";
  $("disk-advice").hidden = false;
  $("alerts").replaceChildren(alertLine(`This box cannot read its storage: ${message}. New saves are refused and ` +
    "stay on the candidates' laptops; what the box already holds is not shown until it recovers. " +
    "If this lasts more than a minute, call IT.", "storage-alert"));
  $("summary").textContent = lastGood
    ? `Storage failing: the figures below are from ${lastGood}, the last good reading.`
    : "Storage failing: the box cannot list the hall.";
  $("updated").textContent = `${clock(new Date().toISOString())}, without the hall: the storage is failing`;
  document.body.dataset.unavailable = String((Number(document.body.dataset.unavailable) || 0) + 1);
}

async function refresh() {
  clearTimeout(timer);
  try {
    const res = await fetch("/console/state", { credentials: "same-origin", cache: "no-store" });
    if (res.status === 401 || res.status === 403) { showSignIn(""); return; }
    if (res.status === 503) {
      const err = await res.json().catch(() => ({}));
      showApp();
      renderUnavailable(err.message || "it answered 503");
    } else {
      if (!res.ok) throw new Error(`the box answered ${res.status}`);
      const state = await res.json();
      showApp();
      render(state);
    }
  } catch (e) {
    $("updated").textContent = `failed (${e.message}); retrying`;
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  const res = await fetch("/console/session", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token }),
  }).catch(() => null);
  $("token").value = "";
  if (res && res.status === 204) { refresh(); return; }
  let why = "The box could not be reached.";
  if (res) {
    const err = await res.json().catch(() => ({}));
    why = res.status === 403 ? "That is a candidate token; the console needs an admin token."
      : `Not signed in: ${err.message || res.status}.`;
  }
  showSignIn(why);
});

$("retry-parked").addEventListener("click", async () => {
  const res = await fetch("/console/retry-parked", { method: "POST", credentials: "same-origin" }).catch(() => null);
  let text = "The box could not be reached.";
  if (res && res.ok) {
    const r = await res.json().catch(() => ({}));
    text = `${plural(r.retried ?? 0, "save is", "saves are")} queued for the cloud again.`;
  } else if (res) {
    const err = await res.json().catch(() => ({}));
    text = `Not done: ${err.message || res.status}.`;
  }
  $("retry-result").textContent = text;
  refresh();
});

$("signout").addEventListener("click", async () => {
  await fetch("/console/signout", { method: "POST", credentials: "same-origin" }).catch(() => null);
  showSignIn("Signed out.");
});

let searchTimer = null;
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(applyFilter, 120);
});
$("filter").addEventListener("change", applyFilter);
$("find").addEventListener("submit", (ev) => { ev.preventDefault(); applyFilter(); });

// The spare laptop: a token valid on this box only, issued once the invigilator has checked
// who the candidate is. The box audits it.
let handout = "";
$("spare-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const exam = $("spare-exam").value.trim();
  const candidate = $("spare-candidate").value.trim();
  $("spare-error").textContent = "";
  $("spare-result").hidden = true;
  $("spare-copied").textContent = "";
  if (!$("spare-checked").checked) {
    $("spare-error").textContent = "Check the candidate's identity first, then tick the box.";
    return;
  }
  const res = await fetch("/console/tokens", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ exam, candidate }),
  }).catch(() => null);
  if (!res) { $("spare-error").textContent = "The box could not be reached. Try again."; return; }
  if (res.status === 404 || res.status === 405) {
    $("spare-error").textContent = "This box cannot issue spare-laptop tokens (its hallrelay is older). " +
      "Ask IT for a token, or let the candidate wait until the internet is back.";
    return;
  }
  if (res.status === 401) { showSignIn("Your session ended: sign in again."); return; }
  const body = await res.json().catch(() => ({}));
  if (res.status !== 201 || !body.token) {
    $("spare-error").textContent = `No token was issued: ${body.message || `the box answered ${res.status}`}.`;
    return;
  }
  const box = body.box || {};
  const urls = (box.urls || []).join(", ");
  $("spare-token").textContent = body.token;
  $("spare-box").textContent = box.name || "";
  $("spare-pin").textContent = box.pin || "";
  $("spare-urls").textContent = urls || "the laptop finds it on the hall network, by its pin";
  $("spare-expires").textContent = body.expires_at ? `${clock(body.expires_at)} (${body.expires_at})` : "";
  handout = [`exam: ${body.exam}`, `candidate: ${body.candidate}`, `box: ${box.name || ""}`, `pin: ${box.pin || ""}`,
    `address: ${urls}`, `token: ${body.token}`].join("\n");
  $("spare-checked").checked = false;
  $("spare-result").hidden = false;
  $("spare-token").focus();
});

async function copy(text, what) {
  let done = false;
  try {
    await navigator.clipboard.writeText(text);
    done = true;
  } catch (e) {
    done = false;
  }
  $("spare-copied").textContent = done ? `${what} copied.` : `Copying is not allowed here: select ${what.toLowerCase()} and copy it by hand.`;
}
$("spare-copy-token").addEventListener("click", () => copy($("spare-token").textContent, "The token"));
$("spare-copy-all").addEventListener("click", () => copy(handout, "Everything"));

refresh();
