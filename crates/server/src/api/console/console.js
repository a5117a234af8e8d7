// The invigilator console: signs in with an admin token, then polls /console/state every few
// seconds and renders it. The box makes every judgement (silent, disk level); this only shows
// them in plain words. Text is always set with textContent, never parsed as HTML.
"use strict";

const REFRESH_MS = 3000;
let timer = null;

const $ = (id) => document.getElementById(id);
const num = (n) => Number(n).toLocaleString("en-US");
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
  return isNaN(d) ? rfc3339 : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
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

function render(s) {
  $("box-name").textContent = s.name;
  $("box-pin").textContent = s.pin;
  $("version").textContent = s.version;
  const up = $("uplink");
  up.textContent = uplinkText(s.uplink);
  up.className = `banner ${s.uplink.state}`;
  $("summary").textContent = summaryText(s);
  $("enrollment").textContent = enrollmentText(s.enrollment);
  $("clock").textContent = clockText(s.clock);

  const alerts = $("alerts");
  alerts.replaceChildren();
  const storage = {
    full: "Storage is full: this box refuses new saves. Everything already here is safe. Call IT now.",
    failing: "This box's disk reported an error and the box is recovering. If this stays, call IT.",
  }[s.storage];
  const e = s.enrollment;
  if (e && (e.state === "code_refused" || (e.state === "not_enrolled" && s.uplink.state !== "not_configured"))) {
    const p = document.createElement("p");
    p.className = "alert";
    p.textContent = `This box is not enrolled with the platform: ${e.reason || "not yet"}. Next: ${e.next_step}. Saves are kept safe on this box meanwhile.`;
    alerts.appendChild(p);
  }
  if (s.clock && s.clock.state === "unsynced") {
    const p = document.createElement("p");
    p.className = "alert";
    p.textContent = `This box's clock is NOT synchronised. Saves are still kept safe. ${s.clock.advice}`;
    alerts.appendChild(p);
  }
  if (storage) {
    const p = document.createElement("p");
    p.className = "alert";
    p.textContent = storage;
    alerts.appendChild(p);
  }
  if (s.encryption.advice) {
    const p = document.createElement("p");
    p.className = "alert";
    p.id = "encryption-alert";
    p.textContent = s.encryption.advice;
    alerts.appendChild(p);
  }
  for (const r of s.rows.filter((r) => r.silent)) {
    const p = document.createElement("p");
    p.className = "alert";
    p.textContent = `${r.candidate} (${r.exam}) has not saved for ${duration(r.last_age_secs)}: check their laptop. ` +
      "They may also be saving to the cloud again.";
    alerts.appendChild(p);
  }

  $("pending-count").textContent = num(s.pending.count);
  $("pending-detail").textContent = s.pending.count > 0
    ? `${bytes(s.pending.bytes)}; oldest waiting ${duration(s.pending.oldest_age_secs)}`
    : "everything here is in the cloud";
  $("delivered").textContent = num(s.delivered);
  $("conflicts").textContent = num(s.conflicts);
  renderParked(s.parked);

  const d = s.disk;
  const tile = $("disk-tile");
  tile.className = `tile ${d.level}`;
  $("disk-meter").value = d.used_percent ?? 0;
  const level = { ok: "", warn: " Getting full: tell IT.", critical: " Nearly full: call IT now.", unknown: "" }[d.level] || "";
  $("disk-text").textContent = d.used_percent === null
    ? "Storage use unknown."
    : `${d.used_percent} % used, ${bytes(d.free_bytes)} free of ${bytes(d.total_bytes)}.${level}`;

  const r = s.readiness;
  $("holds").textContent = r.hours_held === null ? "" :
    `Enough for about ${r.hours_held > 999 ? "999+" : r.hours_held.toFixed(1)} more hours of ${plural(r.candidates, "candidate", "candidates")} ` +
    `saving ${bytes(r.size)} every ${r.interval_secs} seconds (hallrelay check gives the full verdict).`;

  const body = $("rows-body");
  body.replaceChildren();
  for (const r of s.rows) {
    const tr = document.createElement("tr");
    tr.className = r.silent ? "silent" : "";
    tr.dataset.candidate = r.candidate;
    cell(tr, "Candidate", r.candidate);
    cell(tr, "Exam", r.exam);
    cell(tr, "Last save", `${clock(r.last_received_at)} (${duration(r.last_age_secs)} ago)`);
    cell(tr, "Save no.", String(r.last_seq));
    cell(tr, "In the cloud", r.delivered === r.saves ? `all ${num(r.saves)}` : `${num(r.delivered)} of ${num(r.saves)}`);
    cell(tr, "Final", r.finals > 0 ? "submitted" : "not yet");
    cell(tr, "Saving only to this box for", duration(r.box_only_secs));
    cell(tr, "Answers", ANSWERS[r.encryption] || r.encryption, `answers-${r.encryption}`);
    if (r.silent) cell(tr, "State", "SILENT", "state-silent");
    else if (r.finals > 0) cell(tr, "State", "done", "state-done");
    else cell(tr, "State", "saving", "state-ok");
    body.appendChild(tr);
  }
  $("rows").hidden = s.rows.length === 0;
  $("no-rows").hidden = s.rows.length !== 0;
  $("updated").textContent = clock(s.now);
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

async function refresh() {
  clearTimeout(timer);
  try {
    const res = await fetch("/console/state", { credentials: "same-origin", cache: "no-store" });
    if (res.status === 401 || res.status === 403) { showSignIn(""); return; }
    if (!res.ok) throw new Error(`the box answered ${res.status}`);
    const state = await res.json();
    const wasHidden = $("app").hidden;
    $("signin").hidden = true;
    $("app").hidden = false;
    render(state);
    if (wasHidden) $("main").focus();
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

refresh();
