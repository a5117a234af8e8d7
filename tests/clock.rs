//! Clock jumps: the box's wall clock jumps back a day and then forward two while candidates
//! save (libfaketime, with the monotonic clock left alone). Wall time is for display and
//! evidence only; ordering uses arrival numbers and hashes. So receipt chains still verify,
//! nothing is lost, and replay still sends finals first and everything exactly once.

use hallrelay_testkit as common;

use std::time::{Duration, Instant};

use common::*;
use hallrelay_protocol::receipt::{Receipt, verify_chain};
use hallrelay_protocol::signing::VerifyingKey;
use hallrelay_protocol::token::DEFAULT_VENUE;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Debian's libfaketime for this machine's architecture (x86_64-linux-gnu, aarch64-linux-gnu).
fn faketime() -> String {
    format!(
        "/usr/lib/{}-linux-gnu/faketime/libfaketimeMT.so.1",
        std::env::consts::ARCH
    )
}
const EXAM: &str = "clock";

#[tokio::test(flavor = "multi_thread")]
async fn wall_clock_jumps_break_neither_chains_nor_replay_order() {
    let faketime = faketime();
    if !std::path::Path::new(&faketime).exists() {
        skip(
            "the clock-jump test",
            &format!("{faketime} is missing (Debian package faketime)"),
            "HALLRELAY_REQUIRE_PRIVILEGED",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let port = free_port();
    write_secret(&dir.path().join("cloud.token"), "clock-credential");
    let config = config_file(
        dir.path(),
        &format!(
            "cloud = \"http://127.0.0.1:{port}\"\ncloud_token_file = \"{}\"\nreplay_concurrency = 1\n",
            dir.path().join("cloud.token").display()
        ),
    );
    let data = dir.path().join("box");
    let b = BoxProcess::start_env(
        &data,
        &["--config", config.to_str().unwrap()],
        &[
            ("LD_PRELOAD", faketime.as_str()),
            ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    // Tokens that outlive the forward jump: the box checks expiry against its own clock.
    let token = |candidate: &str| {
        let claims = hallrelay_protocol::token::Claims::candidate(
            DEFAULT_VENUE,
            EXAM,
            candidate,
            common::now(),
            3600 + 3 * 86_400,
        );
        hallrelay_protocol::token::mint(&b.local_key(), &claims.on_box(&b.pin))
    };
    let c1 = b.client(Some(token("c1")));
    let c2 = b.client(Some(token("c2")));
    let mut chains: [Vec<Receipt>; 2] = [Vec::new(), Vec::new()];
    let mut save = async |who: usize, seq: u64, is_final: bool| {
        let (client, name) = if who == 0 { (&c1, "c1") } else { (&c2, "c2") };
        let mut path = autosave_path(EXAM, name, seq);
        if is_final {
            path.push_str("?final=true");
        }
        let reply = client
            .put(&path, http::HeaderMap::new(), payload(who, seq, 700).into())
            .await
            .unwrap();
        assert_eq!(reply.status, http::StatusCode::CREATED);
        chains[who].push(reply.json::<Receipt>().unwrap());
    };
    for seq in 1..=3 {
        save(0, seq, false).await;
    }
    save(1, 1, false).await;
    save(1, 2, false).await;
    std::fs::write(&offset, "-1d\n").unwrap();
    save(0, 4, false).await;
    save(0, 5, false).await;
    save(1, 3, true).await;
    std::fs::write(&offset, "+2d\n").unwrap();
    save(0, 6, false).await;
    save(1, 4, false).await;

    // The jumps happened: c1's saves 4 and 5 were received "before" 3.
    let at = |r: &Receipt| hallrelay_protocol::timefmt::parse_rfc3339(&r.received_at).unwrap();
    assert!(
        at(&chains[0][3]) < at(&chains[0][2]),
        "the clock did not jump back"
    );
    assert!(at(&chains[0][5]) > at(&chains[0][4]) + Duration::from_secs(86_400));
    let cert = CertificateDer::from_pem_file(data.join("identity.crt")).unwrap();
    let key = VerifyingKey::from_certificate(&cert).unwrap();
    for chain in &chains {
        verify_chain(chain, &key).expect("the chain verifies across clock jumps");
    }

    // Replay, one at a time, to a cloud on the real clock: finals first, everything once.
    let cloud = BoxProcess::start_cloud(
        &dir.path().join("cloud"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--appliance-token-file",
            dir.path().join("cloud.token").to_str().unwrap(),
        ],
    );
    let admin_claims = hallrelay_protocol::token::Claims::admin(
        DEFAULT_VENUE,
        "clock",
        common::now(),
        3600 + 3 * 86_400,
    );
    let admin = b.client(Some(hallrelay_protocol::token::mint(
        &b.local_key(),
        &admin_claims.on_box(&b.pin),
    )));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: serde_json::Value = admin.get("/v1/status").await.unwrap().json().unwrap();
        if status["pending"]["count"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "replay did not drain: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cloud_client = hallrelay_client::Connection::with_roots(
        &format!("http://{}", cloud.addr),
        None,
        Some(hallrelay_protocol::keys::Secret::new(
            cloud.platform().admin_token(DEFAULT_VENUE),
        )),
    )
    .unwrap();
    let mut received = Vec::new();
    for (who, name, count) in [(0, "c1", 6), (1, "c2", 4)] {
        let rows = list(&cloud_client, EXAM, name).await;
        let seqs: Vec<u64> = rows.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=count).collect::<Vec<u64>>(), "{name}");
        for (row, receipt) in rows.iter().zip(&chains[who]) {
            assert_eq!(row["blake3"], receipt.blake3.as_str());
            let at =
                hallrelay_protocol::timefmt::parse_rfc3339(row["received_at"].as_str().unwrap());
            received.push((at.unwrap(), name, row["seq"].as_u64().unwrap()));
        }
    }
    received.sort();
    assert_eq!(
        (received[0].1, received[0].2),
        ("c2", 3),
        "the final was not replayed first: {received:?}"
    );
}
