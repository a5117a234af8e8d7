//! `just bench`: hallrelay measured against this machine's own limits, in one run, as one
//! table — saved to `docs/benchmarks.md` with a description of the machine it ran on.
//!
//! The figures that matter are ratios to baselines measured in the same run (this machine is
//! shared and its absolute speed drifts), and the targets of issue 9:
//!
//! | # | what | target |
//! | --- | --- | --- |
//! | 1 | limits: raw appends + fdatasync, the HTTPS stack answering without storing | — |
//! | 2 | durable ingest, 16 KiB, 64 / 256 / 1,000 connections | ≥ 0.8 of the lower limit |
//! | 3 | steady hall, 1,000 candidates at 1 save / 15 s | p99 ≤ 20 ms |
//! | 4 | burst, 1,000 candidates × 4 saves at once | p99 ≤ 500 ms, no errors |
//! | 5 | replay goodput through a link shaped to 10 Mbit/s | ≥ 0.9 of the link |
//! | 6 | peak RSS of the box holding 1,000 candidates | ≤ 64 MiB |
//! | 7 | storage amplification, essay autosaves | ≤ 1.1 |
//! | 8 | restart to serving with 1 million stored autosaves | ≤ 1 s |
//! | 9 | a console refresh with 1 million stored autosaves (issue 16) | — |
//! | 10 | the client's cost of sealing a 16 KiB and a 1 MiB save (issue 21) | — |
//!
//! Every box under test is the real binary (`hallrelay serve`, a fresh data dir, loopback,
//! no mDNS) in its own process, so that its memory is its own; the load comes from this
//! process through `hallrelay::loadgen`, the engine of `hallrelay loadtest`.
//!
//! `--quick` (CI) shortens every scenario and stores 100,000 autosaves instead of a million
//! for the restart; it prints the table but does not write `docs/benchmarks.md`. `--only N,M`
//! runs some rows. `--pi` adds the Pi-class profile's rows for 1–4 next to the normal ones
//! (`pi.rs`: the box's CPU limited to a Pi 4's share, each sync slowed to an SD card's;
//! root). Scratch files go to `HALLRELAY_BENCH_DIR` (default: the current dir, so the disk
//! measured is the repo's).
//!
//! Row 8 has neighbours: restart after a crash (SIGKILL right after a few saves) with the same
//! stored autosaves, and restart with an unapplied journal tail of 10,000 (and 100,000)
//! autosaves, stored by a child process that exits without closing the store.
//!
//! The bench runs itself as a helper process for two jobs (the environment variable
//! [`CHILD_ENV`] says which): the raw-append limit under the Pi-class profile, and the store
//! that is left with an unapplied tail.

use hallrelay_testkit as common;

mod console;
mod load;
mod machine;
mod pi;
mod replay;
mod restart;
mod sealing;
mod storage;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// Set when this binary runs as its own helper process: `raw-append` or `tail`.
pub const CHILD_ENV: &str = "HALLRELAY_BENCH_CHILD";

/// One row of the table.
pub struct Row {
    pub item: u8,
    pub what: String,
    pub measured: String,
    pub target: String,
    /// `Some(true)` met, `Some(false)` missed, `None` no target.
    pub met: Option<bool>,
}

impl Row {
    pub fn new(item: u8, what: impl Into<String>, measured: impl Into<String>) -> Self {
        Self {
            item,
            what: what.into(),
            measured: measured.into(),
            target: "—".into(),
            met: None,
        }
    }

    pub fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = target.into();
        self.met = Some(met);
        self
    }
}

/// How long and how big, by mode.
#[derive(Clone, Copy)]
pub struct Scale {
    pub quick: bool,
    /// Measured time of a closed-loop throughput scenario.
    pub throughput_secs: u64,
    /// Measured time of the steady hall.
    pub steady_secs: u64,
    /// Autosaves stored before the restart is timed.
    pub restart_autosaves: u64,
    /// Candidates × saves of the essay workload.
    pub essay_candidates: usize,
    pub essay_saves: usize,
}

impl Scale {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                throughput_secs: 3,
                steady_secs: 20,
                restart_autosaves: 100_000,
                // Fewer candidates, not shorter essays: amplification depends on how long
                // the answers have grown.
                essay_candidates: 10,
                essay_saves: 240,
            }
        } else {
            Self {
                quick,
                throughput_secs: 10,
                steady_secs: 60,
                restart_autosaves: 1_000_000,
                essay_candidates: 100,
                essay_saves: 240,
            }
        }
    }
}

fn main() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("raw-append") => return pi::raw_append_child(),
        Ok("tail") => return restart::tail_child(),
        Ok(other) => panic!("{CHILD_ENV}={other}: no such helper"),
        Err(_) => {}
    }
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let pi_wanted = args.iter().any(|a| a == "--pi");
    let only: Option<Vec<u8>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        });
    let wanted = |item: u8| only.as_ref().is_none_or(|o| o.contains(&item));
    let scale = Scale::new(quick);
    // A thousand candidates' connections, and as many on the no-storage server's side.
    hallrelay_server::rlimit::raise_open_files(16_384);
    let scratch_root =
        PathBuf::from(std::env::var("HALLRELAY_BENCH_DIR").unwrap_or_else(|_| ".".into()));
    let scratch = tempfile::tempdir_in(&scratch_root).expect("scratch dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let machine = machine::describe(scratch.path());
    eprintln!("bench: {}", machine.one_line());

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let pi_rows = pi_wanted && (1..=4).any(wanted);
    let pi = if pi_rows {
        match pi::Profile::setup(scratch.path()) {
            Ok(profile) => {
                pi::teardown_on_signal(&runtime, scratch.path().to_owned());
                eprintln!("bench: pi: {}", profile.describe());
                Some(profile)
            }
            Err(why) => {
                eprintln!("bench: ***** SKIPPED the Pi-class profile: {why} *****");
                notes.push(format!("Pi-class profile skipped: {why}"));
                None
            }
        }
    } else {
        None
    };
    if wanted(1) || wanted(2) {
        let (ingest, note) = runtime.block_on(load::ingest(scratch.path(), scale));
        rows.extend(ingest);
        notes.extend(note);
    }
    if wanted(3) || wanted(4) || wanted(6) {
        let (hall, note) = runtime.block_on(load::hall(scratch.path(), scale));
        rows.extend(hall);
        notes.extend(note);
    }
    if let Some(profile) = &pi {
        let (pi_rows, note) = runtime.block_on(load::pi(scratch.path(), scale, profile, wanted));
        rows.extend(pi_rows);
        notes.extend(note);
    }
    drop(pi);
    if wanted(5) {
        rows.extend(replay::goodput(scale));
    }
    if wanted(7) {
        let (row, note) = runtime.block_on(storage::amplification(scratch.path(), scale));
        rows.push(row);
        notes.extend(note);
    }
    if wanted(8) {
        let (restart_rows, note) = runtime.block_on(restart::with_stored(scratch.path(), scale));
        rows.extend(restart_rows);
        notes.extend(note);
        let (tail_rows, note) = runtime.block_on(restart::with_tail(scratch.path(), scale));
        rows.extend(tail_rows);
        notes.extend(note);
    }
    if wanted(9) {
        let (row, note) = runtime.block_on(console::refresh(scratch.path(), scale));
        rows.push(row);
        notes.extend(note);
    }
    if wanted(10) {
        let (row, note) = sealing::cost(scratch.path(), scale);
        rows.push(row);
        notes.extend(note);
    }
    rows.sort_by_key(|r| r.item);

    let table = render(&rows, &notes);
    println!("\n{table}");
    if !quick && only.is_none() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
        let doc = machine::document(&machine, &table);
        match std::fs::write(&path, doc) {
            Ok(()) => eprintln!("bench: wrote {}", path.display()),
            Err(e) => eprintln!("bench: could not write {}: {e}", path.display()),
        }
    }
}

fn render(rows: &[Row], notes: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| # | what | measured | target | result |");
    let _ = writeln!(out, "| ---: | --- | --- | --- | --- |");
    for r in rows {
        let result = match r.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "—",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {result} |",
            r.item, r.what, r.measured, r.target
        );
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

/// Milliseconds with two decimals, or "—".
pub fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "—".into()
    }
}

/// A duration in seconds, for the notes.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
