//! Row 10 (issue 21): what end-to-end encryption costs, and where.
//!
//! The client seals each save once, when it journals it; the box only reads the envelope's
//! header (for `require_encrypted` and the console), and never decrypts. Both are measured
//! against a baseline from the same run: the client's own journal write of the same bytes
//! (temporary file, fsync, rename, fsync the folder: what every save already costs), and the
//! box's blake3 of the body (what every upload already costs it).

use std::path::Path;
use std::time::{Duration, Instant};

use hallrelay_envelope::{PrivateKey, RestoreSecret, Save, Sealer};
use hallrelay_protocol::envelope::{Envelope, Role};

use crate::{Row, Scale};

/// The mean time of `f` over `rounds` runs (after one warm-up run).
fn mean(rounds: u32, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    for _ in 0..rounds {
        f();
    }
    start.elapsed() / rounds
}

fn micros(d: Duration) -> String {
    if d < Duration::from_micros(1) {
        format!("{} ns", d.as_nanos())
    } else {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    }
}

pub fn cost(dir: &Path, scale: Scale) -> (Row, Option<String>) {
    let exam = PrivateKey::derive(&[1; 32]);
    let restore = RestoreSecret::from_bytes([2; 16]).key("bench", "c001");
    let sealer = Sealer::new(exam.public(), Some(restore.public()));
    let rounds = if scale.quick { 20 } else { 200 };
    let mut parts = Vec::new();
    let mut ratios = Vec::new();
    for (label, size) in [("16 KiB", 16 * 1024), ("1 MiB", 1024 * 1024)] {
        let payload = vec![b'x'; size];
        let save = Save {
            exam: "bench",
            candidate: "c001",
            seq: 1,
            is_final: false,
        };
        let seal = mean(rounds, || {
            std::hint::black_box(sealer.seal(&save, &payload));
        });
        let sealed = sealer.seal(&save, &payload);
        let open = mean(rounds, || {
            std::hint::black_box(hallrelay_envelope::open(&sealed, &exam, Role::Exam, &save)).ok();
        });
        let file = dir.join("journal-save");
        let journal = mean(rounds.min(50), || {
            hallrelay_durable::write_durably(&file, &sealed).expect("write the journal file");
        });
        let header = mean(rounds * 100, || {
            std::hint::black_box(Envelope::parse(&sealed)).ok();
        });
        let hash = mean(rounds, || {
            std::hint::black_box(blake3::hash(&sealed));
        });
        parts.push(format!(
            "{label}: seal {} (journal write {}, ×{:.2}), platform open {}; box header check {} \
             (its blake3 {})",
            micros(seal),
            micros(journal),
            seal.as_secs_f64() / journal.as_secs_f64(),
            micros(open),
            micros(header),
            micros(hash),
        ));
        ratios.push(seal.as_secs_f64() / journal.as_secs_f64());
    }
    let row = Row::new(
        10,
        "end-to-end encryption: the client's sealing cost per save, against its journal write",
        parts.join("; "),
    );
    let note = format!(
        "Row 10: sealing adds {:.0}% to a 16 KiB save's journal write and {:.0}% to a 1 MiB one's \
         on this machine; the box's per-upload work does not change (a header read, O(1)).",
        ratios[0] * 100.0,
        ratios[1] * 100.0
    );
    (row, Some(note))
}
