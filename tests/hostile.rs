//! Hostile clients on the hall network, against the real binary over real TLS: huge bodies
//! and headers, a crowd of idle and stalled connections, a flood from one address, stalled
//! bodies, old TLS and plaintext, traversal-like ids, secret files others can read, and a
//! scan of the logs for secrets. After each attack the box must still serve everyone else.

use hallrelay_testkit as common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, StatusCode};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

/// A TLS connection to the box, trusting it by pin, speaking HTTP/1.1, from `local` if given
/// (any 127.0.0.0/8 address works on loopback, so tests can play several clients).
async fn tls(b: &BoxProcess, local: Option<IpAddr>) -> TlsStream<TcpStream> {
    let mut config =
        hallrelay_client::tls::pinned_client_config(&b.url(), vec![b.pin.clone()]).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let addr: SocketAddr = b.addr.parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let tcp = socket.connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads an answer's head (or whatever arrives before the server closes) within `limit`:
/// `None` if the connection closed or failed without a byte.
async fn answer_head<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned())
}

/// The box still answers a well-behaved client, quickly.
async fn still_serves(b: &BoxProcess) {
    let started = Instant::now();
    let reply = b
        .client(None)
        .with_timeout(Duration::from_secs(3))
        .get("/v1/health")
        .await
        .expect("the box still serves");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A client at another address (`127.x.y.z`) is served at once.
async fn serves_from(b: &BoxProcess, ip: &str) {
    let mut s = tls(b, Some(ip.parse().unwrap())).await;
    s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: box\r\n\r\n")
        .await
        .unwrap();
    s.flush().await.unwrap();
    let head = answer_head(&mut s, Duration::from_secs(3)).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

fn put_head(b: &BoxProcess, extra: &str) -> String {
    format!(
        "PUT /v1/exams/math/candidates/c1/autosaves/1 HTTP/1.1\r\nhost: box\r\nauthorization: Bearer {}\r\n{extra}\r\n",
        b.candidate_token("math", "c1")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_body_is_refused_before_it_is_read_and_a_chunked_one_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);

    // Announced: 413 before the body is read.
    let mut s = tls(&b, None).await;
    s.write_all(put_head(&b, "content-length: 1073741824\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(&[0u8; 64 * 1024]).await.unwrap();
    s.flush().await.unwrap();
    let head = answer_head(&mut s, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // Chunked, never announced: cut off once it passes the limit (16 MiB by default).
    let mut s = tls(&b, None).await;
    s.write_all(put_head(&b, "transfer-encoding: chunked\r\n").as_bytes())
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(s);
    let sender = tokio::spawn(async move {
        let chunk = [b'x'; 64 * 1024];
        let mut sent = 0u64;
        while sent < 1 << 30 {
            let head = format!("{:x}\r\n", chunk.len());
            if writer.write_all(head.as_bytes()).await.is_err()
                || writer.write_all(&chunk).await.is_err()
                || writer.write_all(b"\r\n").await.is_err()
            {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let head = answer_head(&mut reader, Duration::from_secs(20))
        .await
        .expect("an answer");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    drop(reader);
    let sent = tokio::time::timeout(Duration::from_secs(20), sender)
        .await
        .expect("the box stopped reading")
        .unwrap();
    assert!(
        sent < 256 << 20,
        "the box read {sent} bytes of a refused body"
    );

    still_serves(&b).await;
    assert_eq!(b.status().await["stored"]["count"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_megabytes_of_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let mut s = tls(&b, None).await;
    let (mut reader, mut writer) = tokio::io::split(&mut s);
    let sender = async {
        let _ = writer
            .write_all(b"GET /v1/health HTTP/1.1\r\nhost: box\r\n")
            .await;
        let line = format!("x-padding: {}\r\n", "a".repeat(1000));
        for _ in 0..2000 {
            if writer.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = writer.write_all(b"\r\n").await;
        let _ = writer.flush().await;
    };
    let (_, head) = tokio::join!(sender, answer_head(&mut reader, Duration::from_secs(10)));
    // Either a 431 or a closed connection; never an answer to the request.
    if let Some(head) = head {
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    }
    still_serves(&b).await;
}

/// The default `max_header_bytes` from both sides: a 7 KiB head is served, a 9 KiB one is
/// answered 431.
#[tokio::test(flavor = "multi_thread")]
async fn request_heads_are_held_to_eight_kilobytes_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    for (padding, expected) in [(7 * 1024, "HTTP/1.1 200"), (9 * 1024, "HTTP/1.1 431")] {
        let mut s = tls(&b, None).await;
        let head = format!(
            "GET /v1/health HTTP/1.1\r\nhost: box\r\nx-padding: {}\r\n\r\n",
            "a".repeat(padding)
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        let answer = answer_head(&mut s, Duration::from_secs(10)).await;
        assert!(
            answer.as_deref().is_some_and(|a| a.starts_with(expected)),
            "a head with {padding} bytes of padding: {answer:?}"
        );
    }
}

/// 1,000 idle TCP connections and 50 requests stalled half-way through their headers, from
/// 50 addresses: a real client is still served within 3 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_crowded_box_still_serves() {
    hallrelay_server::rlimit::raise_open_files(4096);
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let addr: SocketAddr = b.addr.parse().unwrap();
    let mut idle = Vec::new();
    for i in 0..1000u32 {
        let socket = TcpSocket::new_v4().unwrap();
        let from = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 1, (i % 50) as u8 + 1));
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        idle.push(socket.connect(addr).await.unwrap());
    }
    let mut stalled = Vec::new();
    for i in 0..50u8 {
        let mut s = tls(
            &b,
            Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 2, i + 1))),
        )
        .await;
        s.write_all(b"PUT /v1/exams/math/candidates/c1/autosaves/1 HTTP/1.1\r\nhost: box\r\n")
            .await
            .unwrap();
        s.flush().await.unwrap();
        stalled.push(s);
    }
    let started = Instant::now();
    let c = b
        .client(Some(b.candidate_token("math", "c1")))
        .with_timeout(Duration::from_secs(3));
    let reply = put(&c, "math", "c1", 1, b"still here").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    still_serves(&b).await;
    let took = started.elapsed();
    eprintln!("crowded box: a PUT and a health check answered in {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    drop((idle, stalled));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_address_gets_429_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "client_rate_burst = 5\n");
    let b = BoxProcess::start(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--client-rate-limit",
            "2",
        ],
    );
    let flooder = b.client(None);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    let started = Instant::now();
    for _ in 0..20 {
        let reply = flooder.get("/v1/health").await.unwrap();
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = reply.header("retry-after").map(str::to_owned);
            let v: serde_json::Value = reply.json().unwrap();
            assert_eq!(v["error"], "rate_limited");
        }
        statuses.push(reply.status.as_u16());
    }
    // The burst, plus what 2 per second refilled while the flood ran.
    let refilled = (started.elapsed().as_secs_f64() * 2.0).ceil() as usize;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((5..=5 + refilled).contains(&ok), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 20 - ok);
    let wait: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");

    // Another address is not affected.
    serves_from(&b, "127.0.0.9").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_are_closed_and_the_box_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "max_connections = 16\n");
    let b = BoxProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(TcpStream::connect(&b.addr).await.unwrap());
    }
    // Give the box a moment to accept them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(&b.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
        .await
        .expect("the extra connection is closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    still_serves(&b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "body_read_timeout = \"1s\"\n");
    let b = BoxProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let mut s = tls(&b, None).await;
    s.write_all(put_head(&b, "content-length: 100\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(b"only ten b").await.unwrap();
    // tokio-rustls may hold written records until a flush; unflushed, the box would only
    // ever see a stalled head.
    s.flush().await.unwrap();
    let started = Instant::now();
    let head = answer_head(&mut s, Duration::from_secs(10))
        .await
        .expect("an answer");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(started.elapsed() < Duration::from_secs(5));
    still_serves(&b).await;
    assert_eq!(b.status().await["stored"]["count"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn traversal_like_ids_get_400() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let c = b.client(Some(b.candidate_token("math", "c1")));
    for path in [
        "/v1/exams/../candidates/c1/autosaves/1".to_string(),
        "/v1/exams/math/candidates/./autosaves/1".to_string(),
        "/v1/exams/math/candidates/%2e%2e/autosaves/1".to_string(),
        "/v1/exams/math/candidates/..%2fc2/autosaves/1".to_string(),
        // Far over the id limit (64), under the head limit (8 KiB, past which it is 431).
        format!(
            "/v1/exams/math/candidates/{}/autosaves/1",
            "c".repeat(1_000)
        ),
    ] {
        let reply = c
            .put(&path, HeaderMap::new(), Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{}",
            &path[..60.min(path.len())]
        );
    }
    assert_eq!(b.status().await["stored"]["count"], 0);
}

/// Only TLS 1.2 and 1.3: a TLS 1.1 client (OpenSSL, allowed to offer it) gets no session, and
/// plaintext HTTP on the TLS port gets no HTTP answer.
#[tokio::test(flavor = "multi_thread")]
async fn old_tls_and_plaintext_are_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &[]);
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &b.addr, "-tls1_1"])
        .args(["-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl (Debian's openssl package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "a TLS 1.1 session was made:\n{text}");
    // The refusal came from the box, as an alert to OpenSSL's TLS 1.1 hello.
    assert!(
        text.contains("alert protocol version") || text.contains("alert handshake failure"),
        "OpenSSL did not get as far as offering TLS 1.1:\n{text}"
    );
    // The same command with TLS 1.2 does get a session: the refusal above is about 1.1.
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &b.addr,
            "-tls1_2",
            "-servername",
            "localhost",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("TLSv1.2"),
        "no TLS 1.2 session either:\n{text}"
    );

    let mut plain = TcpStream::connect(&b.addr).await.unwrap();
    plain
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: box\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got)).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/"),
        "plaintext was answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    still_serves(&b).await;
}

/// Every secret file is checked at start: one that others may read stops the box with a clear
/// message and exit code 64, and nothing is created.
#[test]
fn secret_files_others_can_read_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let loosen = |path: &std::path::Path| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    let refused = |dir: &std::path::Path, extra: &[&str], file: &std::path::Path| {
        let out = std::process::Command::new(binary())
            .args([
                "serve",
                "--no-mdns",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir)
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(
            stderr.contains(&file.display().to_string()) && stderr.contains("chmod 600"),
            "{stderr}"
        );
    };

    // A venue key others can read, in a fresh data dir: refused, and nothing is created.
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::write(fresh.join("venue.key"), format!("{}\n", "ab".repeat(32))).unwrap();
    loosen(&fresh.join("venue.key"));
    refused(&fresh, &[], &fresh.join("venue.key"));
    assert_eq!(
        std::fs::read_dir(&fresh).unwrap().count(),
        1,
        "only the key is there"
    );

    // A box run once, so its venue key and identity key exist; then each is loosened.
    let data = dir.path().join("data");
    let mut b = BoxProcess::start(&data, &[]);
    b.terminate();
    for name in ["venue.key", "identity.key"] {
        let file = data.join(name);
        loosen(&file);
        refused(&data, &[], &file);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // The cloud credential named in the configuration.
    let token = dir.path().join("cloud.token");
    std::fs::write(&token, "credential\n").unwrap();
    loosen(&token);
    let config = config_file(
        dir.path(),
        &format!(
            "cloud = \"http://127.0.0.1:9\"\ncloud_token_file = \"{}\"\n",
            token.display()
        ),
    );
    refused(&data, &["--config", config.to_str().unwrap()], &token);

    // The reference cloud's list of box credentials.
    let out = std::process::Command::new(binary())
        .args(["cloud", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("cloud"))
        .arg("--appliance-token-file")
        .arg(&token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

/// With every log level on, a run with valid, forged and admin tokens, a replay credential
/// and a key on disk leaves none of them in the log.
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let credential = "cloud-credential-5f1e9c2a7b";
    let token_file = dir.path().join("cloud.token");
    write_secret(&token_file, credential);
    let config = config_file(
        dir.path(),
        &format!(
            "cloud = \"http://127.0.0.1:{}\"\ncloud_token_file = \"{}\"\n",
            free_port(),
            token_file.display()
        ),
    );
    let data = dir.path().join("data");
    let b = BoxProcess::start_logged(&data, &["--config", config.to_str().unwrap()], "trace");
    let token = b.candidate_token("math", "c1");
    let admin = b.admin_token();
    let mut forged = token.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    let c = b.client(Some(token.clone()));
    assert_eq!(
        put(&c, "math", "c1", 1, b"essay").await.status,
        StatusCode::CREATED
    );
    let f = b.client(Some(forged.clone()));
    assert_eq!(
        put(&f, "math", "c1", 2, b"essay").await.status,
        StatusCode::UNAUTHORIZED
    );
    let a = b.client(Some(admin.clone()));
    assert_eq!(a.get("/v1/status").await.unwrap().status, StatusCode::OK);
    // Replay tries the (absent) cloud with the credential.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let log = b.log_so_far();
    assert!(log.lines().count() > 20, "trace logging is on:\n{log}");
    let venue_key = std::fs::read_to_string(data.join("venue.key")).unwrap();
    let identity = std::fs::read_to_string(data.join("identity.key")).unwrap();
    let mut secrets = vec![
        ("candidate token", token.clone()),
        ("forged token", forged),
        ("admin token", admin),
        ("token MAC", token.rsplit('.').next().unwrap().to_owned()),
        ("cloud credential", credential.to_owned()),
        ("venue key", venue_key.trim().to_owned()),
    ];
    for line in identity.lines().filter(|l| !l.starts_with("-----")) {
        secrets.push(("identity key", line.to_owned()));
    }
    for (what, secret) in secrets {
        assert!(!log.contains(&secret), "the {what} is in the log");
    }
}

/// One laptop cannot take every connection: past its share, its new connections are closed,
/// and another address still gets in.
#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_take_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start(dir.path(), &["--max-connections-per-client", "8"]);
    let addr: SocketAddr = b.addr.parse().unwrap();
    let from = |ip: &str| {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(ip.parse().unwrap(), 0))
            .unwrap();
        socket.connect(addr)
    };
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(from("127.0.0.5").await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ninth = from("127.0.0.5").await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), ninth.read(&mut buf))
        .await
        .expect("the ninth connection is closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    serves_from(&b, "127.0.0.6").await;
    drop(held);
}

/// The box's peak resident memory so far (VmHWM), in bytes.
fn peak_rss(b: &BoxProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", b.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

/// Kills the box if its resident memory passes `limit`, so that a box without a memory
/// bound fails its test instead of taking the machine down with it.
struct RssGuard(Arc<std::sync::atomic::AtomicBool>);

impl RssGuard {
    fn watch(b: &BoxProcess, limit: u64) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (pid, done) = (b.child.id(), stop.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| {
                                v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
                            })
                    });
                match rss {
                    Some(kib) if kib * 1024 > limit => {
                        eprintln!("the box passed {} MB of RSS: killing it", limit >> 20);
                        signal(pid, "KILL");
                        return;
                    }
                    Some(_) => std::thread::sleep(Duration::from_millis(20)),
                    None => return,
                }
            }
        });
        Self(stop)
    }
}

impl Drop for RssGuard {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A PUT of `size` bytes from `ip` over its own HTTP/1.1 connection; returns the status line
/// and how long the answer took.
async fn put_from(b: &BoxProcess, ip: &str, seq: u64, size: usize) -> (String, Duration) {
    let started = Instant::now();
    let mut s = tls(b, Some(ip.parse().unwrap())).await;
    let head = format!(
        "PUT /v1/exams/math/candidates/c2/autosaves/{seq} HTTP/1.1\r\nhost: box\r\nauthorization: Bearer {}\r\ncontent-length: {size}\r\n\r\n",
        b.candidate_token("math", "c2")
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&payload(2, seq, size)).await.unwrap();
    s.flush().await.unwrap();
    let answer = answer_head(&mut s, Duration::from_secs(10))
        .await
        .unwrap_or_default();
    let status = answer.lines().next().unwrap_or("").to_owned();
    (status, started.elapsed())
}

/// What a flood of large uploads from one address got.
#[derive(Debug, Default)]
struct Flood {
    stored: usize,
    unavailable: usize,
    /// Requests lost with their connection: the box's HTTP/2 server closes a connection whose
    /// client keeps making it reset refused streams (GOAWAY `ENHANCE_YOUR_CALM`, "too many
    /// internal resets"), and the client's writes then meet a closed socket. That is a
    /// refusal too, of a client that ignores `Retry-After`.
    dropped: usize,
    other: Vec<String>,
}

/// `uploads` concurrent PUTs of 16 MB from 127.0.0.1 (one candidate token), each repeated
/// at once whenever it is refused (a hostile client ignores Retry-After) until `stop`.
/// Meanwhile 127.0.0.2 PUTs 16 KiB: returns the flood's tally and how long that took.
async fn flood_of_large_uploads(
    b: &BoxProcess,
    uploads: usize,
    lasting: Duration,
) -> (Flood, Duration) {
    let body = Bytes::from(payload(1, 0, 16_000_000));
    let token = b.candidate_token("math", "c1");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 30 streams per HTTP/2 connection, as a browser would multiplex them.
    let connections: Vec<_> = (0..uploads.div_ceil(30))
        .map(|_| b.client(Some(token.clone())))
        .collect();
    let mut tasks = Vec::new();
    for i in 0..uploads {
        let client = connections[i / 30].clone();
        let (body, stop) = (body.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let path = autosave_path("math", "c1", i as u64 + 1);
            let mut tally = Flood::default();
            loop {
                match client.put(&path, HeaderMap::new(), body.clone()).await {
                    Ok(r) if r.status.is_success() => {
                        tally.stored += 1;
                        break;
                    }
                    Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => {
                        assert!(r.header("retry-after").is_some(), "503 without Retry-After");
                        tally.unavailable += 1;
                    }
                    Ok(r) => tally.other.push(r.status.to_string()),
                    Err(e) => {
                        let text = e.to_string();
                        if text.contains("too_many_internal_resets")
                            || text.contains("broken pipe")
                            || text.contains("connection reset")
                        {
                            tally.dropped += 1;
                        } else {
                            tally.other.push(text);
                        }
                    }
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tally
        }));
    }
    tokio::time::sleep(lasting / 2).await;
    let (status, took) = put_from(b, "127.0.0.2", 1, 16 * 1024).await;
    assert!(
        status.starts_with("HTTP/1.1 201"),
        "the second address got {status:?}"
    );
    tokio::time::sleep(lasting / 2).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut flood = Flood::default();
    for task in tasks {
        let t = task.await.unwrap();
        flood.stored += t.stored;
        flood.unavailable += t.unavailable;
        flood.dropped += t.dropped;
        flood.other.extend(t.other);
    }
    (flood, took)
}

/// Issue 16: bodies held in memory have an overall limit and a per-client share. One address
/// floods the box with 16 MB uploads (30, then 300 at once); the box's peak memory stays
/// within its body budget's share plus a margin, the flood is answered 503 with Retry-After,
/// another address is still acknowledged within 1 s, and every reservation is given back.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_large_uploads_keeps_memory_bounded_and_others_are_served() {
    // Peak RSS allowed above the box's RSS at start: one 16 MB body at a time from the
    // flooding address (its share), the second address's, HTTP/2 and TLS buffers, and what
    // glibc's arenas keep of freed 16 MB buffers (measured here: 36 MB over the start for 30
    // uploads, 61-64 MB for 300; without the per-client share, 179 MB). Before issue 16:
    // 498 MB for 30 uploads, and past 3 GB (killed) for 300.
    const MARGIN: u64 = 128 << 20;
    for uploads in [30, 300] {
        let dir = tempfile::tempdir().unwrap();
        // The budget a 1 GB Pi gets by default (an eighth of its memory), so that the bound
        // does not depend on this machine; the per-client share is the product's default
        // (an eighth of that, but one 16 MiB body). The flood comes from one address:
        // BoxProcess lifts the request rate limit and the connection cap so that all 300
        // uploads are in flight at once and it is the body budget that is tested.
        let config = config_file(dir.path(), "body_budget_bytes = 134217728\n");
        let b = BoxProcess::start(
            &dir.path().join("data"),
            &["--config", config.to_str().unwrap()],
        );
        let before = peak_rss(&b);
        let _guard = RssGuard::watch(&b, 3 << 30);
        let (flood, took) = flood_of_large_uploads(&b, uploads, Duration::from_secs(4)).await;
        let peak = peak_rss(&b);
        eprintln!(
            "{uploads} concurrent 16 MB uploads from one address: peak RSS {} MB (at start {} MB); \
             stored {}, 503 {}, dropped with their connection {}, other {:?}; the second \
             address's 16 KiB PUT took {took:?}",
            peak >> 20,
            before >> 20,
            flood.stored,
            flood.unavailable,
            flood.dropped,
            &flood.other[..flood.other.len().min(5)],
        );
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert!(
            peak < before + MARGIN,
            "peak RSS {} MB, at start {} MB",
            peak >> 20,
            before >> 20
        );
        assert!(flood.stored >= 1 && flood.unavailable >= 1, "{flood:?}");
        assert!(
            flood.other.is_empty(),
            "{:?}",
            &flood.other[..flood.other.len().min(5)]
        );
        // Everything taken was written, and its reservation given back.
        let uploads_now = b.status().await["uploads"].clone();
        assert_eq!(uploads_now["reserved_bytes"], 0, "{uploads_now}");
        assert_eq!(uploads_now["budget_bytes"], 128 << 20);
        assert!(uploads_now["refused"].as_u64().unwrap() >= flood.unavailable as u64);
        assert_eq!(b.status().await["stored"]["count"], flood.stored as u64 + 1);
    }
}

/// The head of a PUT of `len` bytes from `ip` as candidate `c`, and the first `sent` bytes
/// of its body; the connection stays open for the rest.
async fn start_put(
    b: &BoxProcess,
    ip: &str,
    candidate: &str,
    len: usize,
    sent: usize,
) -> TlsStream<TcpStream> {
    let mut s = tls(b, Some(ip.parse().unwrap())).await;
    let head = format!(
        "PUT /v1/exams/math/candidates/{candidate}/autosaves/1 HTTP/1.1\r\nhost: box\r\nauthorization: Bearer {}\r\ncontent-length: {len}\r\n\r\n",
        b.candidate_token("math", candidate)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'x'; sent]).await.unwrap();
    s.flush().await.unwrap();
    s
}

/// Waits until the box reports `bytes` of upload reservations.
async fn wait_for_reserved(b: &BoxProcess, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reserved = b.status().await["uploads"]["reserved_bytes"].as_u64();
        if reserved == Some(bytes) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reserved {reserved:?}, expected {bytes}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 16: past a client's share, or past the whole budget, an upload gets 503 with
/// Retry-After before its body is read (declared or chunked); once a held body has been
/// written its bytes are free again.
#[tokio::test(flavor = "multi_thread")]
async fn past_its_share_or_the_budget_an_upload_gets_503_before_its_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    // Room for two 16 MB bodies; each address may hold one (the default share is the
    // largest body). Product defaults otherwise, but for the rate limit BoxProcess lifts:
    // the status polls below would trip it.
    let config = config_file(dir.path(), "body_budget_bytes = 33554432\n");
    let b = BoxProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    // The largest body: each holder then has its whole share, and the two the whole budget.
    let len = 16 << 20;
    let mut first = start_put(&b, "127.0.0.3", "c3", len, 1024).await;
    let _second = start_put(&b, "127.0.0.4", "c4", len, 1024).await;
    wait_for_reserved(&b, 2 * len as u64).await;

    let refused = |head: Option<String>, what: &str| {
        let head = head.unwrap_or_else(|| panic!("no answer to {what}"));
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 1"),
            "{head}"
        );
        head
    };
    // 127.0.0.3 holds its share: its next upload is refused with only its head sent.
    let mut more = start_put(&b, "127.0.0.3", "c5", 16 * 1024, 0).await;
    let head = refused(
        answer_head(&mut more, Duration::from_secs(3)).await,
        "a second upload",
    );
    eprintln!("past the share: {}", head.lines().next().unwrap());
    // The budget is full: another address is refused too, declared or chunked.
    let mut other = start_put(&b, "127.0.0.5", "c6", 16 * 1024, 0).await;
    refused(
        answer_head(&mut other, Duration::from_secs(3)).await,
        "another address",
    );
    let mut chunked = tls(&b, Some("127.0.0.6".parse().unwrap())).await;
    let head = format!(
        "PUT /v1/exams/math/candidates/c7/autosaves/1 HTTP/1.1\r\nhost: box\r\nauthorization: Bearer {}\r\ntransfer-encoding: chunked\r\n\r\n400\r\n{}\r\n",
        b.candidate_token("math", "c7"),
        "y".repeat(1024)
    );
    chunked.write_all(head.as_bytes()).await.unwrap();
    chunked.flush().await.unwrap();
    refused(
        answer_head(&mut chunked, Duration::from_secs(3)).await,
        "a chunked upload",
    );

    // The first upload completes: stored, and its bytes given back once written.
    first.write_all(&vec![b'x'; len - 1024]).await.unwrap();
    first.flush().await.unwrap();
    let head = answer_head(&mut first, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    wait_for_reserved(&b, len as u64).await;
    // The budget has room again, but not 127.0.0.4, which still holds its share.
    let mut more = start_put(&b, "127.0.0.4", "c8", 16 * 1024, 0).await;
    refused(
        answer_head(&mut more, Duration::from_secs(3)).await,
        "an upload past its share while the budget has room",
    );
    let (status, _) = put_from(&b, "127.0.0.5", 1, 16 * 1024).await;
    assert!(status.starts_with("HTTP/1.1 201"), "{status}");
    let uploads = b.status().await["uploads"].clone();
    assert_eq!(uploads["refused"], 4, "{uploads}");
    assert_eq!(uploads["reserved_bytes"], len, "{uploads}");
}

/// Issue 16: a `Content-Digest` naming an algorithm twice is refused (400) before the body
/// is read, and health checks stay fast beside large uploads with digests to check.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_digest_is_refused_and_health_stays_fast_beside_digested_uploads() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    // Product defaults, but for the rate limit BoxProcess lifts: the health checks come
    // from this one address every 20 ms.
    let b = BoxProcess::start(dir.path(), &[]);
    let body = Bytes::from(payload(1, 0, 16_000_000));
    let sha = ring::digest::digest(&ring::digest::SHA256, &body);
    let sha = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sha.as_ref())
    );
    let both = format!(
        "{sha}, {}",
        hallrelay_protocol::digest::header_value(&blake3::hash(&body))
    );
    let client = b.client(Some(b.candidate_token("math", "c1")));

    // 125 copies of one entry: 1.5 s of hashing each before issue 16.
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-digest",
        vec![sha.as_str(); 125].join(", ").parse().unwrap(),
    );
    let started = Instant::now();
    let reply = client
        .put(&autosave_path("math", "c1", 1), headers, body.clone())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = reply.json().unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("sha-256 more than once"),
        "{v}"
    );
    eprintln!(
        "repeated sha-256 entries refused in {:?}",
        started.elapsed()
    );
    // Over two header lines, the same.
    let mut headers = HeaderMap::new();
    headers.append("content-digest", sha.parse().unwrap());
    headers.append("content-digest", sha.parse().unwrap());
    let reply = client
        .put(
            &autosave_path("math", "c1", 1),
            headers,
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // Six digested 16 MB uploads at once, health checked all along.
    let mut uploads = Vec::new();
    for seq in 1..=6u64 {
        let (client, body) = (client.clone(), body.clone());
        let mut headers = HeaderMap::new();
        headers.insert("content-digest", both.parse().unwrap());
        uploads.push(tokio::spawn(async move {
            client
                .put(&autosave_path("math", "c1", seq), headers, body)
                .await
                .unwrap()
                .status
        }));
    }
    let health = b.client(None);
    let mut slowest = Duration::ZERO;
    let mut checks = 0;
    while !uploads.iter().all(|u| u.is_finished()) {
        let t = Instant::now();
        assert_eq!(
            health.get("/v1/health").await.unwrap().status,
            StatusCode::OK
        );
        slowest = slowest.max(t.elapsed());
        checks += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for u in uploads {
        assert!(u.await.unwrap().is_success());
    }
    eprintln!("beside six digested 16 MB uploads: {checks} health checks, slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert_eq!(b.status().await["stored"]["count"], 6);
}
