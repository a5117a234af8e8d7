//! The emergency export: `hallrelay export` pulls a signed bundle from a running box, `verify`
//! checks it offline and refuses it after any single flipped byte, `import` pushes it to the
//! reference cloud, and importing it twice doubles nothing. Real binary, TLS, redb.

use hallrelay_testkit as common;

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use common::{BoxProcess, autosave_path, binary, free_port, list, put, write_secret};
use hallrelay_client::Connection;
use hallrelay_protocol::keys::Secret;
use hallrelay_protocol::token::DEFAULT_VENUE;
use http::{HeaderMap, Method, StatusCode};

const CREDENTIAL: &str = "box-credential-for-the-bundle-test";

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).args(args).output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify(path: &Path) -> (i32, String, String) {
    run(&["verify", path.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_verify_import_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let hall = BoxProcess::start(&dir.path().join("box"), &[]);
    let admin = write_secret(&dir.path().join("admin.token"), &hall.admin_token());

    // Three candidates, a final among them, payloads of a few sizes (one over a page's
    // worth of small ones would need more; 40 saves span one page, which is the common case).
    let mut expected = 0;
    for c in ["c1", "c2", "c3"] {
        let client = hall.client(Some(hall.candidate_token("math", c)));
        for seq in 1..=12u64 {
            let body = common::payload(c.len() + seq as usize, seq, 1000 * seq as usize);
            assert_eq!(
                put(&client, "math", c, seq, &body).await.status,
                StatusCode::CREATED
            );
            expected += 1;
        }
        let final_path = format!("{}?final=true", autosave_path("math", c, 13));
        let reply = client
            .send(
                Method::PUT,
                &final_path,
                HeaderMap::new(),
                Bytes::from_static(b"final answers"),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        expected += 1;
    }

    // status, for a person.
    let (code, out, err) = run(&[
        "status",
        "--box",
        &hall.url(),
        "--token-file",
        &admin,
        "--pin",
        &hall.pin,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("stored   {expected} autosaves of 3 candidates")),
        "{out}"
    );
    assert!(out.contains("no cloud configured"), "{out}");

    // export needs the pin and an admin token.
    let bundle = dir.path().join("hall.bundle");
    let (code, _, _) = run(&[
        "export",
        "--box",
        &hall.url(),
        "--token-file",
        &admin,
        "--pin",
        "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "a wrong pin is refused");
    assert!(!bundle.exists());
    let candidate = write_secret(
        &dir.path().join("cand.token"),
        &hall.candidate_token("math", "c1"),
    );
    let (code, _, err) = run(&[
        "export",
        "--box",
        &hall.url(),
        "--token-file",
        &candidate,
        "--pin",
        &hall.pin,
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("403"), "{err}");
    // A partial file another run left readable to all.
    let stale = bundle.with_extension("partial");
    std::fs::write(&stale, b"stale").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    let (code, out, err) = run(&[
        "export",
        "--box",
        &hall.url(),
        "--token-file",
        &admin,
        "--pin",
        &hall.pin,
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("exported {expected} autosaves")),
        "{out}"
    );
    // A whole hall's answers: readable by their owner only, even where an earlier, looser
    // partial file was left behind.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the bundle's mode is {mode:o}");
    }
    let (code, out, err) = verify(&bundle);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("intact: {expected} autosaves")),
        "{out}"
    );
    assert!(out.contains(&hall.pin), "{out}");

    // Any flipped byte is refused: in the magic, a header, a payload, the manifest, the
    // certificate, the signature, the end. Every 97th byte, and the last few.
    let original = std::fs::read(&bundle).unwrap();
    let altered = dir.path().join("altered.bundle");
    let mut positions: Vec<usize> = (0..original.len()).step_by(97).collect();
    positions.extend(original.len() - 40..original.len());
    for &at in &positions {
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        std::fs::write(&altered, &bytes).unwrap();
        let (code, _, err) = verify(&altered);
        assert_eq!(
            code,
            65,
            "a flipped byte at {at} of {} was accepted: {:?}",
            original.len(),
            String::from_utf8_lossy(
                &original[at.saturating_sub(80)..(at + 20).min(original.len())]
            )
        );
        assert!(err.contains("refused"), "{err}");
    }
    // In process, every single byte of the tail (the last 16 KiB: the manifest, the
    // certificate, the signature, and the last autosaves' headers).
    let tail_start = original.len().saturating_sub(16 * 1024);
    for at in tail_start..original.len() {
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        assert!(
            hallrelay_server::bundle::verify(std::io::Cursor::new(bytes), |_| {}).is_err(),
            "a flipped byte at {at} was accepted"
        );
    }
    // A truncated bundle and one with bytes appended are refused too.
    std::fs::write(&altered, &original[..original.len() - 1]).unwrap();
    assert_eq!(verify(&altered).0, 65);
    std::fs::write(&altered, [original.as_slice(), b"x"].concat()).unwrap();
    assert_eq!(verify(&altered).0, 65);
    eprintln!(
        "{} single-byte flips of a {}-byte bundle: all refused",
        positions.len(),
        original.len()
    );

    // Import to the reference cloud, twice.
    write_secret(&dir.path().join("cloud.token"), CREDENTIAL);
    write_secret(&dir.path().join("appliances"), CREDENTIAL);
    let port = free_port();
    let cloud = BoxProcess::start_cloud(
        &dir.path().join("cloud"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--appliance-token-file",
            dir.path().join("appliances").to_str().unwrap(),
        ],
    );
    let cloud_url = format!("http://127.0.0.1:{port}");
    let import = || {
        run(&[
            "import",
            "--cloud",
            &cloud_url,
            "--cloud-token-file",
            dir.path().join("cloud.token").to_str().unwrap(),
            bundle.to_str().unwrap(),
        ])
    };
    let (code, out, err) = import();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("imported: {expected} new, 0 already in the cloud, 0 conflicts")
    );
    let (code, out, err) = import();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("imported: 0 new, {expected} already in the cloud, 0 conflicts")
    );

    // The cloud holds each autosave once, byte for byte, with the box's receipt.
    let cloud_admin = cloud.platform().admin_token(DEFAULT_VENUE);
    let cloud_client =
        Connection::with_roots(&cloud_url, None, Some(Secret::new(cloud_admin))).unwrap();
    let box_admin = hall.client(Some(hall.admin_token()));
    let mut total = 0;
    for c in ["c1", "c2", "c3"] {
        let in_cloud = list(&cloud_client, "math", c).await;
        let on_box = list(&box_admin, "math", c).await;
        assert_eq!(in_cloud.len(), 13, "{c}: nothing doubled, nothing missing");
        for (a, b) in in_cloud.iter().zip(&on_box) {
            assert_eq!(a["blake3"], b["blake3"]);
            assert_eq!(a["final"], b["final"]);
        }
        total += in_cloud.len();
        let latest = cloud_client
            .get(&format!("/v1/exams/math/candidates/{c}/autosaves/13"))
            .await
            .unwrap();
        assert_eq!(latest.body.as_ref(), b"final answers");
        assert!(
            latest.header("hallrelay-receipt").is_some(),
            "the box's receipt came along"
        );
    }
    assert_eq!(total, expected);
}
