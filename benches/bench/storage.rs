//! Row 7: storage amplification — bytes the box's data dir occupies on disk ÷ payload bytes
//! candidates sent, with essay autosaves shaped like a real exam: the answer grows a few
//! words at a time, and while a candidate reads or thinks, consecutive autosaves are the same
//! bytes (the store keeps one copy of identical payloads).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::HeaderMap;
use tokio::task::JoinSet;

use crate::common::{BoxProcess, autosave_path};
use crate::{Row, Scale};

const EXAM: &str = "essay";
/// Share of autosaves in which nothing changed since the previous one.
const UNCHANGED: f64 = 0.45;
const WORDS: [&str; 24] = [
    "the",
    "evidence",
    "suggests",
    "that",
    "however",
    "policy",
    "which",
    "was",
    "in",
    "economic",
    "growth",
    "of",
    "and",
    "therefore",
    "argument",
    "historians",
    "a",
    "during",
    "reform",
    "is",
    "not",
    "because",
    "conclusion",
    "whereas",
];

/// One candidate's essay, autosave by autosave.
struct Essay {
    text: String,
    state: u64,
}

impl Essay {
    fn new(candidate: usize) -> Self {
        Self {
            text: String::new(),
            state: (candidate as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        }
    }

    fn next_random(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// The next autosave: often unchanged, usually a few words longer, sometimes an edit in
    /// the middle.
    fn next_save(&mut self) -> Vec<u8> {
        let roll = (self.next_random() % 1000) as f64 / 1000.0;
        if roll >= UNCHANGED || self.text.is_empty() {
            let words = 3 + self.next_random() % 30;
            for _ in 0..words {
                let w = WORDS[(self.next_random() % WORDS.len() as u64) as usize];
                self.text.push_str(w);
                self.text.push(' ');
            }
            if self.next_random().is_multiple_of(10) && self.text.len() > 40 {
                let at = (self.next_random() as usize) % (self.text.len() - 20);
                let at = (at..self.text.len())
                    .find(|&i| self.text.is_char_boundary(i))
                    .unwrap_or(0);
                self.text.replace_range(at..at + 1, "X");
            }
        }
        serde_json::to_vec(&serde_json::json!({ "question": 1, "answer": self.text }))
            .unwrap_or_default()
    }
}

/// Bytes the files under `dir` occupy on disk (allocated blocks, as `du` counts them).
fn on_disk(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

pub async fn amplification(scratch: &Path, scale: Scale) -> (Row, Vec<String>) {
    let data_dir = tempfile::tempdir_in(scratch).expect("data dir");
    let mut the_box = BoxProcess::start(data_dir.path(), &["--name", "bench"]);
    let before = on_disk(data_dir.path());
    let sent = Arc::new(AtomicU64::new(0));
    let unique = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let unique_bytes = Arc::new(AtomicU64::new(0));
    let mut candidates = JoinSet::new();
    for c in 0..scale.essay_candidates {
        let client = the_box.client(Some(the_box.candidate_token(EXAM, &format!("e{c}"))));
        let (sent, unique, unique_bytes) = (sent.clone(), unique.clone(), unique_bytes.clone());
        let saves = scale.essay_saves;
        candidates.spawn(async move {
            let mut essay = Essay::new(c);
            for seq in 1..=saves as u64 {
                let body = essay.next_save();
                let hash = blake3::hash(&body);
                let len = body.len() as u64;
                let reply = client
                    .put(
                        &autosave_path(EXAM, &format!("e{c}"), seq),
                        HeaderMap::new(),
                        Bytes::from(body),
                    )
                    .await
                    .expect("essay autosave answered");
                assert_eq!(
                    reply.status,
                    http::StatusCode::CREATED,
                    "essay autosave stored"
                );
                sent.fetch_add(len, Ordering::Relaxed);
                if unique.lock().expect("set").insert(hash) {
                    unique_bytes.fetch_add(len, Ordering::Relaxed);
                }
            }
        });
    }
    while candidates.join_next().await.is_some() {}
    let status = the_box.status().await;
    the_box.terminate();
    let sent = sent.load(Ordering::Relaxed) as f64;
    let unique = unique_bytes.load(Ordering::Relaxed) as f64;
    let disk = on_disk(data_dir.path()) as f64;
    let ratio = disk / sent;
    let saves = scale.essay_candidates * scale.essay_saves;
    let row = Row::new(
        7,
        format!(
            "storage amplification: {saves} essay autosaves ({} candidates × {}), {:.0} % unchanged",
            scale.essay_candidates,
            scale.essay_saves,
            UNCHANGED * 100.0
        ),
        format!(
            "**{ratio:.3}** ({:.1} MiB on disk for {:.1} MiB sent; {:.3} of the distinct payloads)",
            disk / 1048576.0,
            sent / 1048576.0,
            disk / unique
        ),
    )
    .target("≤ 1.1", ratio <= 1.1);
    let note = format!(
        "storage: an empty store took {:.1} MiB; average autosave {:.1} KiB; the box counted {} stored",
        before as f64 / 1048576.0,
        sent / saves as f64 / 1024.0,
        status["stored"]["count"]
    );
    (row, vec![note])
}
