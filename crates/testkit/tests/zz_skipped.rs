//! The last suite of `cargo test`: which suites were skipped in this run, why, and the one
//! command that installs what they need.
//!
//! Suites that need root, network namespaces or tools a bare machine lacks skip with a loud
//! message, but cargo shows a passing test's output only when asked (`--nocapture`), so the
//! messages alone are invisible. Each skip also goes into this run's ledger
//! (`common::skip`); this suite, which cargo runs after the others (the test kit is the
//! workspace member cargo tests last, and no doc tests follow), prints the ledger where a
//! newcomer sees it. CI makes every skip a failure instead
//! (`HALLRELAY_REQUIRE_PRIVILEGED=1`, `HALLRELAY_REQUIRE_NETNS=1`), so there this prints
//! "nothing was skipped". It has no test harness: its output is never captured.

use hallrelay_testkit as common;

use std::time::{Duration, SystemTime};

fn main() {
    let ledger = common::skip_ledger();
    let text = std::fs::read_to_string(&ledger).unwrap_or_default();
    let skips: Vec<Vec<&str>> = text
        .lines()
        .map(|line| line.splitn(3, '\t').collect())
        .filter(|fields: &Vec<&str>| fields.len() == 3)
        .collect();
    let rule = "=".repeat(78);
    println!("\n{rule}");
    if skips.is_empty() {
        println!("hallrelay tests: every suite ran; nothing was skipped.");
    } else {
        println!(
            "hallrelay tests: {} test(s) SKIPPED in this run (they passed without running):",
            skips.len()
        );
        for fields in &skips {
            println!("  - tests/{}.rs: {}: {}", fields[0], fields[1], fields[2]);
        }
        println!();
        println!("To run them: as root, `.ci/install-deps` (the Debian packages, the browser");
        println!("tests' npm modules, the OpenAPI tools), then `cargo test --release` again.");
        println!("CI runs them all and");
        println!("fails on any skip (HALLRELAY_REQUIRE_PRIVILEGED=1, HALLRELAY_REQUIRE_NETNS=1).");
    }
    println!("{rule}\n");
    let _ = std::fs::remove_file(&ledger);
    forget_old_ledgers(&ledger);
}

/// Ledgers of runs that never reached this suite (a filtered or interrupted run), a day on.
fn forget_old_ledgers(current: &std::path::Path) {
    let Some(dir) = current.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let day_ago = SystemTime::now() - Duration::from_secs(86_400);
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < day_ago);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
