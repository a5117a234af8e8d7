//! Row 5: replay goodput through a link shaped to 10 Mbit/s — `benches/replay-goodput.sh`
//! (network namespaces, a veth pair and tc, so root), run on the binary under test, its
//! shaped row read back into this table.

use crate::{Row, Scale};

pub fn goodput(scale: Scale) -> Vec<Row> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/replay-goodput.sh");
    let mut command = std::process::Command::new("bash");
    command
        .arg(script)
        .env("HALLRELAY_BIN", env!("CARGO_BIN_EXE_hallrelay"));
    if scale.quick {
        command.arg("--quick");
    }
    eprintln!("bench: replay goodput (benches/replay-goodput.sh)");
    let output = match command.output() {
        Ok(o) => o,
        Err(e) => {
            return vec![Row::new(
                5,
                "replay goodput",
                format!("could not run the script: {e}"),
            )];
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if stdout.contains("SKIPPED") || !output.status.success() {
        let why = if stdout.contains("SKIPPED") {
            "skipped: needs root for namespaces and tc"
        } else {
            "the script failed"
        };
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        return vec![
            Row::new(5, "replay goodput through 10 Mbit/s", why).target("≥ 0.9 of the link", false),
        ];
    }
    let cells = |prefix: &str| -> Option<Vec<String>> {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.split('|').map(|c| c.trim().to_owned()).collect())
    };
    let mut rows = Vec::new();
    // | run | limit | time | goodput | sustained | goodput / limit | sustained / limit | target | result |
    if let Some(c) = cells("| veth") {
        let ratio: f64 = c.get(6).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        rows.push(
            Row::new(
                5,
                "replay goodput through veth shaped to 10 Mbit/s (tc tbf), 64 KiB autosaves",
                format!(
                    "{} MB/s of payload in {} s: **{ratio:.3}** of the link",
                    c[4], c[3]
                ),
            )
            .target("≥ 0.9 of the link", ratio >= 0.9),
        );
    }
    if let Some(c) = cells("| loopback |") {
        rows.push(Row::new(
            5,
            "replay goodput over loopback, unshaped (what the software can do)",
            format!("{} MB/s of payload", c[4]),
        ));
    }
    if rows.is_empty() {
        rows.push(Row::new(
            5,
            "replay goodput",
            "the script's table was not found",
        ));
    }
    rows
}
