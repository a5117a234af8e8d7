//! The reference cloud as the platform that holds the exam keys, with the real `hallrelay
//! cloud` process on loopback: a candidate gets their exam's keys signed by the platform's
//! current token key (and no other exam's); a save sealed to them and stored at the cloud reads
//! back as its plaintext for a platform admin (a plaintext save as is, a moved envelope not at
//! all), never for a candidate token, and never from a box; `cloud card` prints the restore
//! code that opens that candidate's envelopes and no other's; the answer keys are a 0600 file
//! the cloud refuses to start with when others may read it.

use hallrelay_testkit as common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hallrelay_client::{Connection, Reply};
use hallrelay_envelope::{ExamKeys, OpenError, RestoreSecret, Save, Sealer};
use hallrelay_protocol::envelope::Role;
use hallrelay_protocol::keys::{Secret, TokenKey};
use hallrelay_protocol::token::KeySet;
use hallrelay_protocol::v1::headers;
use hallrelay_protocol::v1::platform::{PLATFORM_KEYS, answer_path, exam_keys_path};
use http::{HeaderMap, StatusCode};

const EXAM: &str = "bio-2026";
const ESSAY: &[u8] = b"photosynthesis turns light, water and carbon dioxide into sugar";

struct Cloud {
    dir: tempfile::TempDir,
    process: BoxProcess,
}

impl Cloud {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let process =
            BoxProcess::start_cloud(&dir.path().join("cloud"), &["--listen", "127.0.0.1:0"]);
        Self { dir, process }
    }

    fn data_dir(&self) -> &Path {
        &self.process.data_dir
    }

    fn url(&self) -> String {
        format!("http://{}", self.process.addr)
    }

    fn client(&self, token: Option<String>) -> Connection {
        Connection::with_roots(&self.url(), None, token.map(Secret::new)).unwrap()
    }

    fn candidate(&self, exam: &str, candidate: &str) -> Connection {
        let token = self
            .process
            .platform()
            .candidate_token(DEFAULT_VENUE, exam, candidate);
        self.client(Some(token))
    }

    fn admin(&self) -> Connection {
        self.client(Some(self.process.platform().admin_token(DEFAULT_VENUE)))
    }

    async fn published(&self) -> KeySet {
        let reply = self.client(None).get(PLATFORM_KEYS).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        reply.json().unwrap()
    }

    /// The exam keys `candidate` is given, checked against the published keys.
    async fn sealer(&self, candidate: &str) -> (ExamKeys, Sealer) {
        let reply = self
            .candidate(EXAM, candidate)
            .get(&exam_keys_path(EXAM))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.message());
        let doc: ExamKeys = reply.json().unwrap();
        let sealer = doc
            .verify(&self.published().await, EXAM, candidate)
            .expect("the exam keys verify against /v1/platform/keys");
        (doc, sealer)
    }

    async fn answer(&self, client: &Connection, candidate: &str, seq: u64) -> Reply {
        client
            .get(&answer_path(EXAM, candidate, seq))
            .await
            .unwrap()
    }
}

fn save(candidate: &str, seq: u64, is_final: bool) -> Save<'_> {
    Save {
        exam: EXAM,
        candidate,
        seq,
        is_final,
    }
}

fn encrypted(reply: &Reply) -> Option<&str> {
    reply
        .headers
        .get(headers::ENCRYPTED)
        .and_then(|v| v.to_str().ok())
}

/// Runs `hallrelay ARGS`: (exit code, stdout, stderr).
fn hallrelay(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = command(None).args(args).output().expect("run hallrelay");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_exam_keys_are_signed_for_the_candidate_of_that_exam_only() {
    let cloud = Cloud::start();
    let (doc, _) = cloud.sealer("c1").await;
    assert_eq!((doc.exam.as_str(), doc.candidate.as_str()), (EXAM, "c1"));
    assert!(doc.restore_key.is_some(), "the candidate has a restore key");
    // Stable: asked again (or by a restarted cloud) the keys are the same; per candidate the
    // exam key is shared and the restore key is not.
    let (again, _) = cloud.sealer("c1").await;
    let (other, _) = cloud.sealer("c2").await;
    assert_eq!(again.exam_key, doc.exam_key);
    assert_eq!(again.restore_key, doc.restore_key);
    assert_eq!(other.exam_key, doc.exam_key);
    assert_ne!(other.restore_key, doc.restore_key);

    // Another exam's candidate token, an admin token, no token: refused.
    let path = exam_keys_path(EXAM);
    let reply = cloud.candidate("law-2026", "c1").get(&path).await.unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        reply.message().unwrap_or_default().contains("another exam"),
        "{:?}",
        reply.message()
    );
    let reply = cloud.admin().get(&path).await.unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        reply
            .message()
            .unwrap_or_default()
            .contains("candidate token"),
        "{:?}",
        reply.message()
    );
    let reply = cloud.client(None).get(&path).await.unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

/// `cloud rotate-key --promote`: the promoted key signs the exam keys from then on, without a
/// restart, and they verify against what the cloud publishes.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_key_rotation_the_exam_keys_are_signed_with_the_new_key() {
    let cloud = Cloud::start();
    let data_dir = cloud.data_dir().to_str().unwrap().to_owned();
    let (before, _) = cloud.sealer("c1").await;
    let (code, _, err) = hallrelay(&["cloud", "rotate-key", "--data-dir", &data_dir]);
    assert_eq!(code, 0, "{err}");
    let next = TokenKey::load(&cloud.data_dir().join("platform.next.key")).unwrap();
    let next_kid = hallrelay_protocol::token::PublicKey::of(&next).kid;
    let deadline = Instant::now() + Duration::from_secs(20);
    while cloud.published().await.get(&next_kid).is_none() {
        assert!(
            Instant::now() < deadline,
            "the next key was never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _, err) = hallrelay(&["cloud", "rotate-key", "--data-dir", &data_dir, "--promote"]);
    assert_eq!(code, 0, "{err}");

    let (after, _) = cloud.sealer("c1").await;
    assert_eq!(after.kid, next_kid, "the promoted key signs at once");
    assert_ne!(after.kid, before.kid);
    assert_eq!(
        after.exam_key, before.exam_key,
        "the answer keys do not rotate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_platform_admin_reads_the_plaintext_of_a_stored_save() {
    let cloud = Cloud::start();
    let (_, sealer) = cloud.sealer("c1").await;
    let c1 = cloud.candidate(EXAM, "c1");

    // Sealed as the client does, stored at the cloud with the candidate's token.
    let sealed = sealer.seal(&save("c1", 1, false), ESSAY);
    assert!(!sealed.windows(14).any(|w| w == b"photosynthesis"));
    assert_eq!(
        put(&c1, EXAM, "c1", 1, &sealed).await.status,
        StatusCode::CREATED
    );
    // The store holds the envelope: an admin's ordinary read is the ciphertext.
    let stored = cloud
        .admin()
        .get(&autosave_path(EXAM, "c1", 1))
        .await
        .unwrap();
    assert_eq!(stored.body, Bytes::from(sealed.clone()));

    let reply = cloud.answer(&cloud.admin(), "c1", 1).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.message());
    assert_eq!(reply.body, Bytes::from_static(ESSAY));
    assert_eq!(encrypted(&reply), Some("yes"));

    // A final submission opens with its final flag, as stored.
    let last = sealer.seal(&save("c1", 2, true), b"my final answer");
    let reply = c1
        .put(
            &format!("{}?final=true", autosave_path(EXAM, "c1", 2)),
            HeaderMap::new(),
            Bytes::from(last),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::CREATED);
    let reply = cloud.answer(&cloud.admin(), "c1", 2).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.message());
    assert_eq!(reply.body, Bytes::from_static(b"my final answer"));

    // A client that does not encrypt: its bytes come back as they are.
    assert_eq!(
        put(&c1, EXAM, "c1", 3, ESSAY).await.status,
        StatusCode::CREATED
    );
    let reply = cloud.answer(&cloud.admin(), "c1", 3).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, Bytes::from_static(ESSAY));
    assert_eq!(encrypted(&reply), Some("no"));

    // An envelope stored under another seq than it was sealed for does not open: 422.
    let moved = sealer.seal(&save("c1", 9, false), ESSAY);
    assert_eq!(
        put(&c1, EXAM, "c1", 4, &moved).await.status,
        StatusCode::CREATED
    );
    let reply = cloud.answer(&cloud.admin(), "c1", 4).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = reply.json().unwrap();
    assert_eq!(body["error"], "answer_unreadable");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("another exam, candidate, seq"),
        "{message}"
    );

    // No such save: 404. The candidate's own token, even for their own save: 403.
    let reply = cloud.answer(&cloud.admin(), "c1", 5).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = cloud.answer(&c1, "c1", 1).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        reply.message().unwrap_or_default().contains("admin token"),
        "{:?}",
        reply.message()
    );
    let reply = cloud.answer(&cloud.client(None), "c1", 1).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // Each plaintext read is in the cloud's audit log, with who read it.
    let reply = cloud.admin().get("/v1/audit").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let log: serde_json::Value = reply.json().unwrap();
    let reads: Vec<&serde_json::Value> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "answer_read")
        .collect();
    let seqs: Vec<u64> = reads.iter().filter_map(|e| e["read"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "{log}");
    assert!(
        reads
            .iter()
            .all(|e| e["subject"] == "test" && e["candidate"] == "c1")
    );

    // `hallrelay cloud answer`, as the platform's staff run it.
    let token_file = write_secret(
        &cloud.dir.path().join("admin.token"),
        &cloud.process.platform().admin_token(DEFAULT_VENUE),
    );
    let url = cloud.url();
    let args = |seq: &'static str| {
        vec![
            "cloud",
            "answer",
            "--cloud",
            url.as_str(),
            "--token-file",
            token_file.as_str(),
            "--exam",
            EXAM,
            "--candidate",
            "c1",
            "--seq",
            seq,
        ]
    };
    let (code, stdout, stderr) = hallrelay(&args("1"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, ESSAY);
    assert!(stderr.contains("stored encrypted"), "{stderr}");
    let (code, stdout, stderr) = hallrelay(&args("3"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, ESSAY);
    assert!(stderr.contains("stored as plaintext"), "{stderr}");
    let out = cloud.dir.path().join("answer.txt");
    let mut with_out = args("1");
    with_out.extend(["--out", out.to_str().unwrap()]);
    let (code, stdout, stderr) = hallrelay(&with_out);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(std::fs::read(&out).unwrap(), ESSAY);
    assert_eq!(mode(&out), 0o600);
    let (code, _, stderr) = hallrelay(&args("4"));
    assert_ne!(code, 0);
    assert!(
        stderr.contains("422") && stderr.contains("does not open"),
        "{stderr}"
    );
}

/// The box stores and serves envelopes but has no route that opens one.
#[tokio::test(flavor = "multi_thread")]
async fn a_box_has_no_answer_route() {
    let dir = tempfile::tempdir().unwrap();
    let hall = BoxProcess::start(&dir.path().join("box"), &[]);
    let c1 = hall.client(Some(hall.candidate_token(EXAM, "c1")));
    assert_eq!(
        put(&c1, EXAM, "c1", 1, ESSAY).await.status,
        StatusCode::CREATED
    );
    let admin = hall.client(Some(hall.admin_token()));
    let reply = admin.get(&answer_path(EXAM, "c1", 1)).await.unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = c1.get(&exam_keys_path(EXAM)).await.unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_exam_card_code_opens_that_candidates_answers_and_no_others() {
    let cloud = Cloud::start();
    let (_, for_c1) = cloud.sealer("c1").await;
    let (_, for_c2) = cloud.sealer("c2").await;
    let sealed_c1 = for_c1.seal(&save("c1", 1, false), ESSAY);
    let sealed_c2 = for_c2.seal(&save("c2", 1, false), b"c2's essay");

    // The card is printed offline, from the cloud's data dir, while the cloud runs.
    let data_dir = cloud.data_dir().to_str().unwrap().to_owned();
    let (code, stdout, stderr) = hallrelay(&[
        "cloud",
        "card",
        "--data-dir",
        &data_dir,
        "--exam",
        EXAM,
        "--candidate",
        "c1",
        "--candidate",
        "c2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let text = String::from_utf8(stdout).unwrap();
    let codes: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("restore code"))
        .map(str::trim)
        .collect();
    assert_eq!(codes.len(), 2, "{text}");
    assert!(
        text.contains('█') || text.contains('▀'),
        "a QR code: {text}"
    );
    assert!(
        text.contains("own card") || text.contains("card only"),
        "{text}"
    );

    let key_c1 = RestoreSecret::parse(codes[0]).unwrap().key(EXAM, "c1");
    let key_c2 = RestoreSecret::parse(codes[1]).unwrap().key(EXAM, "c2");
    assert_eq!(
        hallrelay_envelope::open(&sealed_c1, &key_c1, Role::Restore, &save("c1", 1, false)),
        Ok(ESSAY.to_vec())
    );
    assert_eq!(
        hallrelay_envelope::open(&sealed_c2, &key_c2, Role::Restore, &save("c2", 1, false)),
        Ok(b"c2's essay".to_vec())
    );
    // c2's card does not open c1's envelope, whatever candidate it is bound to.
    assert_eq!(
        hallrelay_envelope::open(&sealed_c1, &key_c2, Role::Restore, &save("c1", 1, false)),
        Err(OpenError::NotForThisKey {
            role: Role::Restore
        })
    );
    let c2_as_c1 = RestoreSecret::parse(codes[1]).unwrap().key(EXAM, "c1");
    assert!(
        hallrelay_envelope::open(&sealed_c1, &c2_as_c1, Role::Restore, &save("c1", 1, false))
            .is_err()
    );

    // A folder without answer keys prints no card, and creates none.
    let empty = cloud.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, _, stderr) = hallrelay(&[
        "cloud",
        "card",
        "--data-dir",
        empty.to_str().unwrap(),
        "--exam",
        EXAM,
        "--candidate",
        "c1",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no answer keys"), "{stderr}");
    assert!(!empty.join("answer-keys.key").exists());
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn the_answer_keys_are_private_and_a_loose_file_stops_the_cloud() {
    let mut cloud = Cloud::start();
    let (before, _) = cloud.sealer("c1").await;
    let file = cloud.data_dir().join("answer-keys.key");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(std::fs::read(&file).unwrap().len(), 32);
    cloud.process.terminate();

    // Restarted, the cloud has the same keys.
    let data_dir = cloud.data_dir().to_owned();
    cloud.process = BoxProcess::start_cloud(&data_dir, &["--listen", "127.0.0.1:0"]);
    let (after, _) = cloud.sealer("c1").await;
    assert_eq!(after.exam_key, before.exam_key);
    assert_eq!(after.restore_key, before.restore_key);
    cloud.process.terminate();

    // Readable by others: the cloud refuses to start, saying how to fix it.
    std::fs::set_permissions(
        &file,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
    )
    .unwrap();
    let mut child = command(None)
        .args(["cloud", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_within(&mut child, Duration::from_secs(20)).expect("the cloud exits");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("answer-keys.key") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}
