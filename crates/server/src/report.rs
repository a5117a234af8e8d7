//! The offline-time record: one row per candidate who saved to this box, with when their
//! saves reached it, how long they saved only to it, when they submitted, and how good the
//! box's clock was at each of those times. An exam board reads it to decide extra time
//! (docs/receipts.md, "The offline-time record").
//!
//! The rows come from the store's per-candidate activity (`Store::candidate_activity`),
//! which the writer keeps in the same transactions as the saves and which keeps each
//! candidate's history when retention purges their delivered saves. This module only
//! shapes them: JSON for programs (`GET /v1/report`), CSV for people (`?format=csv`, the
//! console's download, `hallrelay report`, the export bundle). One CSV writer serves all
//! of them, so they say the same thing.

use serde::Serialize;

use hallrelay_store::{CandidateActivity, ClockNote};

/// The CSV's header line: every column, in order (documented in docs/receipts.md).
pub const CSV_COLUMNS: [&str; 18] = [
    "exam",
    "candidate",
    "appliance",
    "first_save_at",
    "first_save_clock",
    "first_save_uncertainty_ms",
    "last_save_at",
    "last_save_clock",
    "last_save_uncertainty_ms",
    "time_on_box_secs",
    "final_at",
    "final_seq",
    "final_clock",
    "final_uncertainty_ms",
    "worst_clock",
    "last_seq",
    "after_final_accepted",
    "after_final_refused",
];

/// The whole record, as `GET /v1/report` answers it.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// The box the rows are about (its store's appliance id), its name and pin.
    pub appliance: String,
    pub name: String,
    pub pin: String,
    /// When the record was read, RFC 3339, by the box's clock.
    pub generated_at: String,
    /// Saves at most this many seconds apart are one run of saving to the box
    /// (`console_silent_after`): what `time_on_box_secs` adds up.
    pub run_gap_secs: u64,
    pub rows: Vec<Row>,
}

/// One candidate on this box.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Row {
    pub exam: String,
    pub candidate: String,
    /// When the candidate's first and latest save reached the box (`received_at` of their
    /// receipts, RFC 3339), each with the clock it was stamped with.
    pub first_save_at: String,
    pub first_save_clock: ClockNote,
    pub last_save_at: String,
    pub last_save_clock: ClockNote,
    /// Seconds covered by runs of saves at most `run_gap_secs` apart.
    pub time_on_box_secs: u64,
    /// The first final submission that reached the box, its seq and clock; `None` if none.
    pub final_at: Option<String>,
    pub final_seq: Option<u64>,
    pub final_clock: Option<ClockNote>,
    /// The worst clock any of the candidate's saves here was stamped with.
    pub worst_clock: ClockNote,
    /// The highest save number the box received from the candidate.
    pub last_seq: u64,
    /// Saves after the candidate's final (a seq above `final_seq`) that the exam's
    /// `after_final` policy accepted (stored: an exam board decides what they count for)
    /// and refused.
    pub after_final_accepted: u64,
    pub after_final_refused: u64,
}

impl From<CandidateActivity> for Row {
    fn from(a: CandidateActivity) -> Self {
        Self {
            exam: a.exam,
            candidate: a.candidate,
            first_save_at: a.first_received_at,
            first_save_clock: a.first_clock,
            last_save_at: a.last_received_at,
            last_save_clock: a.last_clock,
            time_on_box_secs: a.box_only_secs,
            final_at: a.final_received_at,
            final_seq: a.final_seq,
            final_clock: a.final_clock,
            worst_clock: a.worst_clock,
            last_seq: a.last_seq,
            after_final_accepted: a.after_final_accepted,
            after_final_refused: a.after_final_refused,
        }
    }
}

/// The record as CSV (RFC 4180, CRLF line ends): the header line, then one line per row.
/// `appliance` fills the appliance column of every row.
pub fn csv(appliance: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    line(&mut out, CSV_COLUMNS.iter().map(|c| (*c).to_owned()));
    let number = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
    for row in rows {
        let final_clock = row.final_clock.as_ref();
        line(
            &mut out,
            [
                row.exam.clone(),
                row.candidate.clone(),
                appliance.to_owned(),
                row.first_save_at.clone(),
                row.first_save_clock.state.to_owned(),
                number(row.first_save_clock.uncertainty_ms),
                row.last_save_at.clone(),
                row.last_save_clock.state.to_owned(),
                number(row.last_save_clock.uncertainty_ms),
                row.time_on_box_secs.to_string(),
                row.final_at.clone().unwrap_or_default(),
                number(row.final_seq),
                final_clock.map(|c| c.state.to_owned()).unwrap_or_default(),
                number(final_clock.and_then(|c| c.uncertainty_ms)),
                row.worst_clock.state.to_owned(),
                row.last_seq.to_string(),
                row.after_final_accepted.to_string(),
                row.after_final_refused.to_string(),
            ],
        );
    }
    out
}

fn line(out: &mut String, cells: impl IntoIterator<Item = String>) {
    for (i, cell) in cells.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&cell_text(&cell));
    }
    out.push_str("\r\n");
}

/// One cell, safe to open in a spreadsheet: a value a spreadsheet would take for a formula
/// (it starts with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading `'`, which
/// spreadsheets show as text and hide; a value with a comma, quote or line end is quoted.
/// Ids may start with `-` (`[A-Za-z0-9._-]`), so this is not only theory.
fn cell_text(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(state: &'static str, uncertainty_ms: Option<u64>) -> ClockNote {
        ClockNote {
            state,
            source: None,
            uncertainty_ms,
        }
    }

    fn row(candidate: &str) -> Row {
        Row {
            exam: "math".into(),
            candidate: candidate.into(),
            first_save_at: "2026-12-05T09:00:00.000Z".into(),
            first_save_clock: note("unsynced", None),
            last_save_at: "2026-12-05T09:30:00.000Z".into(),
            last_save_clock: note("synced", Some(40)),
            time_on_box_secs: 1800,
            final_at: Some("2026-12-05T09:30:00.000Z".into()),
            final_seq: Some(121),
            final_clock: Some(note("synced", Some(40))),
            worst_clock: note("unsynced", None),
            last_seq: 121,
            after_final_accepted: 0,
            after_final_refused: 0,
        }
    }

    #[test]
    fn the_csv_has_a_header_and_one_line_per_row() {
        let mut open = row("c2");
        (open.final_at, open.final_seq, open.final_clock) = (None, None, None);
        let mut late = row("c1");
        (
            late.last_seq,
            late.after_final_accepted,
            late.after_final_refused,
        ) = (123, 2, 1);
        let text = csv("app1", &[row("c1"), open, late]);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines.len(), 5, "{text:?}");
        assert_eq!(lines[0], CSV_COLUMNS.join(","));
        assert_eq!(
            lines[1],
            "math,c1,app1,2026-12-05T09:00:00.000Z,unsynced,,2026-12-05T09:30:00.000Z,synced,40,\
             1800,2026-12-05T09:30:00.000Z,121,synced,40,unsynced,121,0,0"
        );
        assert_eq!(
            lines[2],
            "math,c2,app1,2026-12-05T09:00:00.000Z,unsynced,,2026-12-05T09:30:00.000Z,synced,40,\
             1800,,,,,unsynced,121,0,0"
        );
        assert!(
            lines[3].ends_with(",121,synced,40,unsynced,123,2,1"),
            "{}",
            lines[3]
        );
        assert_eq!(lines[4], "");
    }

    /// Formula injection: an id that a spreadsheet would evaluate (`-A1` is a valid id and a
    /// formula) is written as text.
    #[test]
    fn cells_a_spreadsheet_would_evaluate_are_written_as_text() {
        assert_eq!(cell_text("-A1"), "'-A1");
        assert_eq!(cell_text("=1+2"), "'=1+2");
        assert_eq!(cell_text("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell_text("+1"), "'+1");
        assert_eq!(cell_text("a,b"), "\"a,b\"");
        assert_eq!(cell_text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell_text("c-1"), "c-1");
        let text = csv("app1", &[row("-A1")]);
        assert!(text.contains(",'-A1,"), "{text}");
    }
}
