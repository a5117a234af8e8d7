//! A newcomer's first hour: the README's recipes run as written, and the command line says
//! what went wrong and what to do. Real `hallrelay` processes (box, cloud, `token`,
//! `candidate`) on loopback, real files, no mDNS.

use hallrelay_testkit as common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use common::{BoxProcess, Candidate, free_port, put, write_secret};
use hallrelay_protocol::keys::TokenKey;
use hallrelay_protocol::token::{self, Claims, DEFAULT_VENUE};
use http::StatusCode;

/// Runs `hallrelay ARGS` in `cwd`; returns (exit code, stdout, stderr).
fn run_in(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = common::command(None)
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run hallrelay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// README "The box and the cloud on one machine", command for command in one folder: the
/// cloud (started first) plays the platform and keeps its signing key in `hallrelay-cloud/`;
/// the box trusts its public keys, so a token from `hallrelay token --platform-key-file` is
/// accepted by both, and the box's credential by the cloud.
#[tokio::test(flavor = "multi_thread")]
async fn the_box_and_the_cloud_on_one_machine() {
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path();
    // (umask 077; echo "a-long-random-credential" > box.cred)
    write_secret(&here.join("box.cred"), "a-long-random-credential");
    let listen = format!("127.0.0.1:{}", free_port());
    let _cloud = BoxProcess::start_at(
        here,
        &[
            "cloud",
            "--listen",
            &listen,
            "--appliance-token-file",
            "box.cred",
        ],
        &here.join("hallrelay-cloud"),
    );
    assert_eq!(mode(&here.join("hallrelay-cloud/platform.key")), 0o600);
    // (curl http://127.0.0.1:9443/v1/platform/keys > platform-keys.json)
    common::Platform::of_cloud(&here.join("hallrelay-cloud"))
        .write_keys_file(&here.join("platform-keys.json"));
    std::fs::write(
        here.join("hall.toml"),
        format!(
            "cloud = \"http://{listen}\"\ncloud_token_file = \"box.cred\"\nplatform_keys_file = \"platform-keys.json\"\n"
        ),
    )
    .unwrap();
    let hall = BoxProcess::start_at(
        here,
        &[
            "serve",
            "--config",
            "hall.toml",
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
        ],
        &here.join("hallrelay-data"),
    );

    // A candidate with a token from `hallrelay token` saves to the cloud.
    let (code, out, err) = run_in(
        here,
        &[
            "token",
            "--platform-key-file",
            "hallrelay-cloud/platform.key",
            "--exam",
            "math-2026",
            "--candidate",
            "c042",
            "--out",
            "c042.token",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "--out prints no token: {out}");
    let (code, output) = Candidate::spawn(
        None,
        &[
            "candidate",
            "--cloud",
            &format!("http://{listen}"),
            "--exam",
            "math-2026",
            "--candidate",
            "c042",
            "--token-file",
            here.join("c042.token").to_str().unwrap(),
            "--pin",
            &hall.pin,
            "--no-mdns",
            "--interval",
            "10ms",
            "--count",
            "2",
            "--journal",
            here.join("journal").to_str().unwrap(),
        ],
    )
    .finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("save 2 saved to the cloud"), "{output}");

    // A save taken by the box reaches the cloud: the box's credential is accepted there.
    let client = hall.client(Some(hall.candidate_token("math-2026", "c043")));
    assert_eq!(
        put(&client, "math-2026", "c043", 1, b"{\"q1\": \"42\"}")
            .await
            .status,
        StatusCode::CREATED
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = hall.status().await;
        if status["delivered"].as_u64() == Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `token --out FILE` writes the token with mode 0600, which `candidate --token-file` accepts
/// (a shell's `> FILE` makes 0644, which it refuses). An existing token file is replaced; any
/// other file is left alone.
#[test]
fn token_out_writes_a_private_file_that_candidate_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path();
    let hall = BoxProcess::start(&here.join("hallrelay-data"), &[]);
    let mint = |out: &str| {
        run_in(
            here,
            &["token", "--exam", "math", "--candidate", "c1", "--out", out],
        )
    };
    let (code, out, err) = mint("c1.token");
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let token_file = here.join("c1.token");
    assert_eq!(mode(&token_file), 0o600);
    // A loose token file from `> c1.token` is replaced by a private one.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = mint("c1.token");
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode(&token_file), 0o600);
    // Anything that is not a token is kept: here, the venue key itself.
    let key_file = here.join("hallrelay-data/venue.key");
    let key = std::fs::read(&key_file).unwrap();
    let (code, _, err) = mint("hallrelay-data/venue.key");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("hallrelay-data/venue.key") && err.contains("does not hold a hallrelay token"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&key_file).unwrap(),
        key,
        "the key is unchanged"
    );

    // The candidate takes the file; the cloud is gone, the box given by address takes the
    // save, and says so once, naming the box by its URL once.
    let (code, output) = one_save_to_the_box(&hall, "c1", &token_file, &here.join("journal"));
    assert_eq!(code, Some(0), "{output}");
    let url = hall.url();
    assert!(
        output.contains(&format!(
            "saving to the hall relay at {url}: its key matches"
        )),
        "{output}"
    );
    assert!(!output.contains(&format!("{url} at {url}")), "{output}");
}

/// Only `serve` and `cloud` create venue keys. `token` with a mistyped key file, or run in the
/// wrong folder, fails with the path it looked for and what to do, and creates nothing; so
/// does `loadtest`.
#[test]
fn token_never_creates_a_venue_key() {
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path();
    let cases: [(&[&str], &str); 4] = [
        (&[], "hallrelay-data/venue.key"),
        (&["--venue-key-file", "venue.kye"], "venue.kye"),
        (&["--data-dir", "elsewhere"], "elsewhere/venue.key"),
        (&["--platform-key-file", "platform.kye"], "platform.kye"),
    ];
    for (extra, path) in cases {
        for kind in [
            &["--exam", "math", "--candidate", "c1"][..],
            &["--admin", "--subject", "invigilator"][..],
        ] {
            let mut args = vec!["token"];
            args.extend_from_slice(kind);
            args.extend_from_slice(extra);
            let (code, out, err) = run_in(here, &args);
            assert_eq!(code, 64, "{args:?}: {err}");
            assert!(out.is_empty(), "{args:?} printed a token: {out}");
            assert!(
                err.contains(&format!("no token key at {path} (in {})", here.display()))
                    && err.contains("platform.key")
                    && err.contains("--platform-key-file"),
                "{args:?}: {err}"
            );
        }
    }
    let (code, _, err) = run_in(
        here,
        &[
            "loadtest",
            "--box",
            "https://127.0.0.1:9",
            "--pin",
            "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "--venue-key-file",
            "venue.kye",
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no token key at venue.kye"), "{err}");
    let left: Vec<_> = std::fs::read_dir(here).unwrap().collect();
    assert!(left.is_empty(), "created {left:?}");
}

/// A bad command line exits 64 (EX_USAGE), as the README says, not clap's 2; asking for help
/// or the version is no error.
#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--no-such-flag"][..],
        &["no-such-command"][..],
        &["serve", "--listen", "not-an-address"][..],
        &["candidate", "--count", "x"][..],
        &["token", "--exam", "math"][..],
    ] {
        let (code, _, err) = run_in(dir.path(), args);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains("--help"), "{args:?}: {err}");
    }
    for args in [
        &["--help"][..],
        &["--version"][..],
        &["token", "--help"][..],
        &["help", "serve"][..],
    ] {
        let (code, out, err) = run_in(dir.path(), args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!out.is_empty(), "{args:?}");
    }
}

/// A pin that cannot be one is refused as a usage error that says what is wrong with it,
/// before any connection: the usual slip is a copy that lost the final `=`, which used to
/// read as "the box presented key X, but this client trusts only X".
#[test]
fn a_malformed_pin_is_a_usage_error_that_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let whole = "sha256//7fByOR2Rz0uT8avVGiHQIsjvvrsczkp6PzWVgOmonkI=";
    for (pin, says) in [
        (whole.trim_end_matches('='), "lacks the final `=`"),
        (
            "7fByOR2Rz0uT8avVGiHQIsjvvrsczkp6PzWVgOmonkI=",
            "starts with sha256//",
        ),
        ("sha256//AAAA", "44 base64 characters"),
    ] {
        for args in [
            &[
                "status",
                "--box",
                "https://127.0.0.1:9",
                "--token-file",
                "t",
                "--pin",
                pin,
            ][..],
            &[
                "candidate",
                "--cloud",
                "http://127.0.0.1:9",
                "--exam",
                "e",
                "--candidate",
                "c",
            ],
        ] {
            let mut args = args.to_vec();
            if args[0] == "candidate" {
                args.extend(["--token-file", "t", "--cloud-pin", pin]);
            }
            let (code, _, err) = run_in(dir.path(), &args);
            assert_eq!(code, 64, "{args:?}: {err}");
            assert!(err.contains(says), "{args:?}: {err}");
        }
    }
    common::write_secret(&dir.path().join("t"), "a-credential");
    let config = dir.path().join("hall.toml");
    std::fs::write(
        &config,
        format!(
            "cloud = \"https://cloud.example\"\ncloud_token_file = \"t\"\ncloud_pin = \"{}\"\n",
            whole.trim_end_matches('=')
        ),
    )
    .unwrap();
    let (code, _, err) = run_in(
        dir.path(),
        &["serve", "--no-mdns", "--config", config.to_str().unwrap()],
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("cloud_pin") && err.contains("lacks the final `=`"),
        "{err}"
    );
}

/// `token` with no arguments, and its help, show both forms: a candidate token (--exam,
/// --candidate) and an admin token (--admin, --subject). Before, the error named only --admin.
#[test]
fn token_without_arguments_shows_both_forms() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_in(dir.path(), &["token"]);
    assert_eq!(code, 64, "{err}");
    let (_, help, _) = run_in(dir.path(), &["token", "--help"]);
    for text in [&err, &help] {
        assert!(
            text.contains("token --platform-key-file F --exam E --candidate C")
                && text.contains("token --platform-key-file F --admin [--venue V]"),
            "{text}"
        );
    }
    assert!(err.contains("--exam") && err.contains("--admin"), "{err}");
}

/// A candidate whose saves a box refuses (a token of another venue: 401) is told once per
/// save, not once per attempt; it exits 75 (the save is only in its journal).
/// Runs `candidate` for one save of `candidate` in exam `math`, with the cloud gone and
/// `hall` given by address, so the save goes to the box at once; its exit code and output.
fn one_save_to_the_box(
    hall: &BoxProcess,
    candidate: &str,
    token_file: &Path,
    journal: &Path,
) -> (Option<i32>, String) {
    Candidate::spawn(
        None,
        &[
            "candidate",
            // Sent as they are: with no cloud this laptop has no exam keys, and the box must take
            // the save.
            "--plaintext",
            "--cloud",
            "http://127.0.0.1:9",
            "--exam",
            "math",
            "--candidate",
            candidate,
            "--token-file",
            token_file.to_str().unwrap(),
            "--pin",
            &hall.pin,
            "--box",
            &hall.url(),
            "--no-mdns",
            "--failover-after",
            "0s",
            "--count",
            "1",
            "--journal",
            journal.to_str().unwrap(),
        ],
    )
    .finish(Duration::from_secs(60))
}

#[test]
fn a_refused_save_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let hall = BoxProcess::start(&dir.path().join("box"), &[]);
    let foreign = token::mint(
        &TokenKey::generate(),
        &Claims::candidate(DEFAULT_VENUE, "math", "c6", common::now(), 3600),
    );
    let token_file = write_secret(&dir.path().join("c6.token"), &foreign);
    let (code, output) = one_save_to_the_box(
        &hall,
        "c6",
        Path::new(&token_file),
        &dir.path().join("journal"),
    );
    // A fresh journal asks the box where the candidate's saves stand before numbering any:
    // the box refuses the token, the candidate is told once, and the save waits unsent.
    assert_eq!(code, Some(75), "{output}");
    assert_eq!(
        output.matches("refuses this candidate's token").count(),
        1,
        "{output}"
    );
}

/// The box's start log names the store file it uses, not the temporary name it was built
/// under.
#[test]
fn the_start_log_names_the_real_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let hall = BoxProcess::start(dir.path(), &[]);
    let log = hall.log_so_far();
    let created = log
        .lines()
        .find(|l| l.contains("created a new store"))
        .unwrap_or_else(|| panic!("{log}"));
    let store = dir.path().join(hallrelay_store::STORE_FILE);
    assert!(
        created.contains(&format!("path={}", store.display())) && !created.contains("redb-new"),
        "{created}"
    );
}

/// The README's recipes are the ones the tests above run: the curl walkthrough writes its
/// payload before sending it, the one-machine box trusts the cloud's published platform keys
/// and the candidate's token is the platform's, and a token
/// goes to a file through `--out` (never `> FILE`, which `--token-file` refuses).
#[test]
fn the_readme_recipes_are_the_tested_ones() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = |title: &str| {
        let start = readme.find(title).unwrap_or_else(|| panic!("no {title:?}"));
        let rest = &readme[start + title.len()..];
        rest[..rest.find("\n##").unwrap_or(rest.len())].to_owned()
    };
    let curl = section("## Saving an autosave with curl");
    let written = curl
        .find("> answers.json")
        .expect("answers.json is written");
    let sent = curl.find("@answers.json").expect("answers.json is sent");
    assert!(written < sent, "{curl}");
    let one_machine = section("### The box and the cloud on one machine");
    for step in [
        "/v1/platform/keys > platform-keys.json",
        "platform_keys_file = \"platform-keys.json\"",
        "token --platform-key-file hallrelay-cloud/platform.key \\\n    --exam math-2026 --candidate c042 --out c042.token",
    ] {
        assert!(one_machine.contains(step), "{step}: {one_machine}");
    }
    for line in readme.lines().filter(|l| l.contains(" token ")) {
        assert!(!line.contains("token >") && !line.contains(") >"), "{line}");
    }
}
