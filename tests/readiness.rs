//! `hallrelay check` against a real small file system (a 32 MiB tmpfs, root) and real data
//! dirs: the verdict, the hours it prints and the exit code; a missing identity and another
//! program's file are refused.

use hallrelay_testkit as common;

use std::process::Command;

use common::{BoxProcess, Tmpfs, binary, config_file, privileged_or_skip};

/// Runs `hallrelay check ARGS`; returns (exit code, stdout).
fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary())
        .arg("check")
        .args(args)
        .output()
        .expect("run check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The hours the space line says the disk holds.
fn hours_held(report: &str) -> f64 {
    let line = report.lines().find(|l| l.contains("space:")).unwrap();
    let (_, rest) = line.rsplit_once(" holds ").expect("holds");
    rest.trim_end_matches(" h").parse().expect("hours")
}

#[test]
fn the_verdict_is_right_for_a_small_file_system() {
    if !privileged_or_skip("the_verdict_is_right_for_a_small_file_system") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(dir.path(), "32m");
    let data = tmpfs.0.join("data");
    let config = config_file(dir.path(), "min_free_bytes = 1048576\n");
    let config = config.to_str().unwrap();
    let data_arg = data.to_str().unwrap();

    // Before the first start: space is fine, but there is no identity yet.
    let (code, out) = check(&[
        "--candidates",
        "2",
        "--hours",
        "1",
        "--size",
        "4096",
        "--data-dir",
        data_arg,
        "--config",
        config,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NO identity"), "{out}");
    assert!(out.contains("ok space"), "{out}");

    // Start the box once: store and identity are created.
    let mut hall = BoxProcess::start(&data, &["--config", config]);
    hall.terminate();

    let free = hallrelay_store::free_bytes(&data).unwrap();
    // 2 candidates × 240 saves an hour × (4096 + 2048) bytes × 1.5.
    let per_hour = 2.0 * 240.0 * 6144.0 * 1.5;
    let expected = (free - 1_048_576) as f64 / per_hour;
    let (code, out) = check(&[
        "--candidates",
        "2",
        "--hours",
        "1",
        "--size",
        "4096",
        "--interval",
        "15s",
        "--data-dir",
        data_arg,
        "--config",
        config,
    ]);
    eprintln!("{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok store: opens"), "{out}");
    assert!(out.contains("ok identity: in place, pin sha256//"), "{out}");
    assert!(
        out.ends_with("ready: this box can take this hall\n"),
        "{out}"
    );
    let held = hours_held(&out);
    assert!((held - expected).abs() < 0.06, "{held} vs {expected}");
    assert!(
        held > 5.0 && held < 8.0,
        "32 MiB hold about 6.6 h of this hall: {held}"
    );

    // More hours than the disk holds: no, and exit 1.
    let (code, out) = check(&[
        "--candidates",
        "2",
        "--hours",
        "10",
        "--size",
        "4096",
        "--data-dir",
        data_arg,
        "--config",
        config,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NO space"), "{out}");
    assert!(out.contains("NOT READY"), "{out}");
}

#[test]
fn a_foreign_store_and_bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut hall = BoxProcess::start(&data, &[]);
    hall.terminate();
    // Another program's redb file where the store should be.
    std::fs::remove_file(data.join("hallrelay.redb")).unwrap();
    let db = redb::Database::create(data.join("hallrelay.redb")).unwrap();
    let write = db.begin_write().unwrap();
    {
        let def: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("other");
        write.open_table(def).unwrap().insert(1, 1).unwrap();
    }
    write.commit().unwrap();
    drop(db);
    let data_arg = data.to_str().unwrap();
    let (code, out) = check(&["--candidates", "1", "--hours", "1", "--data-dir", data_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NO store"), "{out}");
    let (code, _) = check(&["--candidates", "0", "--hours", "1", "--data-dir", data_arg]);
    assert_eq!(code, 64);
}
