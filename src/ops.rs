//! The operator's commands that talk to a box or carry its data: `status` (the box's status
//! for a person), `audit` (its audit log), `replay --retry-parked` (parked autosaves go to the
//! cloud again), `export` (a signed bundle of everything stored, pulled from a running box),
//! `verify` (checks a bundle offline), `import` (pushes a bundle to the cloud from any
//! connected computer, idempotent like replay) and `report` (the offline-time record, CSV). Tools that talk to a box trust it by its pin.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};

use hallrelay_client::{ClientError, Connection};
use hallrelay_protocol::ids::AutosaveName;
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::v1::{
    AUDIT, Answer, AutosavePut, EXPORT_AUTOSAVES, EXPORT_MANIFEST, REPORT, RETRY_PARKED, STATUS,
    headers,
};
use hallrelay_server::bundle::{self, BundleError, Header, Summary};
use hallrelay_server::units::human_bytes;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{what} answered {status}: {message}")]
    Refused {
        what: String,
        status: StatusCode,
        message: String,
    },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bundle is refused: {0}")]
    Bundle(#[from] BundleError),
    #[error("the box's answer is unreadable: {0}")]
    Unreadable(String),
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> OpsError + '_ {
    move |source| OpsError::File {
        path: path.to_owned(),
        source,
    }
}

/// `token --box URL`: asks the box (pinned, with an admin token) for a box-only candidate
/// token (`POST /console/tokens`).
pub async fn box_token(
    box_url: &str,
    token: Secret,
    pin: &str,
    request: &hallrelay_protocol::v1::box_tokens::BoxTokenRequest,
) -> Result<hallrelay_protocol::v1::box_tokens::BoxTokenIssued, OpsError> {
    let client = Connection::pinned(box_url, vec![pin.to_owned()], Some(token))?;
    let body = serde_json::to_vec(request).map_err(|e| OpsError::Unreadable(e.to_string()))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let reply = client
        .send(
            Method::POST,
            hallrelay_protocol::v1::box_tokens::CONSOLE_TOKENS,
            headers,
            Bytes::from(body),
        )
        .await?;
    if reply.status != StatusCode::CREATED {
        return Err(refused("the box", &reply));
    }
    reply
        .json()
        .map_err(|e| OpsError::Unreadable(e.to_string()))
}

fn refused(what: &str, reply: &hallrelay_client::Reply) -> OpsError {
    let message = reply.message().unwrap_or_default();
    OpsError::Refused {
        what: what.to_owned(),
        status: reply.status,
        message,
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:8} [{bar:30}] {pos}/{len} autosaves, {elapsed} (eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// `hallrelay status`: `/v1/status` in sentences.
pub async fn status(box_url: &str, token: Secret, pin: &str) -> Result<String, OpsError> {
    let client = Connection::pinned(box_url, vec![pin.to_owned()], Some(token))?;
    let reply = client.get(STATUS).await?;
    if reply.status != StatusCode::OK {
        return Err(refused("the box", &reply));
    }
    let s: serde_json::Value = reply
        .json()
        .map_err(|e| OpsError::Unreadable(e.to_string()))?;
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let uplink = match s["uplink"]["state"].as_str().unwrap_or("unknown") {
        "up" => "up: saves held here are being sent to the cloud".to_owned(),
        "down" => format!(
            "DOWN since {} ({})",
            s["uplink"]["since"].as_str().unwrap_or("?"),
            s["uplink"]["last_error"].as_str().unwrap_or("no answer")
        ),
        "refused" => "REFUSED: the cloud does not accept this box's credential".to_owned(),
        "not_configured" => "no cloud configured: saves are kept, not sent".to_owned(),
        other => other.to_owned(),
    };
    let pending = &s["pending"];
    let mut out = format!(
        "box      {} ({}), hallrelay {}\nuplink   {uplink}\n",
        s["name"].as_str().unwrap_or("?"),
        s["appliance"].as_str().unwrap_or("?"),
        s["version"].as_str().unwrap_or("?"),
    );
    let e = &s["enrollment"];
    out += &match e["state"].as_str() {
        Some("enrolled") => format!(
            "platform enrolled in venue {} since {}, keys {} old\n",
            e["venue"].as_str().unwrap_or("?"),
            e["since"].as_str().unwrap_or("?"),
            humantime::format_duration(Duration::from_secs(n(&e["keys_age_secs"]) / 60 * 60)),
        ),
        Some("static") => "platform credential from cloud_token_file\n".to_owned(),
        Some(state) => format!(
            "platform NOT ENROLLED ({state}): {}; next: {}\n",
            e["reason"].as_str().unwrap_or("not yet"),
            e["next_step"].as_str().unwrap_or("?"),
        ),
        None => String::new(),
    };
    let (stored, candidates) = (n(&s["stored"]["count"]), n(&s["candidates"]));
    out += &format!(
        "stored   {stored} autosave{} of {candidates} candidate{}, {}\n",
        if stored == 1 { "" } else { "s" },
        if candidates == 1 { "" } else { "s" },
        human_bytes(n(&s["stored"]["bytes"]))
    );
    out += &match n(&pending["count"]) {
        0 => "waiting  nothing: the cloud has everything\n".to_owned(),
        count => format!(
            "waiting  {count} autosaves ({}) for the cloud, the oldest for {}\n",
            human_bytes(n(&pending["bytes"])),
            humantime::format_duration(Duration::from_secs(n(&pending["oldest_age_secs"])))
        ),
    };
    let parked = &s["parked"];
    if n(&parked["count"]) > 0 {
        out += &format!(
            "REFUSED  {} autosaves ({}) the cloud refused for good, kept here; fix the cause, \
             then run `hallrelay replay --retry-parked`\n",
            n(&parked["count"]),
            human_bytes(n(&parked["bytes"])),
        );
    }
    let refused_conflicts = n(&s["refused_conflicts"]);
    if refused_conflicts > 0 {
        out += &format!(
            "CONFLICT {refused_conflicts} save{} refused 409 conflict: a laptop sent other answers \
             under a save number already used (nothing stored was overwritten); the console \
             lists the candidates first, check each works on one laptop only\n",
            if refused_conflicts == 1 { "" } else { "s" },
        );
    }
    let after = &s["after_final"];
    let (accepted, refused_after) = (n(&after["accepted"]), n(&after["refused"]));
    if accepted + refused_after > 0 {
        out += &format!(
            "final    after_final = {}: {accepted} save{} after a final accepted (flagged in \
             the report), {refused_after} refused\n",
            after["policy"].as_str().unwrap_or("?"),
            if accepted == 1 { "" } else { "s" },
        );
    }
    if let Some(error) = s["uplink"]["last_error"].as_str() {
        out += &format!(
            "error    {error} (at {})\n",
            s["uplink"]["last_error_at"].as_str().unwrap_or("?")
        );
    }
    out += &format!(
        "cloud    {} delivered, {} conflicts\ndisk     {} free ({} kept in reserve)",
        n(&s["delivered"]),
        n(&s["conflicts"]),
        human_bytes(n(&s["disk"]["free_bytes"])),
        human_bytes(n(&s["disk"]["reserve_bytes"])),
    );
    Ok(out)
}

/// `hallrelay report`: the box's offline-time record as CSV (`GET /v1/report?format=csv`).
pub async fn report(box_url: &str, token: Secret, pin: &str) -> Result<Bytes, OpsError> {
    let client = Connection::pinned(box_url, vec![pin.to_owned()], Some(token))?;
    let reply = client.get(&format!("{REPORT}?format=csv")).await?;
    if reply.status != StatusCode::OK {
        return Err(refused("the box", &reply));
    }
    Ok(reply.body)
}

/// Writes `contents` to `path` whole: beside it first, synced, then renamed into place, so
/// that a failure never leaves half a file under its name.
pub fn write_file(path: &Path, contents: &[u8]) -> Result<(), OpsError> {
    hallrelay_durable::write_durably(path, contents).map_err(file_error(path))
}

/// Writes `contents` to `out` whole ([`write_file`]), or to standard output when there is no
/// `out`: what a command's `--out FILE` means.
pub fn write_out(out: Option<&Path>, contents: &[u8]) -> Result<(), OpsError> {
    use std::io::Write as _;
    match out {
        Some(path) => write_file(path, contents),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(contents)
                .and_then(|()| stdout.flush())
                .map_err(file_error(Path::new("<stdout>")))
        }
    }
}

/// `hallrelay replay --retry-parked`: asks the box to return every parked autosave to its
/// replay queue; returns how many went back.
pub async fn retry_parked(box_url: &str, token: Secret, pin: &str) -> Result<u64, OpsError> {
    let client = Connection::pinned(box_url, vec![pin.to_owned()], Some(token))?;
    let reply = client
        .send(Method::POST, RETRY_PARKED, HeaderMap::new(), Bytes::new())
        .await?;
    if reply.status != StatusCode::OK {
        return Err(refused("the box", &reply));
    }
    let answer: serde_json::Value = reply
        .json()
        .map_err(|e| OpsError::Unreadable(e.to_string()))?;
    answer["retried"]
        .as_u64()
        .ok_or_else(|| OpsError::Unreadable("no `retried` count in the answer".into()))
}

/// `hallrelay audit`: up to `limit` entries of the box's audit log, oldest first, written
/// since `since`; pages through `GET /v1/audit`. The second value is whether more follow.
pub async fn audit(
    box_url: &str,
    token: Secret,
    pin: &str,
    since: Option<std::time::SystemTime>,
    limit: u64,
) -> Result<(Vec<serde_json::Value>, bool), OpsError> {
    let client = Connection::pinned(box_url, vec![pin.to_owned()], Some(token))?;
    let since = since.map(hallrelay_protocol::timefmt::rfc3339);
    let mut entries = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let want = (limit - entries.len() as u64).min(1000);
        let mut path = format!("{AUDIT}?limit={want}");
        if let Some(after) = after {
            path += &format!("&after={after}");
        }
        if let Some(since) = &since {
            path += &format!("&since={since}");
        }
        let reply = client.get(&path).await?;
        if reply.status != StatusCode::OK {
            return Err(refused("the box", &reply));
        }
        let page: serde_json::Value = reply
            .json()
            .map_err(|e| OpsError::Unreadable(e.to_string()))?;
        if let Some(list) = page["entries"].as_array() {
            entries.extend(list.iter().cloned());
        }
        match page["next"].as_u64() {
            Some(next) if (entries.len() as u64) < limit => after = Some(next),
            Some(_) => return Ok((entries, true)),
            None => return Ok((entries, false)),
        }
    }
}

/// One audit entry for a person: number, time, event, the autosave or candidate it is
/// about, who (for an admin's action), then the rest of its fields.
pub fn audit_line(entry: &serde_json::Value) -> String {
    let text = |key: &str| entry[key].as_str().unwrap_or("").to_owned();
    let mut about = match (entry["exam"].as_str(), entry["candidate"].as_str()) {
        (Some(e), Some(c)) => format!("{e}/{c}"),
        _ => String::new(),
    };
    if let Some(seq) = entry["seq"].as_u64() {
        about += &format!("/{seq}");
    }
    let mut line = format!(
        "{:>8}  {}  {:<17} {}",
        entry["n"].as_u64().unwrap_or(0),
        text("at"),
        text("event"),
        about
    );
    if let Some(subject) = entry["subject"].as_str() {
        line += &format!("  by {subject} (token {})", text("token"));
    }
    let shown = [
        "n",
        "at",
        "event",
        "exam",
        "candidate",
        "seq",
        "subject",
        "token",
    ];
    if let Some(map) = entry.as_object() {
        for (key, value) in map.iter().filter(|(k, _)| !shown.contains(&k.as_str())) {
            match value {
                serde_json::Value::String(s) => line += &format!("  {key}={s}"),
                other => line += &format!("  {key}={other}"),
            }
        }
    }
    line
}

/// `hallrelay export`: pulls every autosave page by page into `out` (written beside it with
/// mode 0600, fsynced, verified, then renamed into place) and returns the verified summary.
pub async fn export(
    box_url: &str,
    token: Secret,
    pin: &str,
    out: &Path,
) -> Result<Summary, OpsError> {
    let client = Connection::pinned(box_url, vec![pin.to_owned()], Some(token))?
        .with_timeout(Duration::from_secs(300));
    let total = match client.get(STATUS).await {
        Ok(r) if r.status == StatusCode::OK => r
            .json::<serde_json::Value>()
            .ok()
            .and_then(|v| v["stored"]["count"].as_u64())
            .unwrap_or(0),
        Ok(r) => return Err(refused("the box", &r)),
        Err(e) => return Err(e.into()),
    };
    let partial = out.with_extension("partial");
    // It holds a whole hall's answers: private, like a key.
    let file = hallrelay_durable::create_private(&partial).map_err(file_error(&partial))?;
    let mut writer = BufWriter::new(file);
    writer
        .write_all(bundle::MAGIC)
        .map_err(file_error(&partial))?;
    let progress = bar(total, "export");
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("{EXPORT_AUTOSAVES}?after={a}"),
            None => EXPORT_AUTOSAVES.to_owned(),
        };
        let reply = client.get(&path).await?;
        if reply.status != StatusCode::OK {
            return Err(refused("the box", &reply));
        }
        // Check each frame as it arrives; the bundle is verified again as a whole below.
        let mut reader = bundle::Reader::new(std::io::Cursor::new(
            [
                bundle::MAGIC,
                reply.body.as_ref(),
                b"{\"kind\":\"end\",\"len\":0}\n\n",
            ]
            .concat(),
        ))?;
        while let Some((header, _)) = reader.next_frame()? {
            if let Header::Autosave {
                exam,
                candidate,
                seq,
                ..
            } = header
            {
                names.push(format!("{exam}/{candidate}/{seq}"));
                progress.inc(1);
            }
        }
        writer
            .write_all(&reply.body)
            .map_err(file_error(&partial))?;
        let more = reply.header(headers::EXPORT_MORE) == Some("true");
        after = reply.header(headers::EXPORT_LAST).map(str::to_owned);
        if !more || after.is_none() {
            break;
        }
    }
    progress.finish_and_clear();
    let request = serde_json::json!({ "names": names }).to_string();
    let reply = client
        .send(
            Method::POST,
            EXPORT_MANIFEST,
            HeaderMap::new(),
            Bytes::from(request),
        )
        .await?;
    if reply.status != StatusCode::OK {
        return Err(refused("the box", &reply));
    }
    writer
        .write_all(&reply.body)
        .map_err(file_error(&partial))?;
    let file = writer
        .into_inner()
        .map_err(|e| file_error(&partial)(e.into_error()))?;
    file.sync_all().map_err(file_error(&partial))?;
    drop(file);
    let summary = verify(&partial)?;
    std::fs::rename(&partial, out).map_err(file_error(out))?;
    hallrelay_durable::sync_parent(out).map_err(file_error(out))?;
    Ok(summary)
}

/// `hallrelay verify`: checks a bundle offline.
pub fn verify(path: &Path) -> Result<Summary, OpsError> {
    let file = File::open(path).map_err(file_error(path))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("verify   [{bar:30}] {bytes}/{total_bytes}") {
        progress.set_style(style.progress_chars("=> "));
    }
    let reader = BufReader::new(progress.wrap_read(file));
    let summary = bundle::verify(reader, |_| {})?;
    progress.finish_and_clear();
    Ok(summary)
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Stored by the cloud now (201).
    pub new: u64,
    /// The cloud already held the same bytes (200).
    pub already: u64,
    /// The cloud holds other bytes under the name (409): left as they are.
    pub conflicts: u64,
}

/// How many times `import` sends one autosave before it gives up on a cloud that fails.
const IMPORT_ATTEMPTS: u32 = 5;

/// What `import` does with one answer of the cloud.
enum ImportStep {
    /// A final answer: count it.
    Count(fn(&mut Imported)),
    /// Send the same autosave again, after a pause.
    Again,
    /// The cloud refuses it (or kept failing): the import stops.
    Stop,
}

/// The cloud's `answer` to `attempt` (from 1), as `import` acts on it.
fn import_step(answer: Answer, attempt: u32) -> ImportStep {
    match answer {
        Answer::Stored => ImportStep::Count(|done| done.new += 1),
        Answer::AlreadyStored => ImportStep::Count(|done| done.already += 1),
        Answer::Conflict => ImportStep::Count(|done| done.conflicts += 1),
        Answer::RetryLater { .. } | Answer::Failed if attempt < IMPORT_ATTEMPTS => {
            ImportStep::Again
        }
        Answer::RetryLater { .. } | Answer::Failed | Answer::Unauthorized | Answer::Refused => {
            ImportStep::Stop
        }
    }
}

/// `hallrelay import`: verifies the bundle, then sends every autosave to the cloud with its
/// digest and the box's receipt, the way replay does. Sending the same bundle again changes
/// nothing. A cloud that asks for time or fails (429, 503, 5xx, 408, no answer) gets the same
/// autosave again, [`IMPORT_ATTEMPTS`] times in all; any other refusal stops the import.
pub async fn import(cloud: Connection, path: &Path) -> Result<Imported, OpsError> {
    let summary = verify(path)?;
    let file = File::open(path).map_err(file_error(path))?;
    let mut reader = bundle::Reader::new(BufReader::new(file))?;
    let progress = bar(summary.manifest.count, "import");
    let mut done = Imported::default();
    while let Some((header, payload)) = reader.next_frame()? {
        let Header::Autosave {
            exam,
            candidate,
            seq,
            blake3,
            is_final,
            receipt,
            ..
        } = header
        else {
            continue;
        };
        // The file was verified a moment ago; a payload changed since is still caught here.
        let hash = blake3::hash(&payload);
        if hash.to_hex().as_str() != blake3 {
            return Err(BundleError::PayloadAltered {
                name: format!("{exam}/{candidate}/{seq}"),
            }
            .into());
        }
        let name = AutosaveName {
            exam,
            candidate,
            seq,
        };
        let put = AutosavePut::new(&name, is_final)
            .digest(&hash)
            .receipts(std::slice::from_ref(&receipt));
        let payload = Bytes::from(payload);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = cloud
                .put(&put.path, put.headers.clone(), payload.clone())
                .await;
            match result {
                Ok(r) => match import_step(Answer::of(r.status, &r.headers), attempt) {
                    ImportStep::Count(count) => count(&mut done),
                    ImportStep::Again => {
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        continue;
                    }
                    ImportStep::Stop => return Err(refused("the cloud", &r)),
                },
                Err(_) if attempt < IMPORT_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            break;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(code: u16, attempt: u32) -> ImportStep {
        let status = StatusCode::from_u16(code).unwrap();
        import_step(Answer::of(status, &HeaderMap::new()), attempt)
    }

    fn counted(code: u16) -> Imported {
        let mut done = Imported::default();
        match step(code, 1) {
            ImportStep::Count(count) => count(&mut done),
            _ => panic!("{code} must be counted"),
        }
        done
    }

    /// How import acts on each answer, read by the protocol's one rule. Before that rule,
    /// import counted only 201, 200 and 409, retried only 5xx and 429, and stopped at once on
    /// anything else: a 204 stopped the import, and so did 408 and 425.
    #[test]
    fn import_counts_final_answers_retries_passing_ones_and_stops_on_refusals() {
        let new = Imported {
            new: 1,
            ..Imported::default()
        };
        assert_eq!(counted(201), new);
        assert_eq!(counted(204), new);
        assert_eq!(
            counted(200),
            Imported {
                already: 1,
                ..Imported::default()
            }
        );
        assert_eq!(
            counted(409),
            Imported {
                conflicts: 1,
                ..Imported::default()
            }
        );
        for code in [408, 425, 429, 500, 503, 507] {
            assert!(matches!(step(code, 1), ImportStep::Again), "{code}");
            assert!(
                matches!(step(code, IMPORT_ATTEMPTS), ImportStep::Stop),
                "{code}: the last attempt"
            );
        }
        for code in [400, 401, 403, 404, 413] {
            assert!(matches!(step(code, 1), ImportStep::Stop), "{code}");
        }
    }
}
