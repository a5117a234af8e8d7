//! A wrong pin, as a newcomer meets it: every command that talks to a box (the real binary
//! against a real box on loopback) refuses a box whose key is not the pinned one, says which
//! key the box presented and which one(s) it trusts, and how to check, and exits with its
//! documented code. What the box stores is unchanged: nothing was sent to it.

use hallrelay_testkit as common;

use std::process::Output;

use common::BoxProcess;

/// A pin of no box.
const WRONG: &str = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fn run(args: &[&str]) -> Output {
    common::command(None)
        .args(args)
        .output()
        .expect("run hallrelay")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The refusal names the box, both pins, and where to find the right one.
fn assert_names_both_pins(b: &BoxProcess, output: &str) {
    let expected = format!(
        "the server at {} presented key {}, but this client trusts only {WRONG}: check the pin",
        b.url(),
        b.pin
    );
    assert!(output.contains(&expected), "{output}");
    assert!(output.contains("GET /v1/health"), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_names_the_pin_the_box_presented_and_the_one_it_expected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = BoxProcess::start(&dir.path().join("box"), &[]);
    let admin = common::write_secret(&dir.path().join("admin.token"), &b.admin_token());
    let candidate =
        common::write_secret(&dir.path().join("c1.token"), &b.candidate_token("e1", "c1"));
    let url = b.url();

    // status and export: exit 1, like any box not reached.
    for (what, extra) in [
        ("status", vec![]),
        (
            "export",
            vec!["--out", dir.path().join("x.bundle").to_str().expect("path")],
        ),
    ] {
        let mut args = vec![what, "--box", &url, "--token-file", &admin, "--pin", WRONG];
        args.extend(extra);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        assert_names_both_pins(&b, &text(&out));
    }
    assert!(!dir.path().join("x.bundle").exists());
    assert!(!dir.path().join("x.partial").exists());

    // candidate: the save stays in its journal, exit 75; a second pin is listed too.
    let other = "sha256//BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA=";
    let journal = dir.path().join("journal");
    let out = run(&[
        "candidate",
        // Sent as they are: with no cloud this laptop has no exam keys and would try no box.
        "--plaintext",
        "--cloud",
        // Nothing listens on the discard port: the cloud is gone.
        "http://127.0.0.1:9",
        "--box",
        &url,
        "--pin",
        WRONG,
        "--pin",
        other,
        "--no-mdns",
        "--exam",
        "e1",
        "--candidate",
        "c1",
        "--token-file",
        &candidate,
        "--count",
        "1",
        "--failover-after",
        "0s",
        "--journal",
        journal.to_str().expect("path"),
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(
        said.contains(&format!(
            "not using {url}: its key is not the exam's pin: the server at {url} presented key {}, \
             but this client trusts only {WRONG} or {other}: check the pin",
            b.pin
        )),
        "{said}"
    );

    // loadtest: exit 1, before any candidate connects.
    let out = common::command(None)
        .args([
            "loadtest",
            "--box",
            &url,
            "--pin",
            WRONG,
            "--venue-key-file",
        ])
        .arg(b.data_dir.join("venue.key"))
        .args(["--candidates", "5", "--burst", "1"])
        .output()
        .expect("run hallrelay loadtest");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(out.stdout.is_empty(), "no report for a box never trusted");
    assert_names_both_pins(&b, &text(&out));

    assert_eq!(
        b.status().await["stored"]["count"],
        0,
        "nothing reached the box"
    );
}
