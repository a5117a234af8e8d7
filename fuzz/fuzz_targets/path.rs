//! Fuzzes the API's path parsing (`hallrelay_server::api::routes::parse_path`).
//!
//! The path is the first thing of a request the box interprets, and whatever it names is what
//! the store is asked for. Properties, for any string (raw, or built from the routes' own
//! segments so that the fuzzer reaches the deep cases quickly):
//! - it never panics, and fails only with `BadId` (400) or `NotFound` (404);
//! - it agrees with a reference parser written differently (prefix by prefix rather than by
//!   splitting into segments), including which error comes first;
//! - whatever it accepts names only valid ids and seqs, and is exactly the canonical spelling
//!   of what it names: no autosave can be reached under two paths.
#![no_main]

use hallrelay_server::api::ApiError;
use hallrelay_server::api::routes::{Target, parse_path};
use hallrelay_protocol::ids::{AutosaveName, is_valid_id, parse_seq};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Segment {
    Exams,
    Candidates,
    Autosaves,
    Latest,
    Health,
    Status,
    Replay,
    RetryParked,
    Left,
    Config,
    Empty,
    Seq(u64),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(String),
    Built { v1: bool, segments: Vec<Segment> },
}

impl Input {
    fn path(&self) -> String {
        match self {
            Input::Raw(path) => path.clone(),
            Input::Built { v1, segments } => {
                let mut path = String::from(if *v1 { "/v1" } else { "" });
                for segment in segments {
                    path.push('/');
                    match segment {
                        Segment::Exams => path.push_str("exams"),
                        Segment::Candidates => path.push_str("candidates"),
                        Segment::Autosaves => path.push_str("autosaves"),
                        Segment::Latest => path.push_str("latest"),
                        Segment::Health => path.push_str("health"),
                        Segment::Status => path.push_str("status"),
                        Segment::Replay => path.push_str("replay"),
                        Segment::RetryParked => path.push_str("retry-parked"),
                        Segment::Left => path.push_str("left"),
                        Segment::Config => path.push_str("config"),
                        Segment::Empty => {}
                        Segment::Seq(n) => path.push_str(&n.to_string()),
                        Segment::Text(s) => path.push_str(s),
                    }
                }
                path
            }
        }
    }
}

/// What a path should parse to.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Found(Target),
    BadId,
    NotFound,
}

/// The routes, read prefix by prefix.
fn reference(path: &str) -> Expected {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Expected::NotFound;
    };
    match rest {
        "health" => return Expected::Found(Target::Health),
        "status" => return Expected::Found(Target::Status),
        "replay/retry-parked" => return Expected::Found(Target::RetryParked),
        _ => {}
    }
    let Some((exam, rest)) = rest.strip_prefix("exams/").and_then(|r| r.split_once('/')) else {
        return Expected::NotFound;
    };
    if rest == "config" {
        if !is_valid_id(exam) {
            return Expected::BadId;
        }
        return Expected::Found(Target::ExamConfig {
            exam: exam.to_owned(),
        });
    }
    let Some((candidate, rest)) = rest
        .strip_prefix("candidates/")
        .and_then(|r| r.split_once('/'))
    else {
        return Expected::NotFound;
    };
    if rest == "left" {
        if !is_valid_id(exam) || !is_valid_id(candidate) {
            return Expected::BadId;
        }
        return Expected::Found(Target::Left {
            exam: exam.to_owned(),
            candidate: candidate.to_owned(),
        });
    }
    let tail = match rest.strip_prefix("autosaves") {
        Some("") => None,
        Some(t) if t.starts_with('/') => Some(&t[1..]),
        _ => return Expected::NotFound,
    };
    // The ids are checked before anything after them is looked at.
    if !is_valid_id(exam) || !is_valid_id(candidate) {
        return Expected::BadId;
    }
    let (exam, candidate) = (exam.to_owned(), candidate.to_owned());
    match tail {
        None => Expected::Found(Target::List { exam, candidate }),
        Some("latest") => Expected::Found(Target::Latest { exam, candidate }),
        Some(seq) if !seq.contains('/') => match parse_seq(seq) {
            Some(seq) => Expected::Found(Target::Autosave(AutosaveName {
                exam,
                candidate,
                seq,
            })),
            None => Expected::BadId,
        },
        Some(_) => Expected::NotFound,
    }
}

/// The one path that names `target`.
fn canonical(target: &Target) -> String {
    let autosaves = |exam: &str, candidate: &str| {
        assert!(is_valid_id(exam) && is_valid_id(candidate), "{target:?}");
        format!("/v1/exams/{exam}/candidates/{candidate}/autosaves")
    };
    match target {
        Target::Health => "/v1/health".to_owned(),
        Target::Status => "/v1/status".to_owned(),
        Target::RetryParked => "/v1/replay/retry-parked".to_owned(),
        Target::List { exam, candidate } => autosaves(exam, candidate),
        Target::Latest { exam, candidate } => format!("{}/latest", autosaves(exam, candidate)),
        Target::Autosave(name) => {
            format!("{}/{}", autosaves(&name.exam, &name.candidate), name.seq)
        }
        Target::Left { exam, candidate } => {
            assert!(is_valid_id(exam) && is_valid_id(candidate), "{target:?}");
            format!("/v1/exams/{exam}/candidates/{candidate}/left")
        }
        Target::ExamConfig { exam } => {
            assert!(is_valid_id(exam), "{target:?}");
            format!("/v1/exams/{exam}/config")
        }
    }
}

fuzz_target!(|input: Input| {
    let path = input.path();
    let parsed = match parse_path(&path) {
        Ok(target) => {
            assert_eq!(canonical(&target), path, "accepted a non-canonical path");
            Expected::Found(target)
        }
        Err(ApiError::BadId(_)) => Expected::BadId,
        Err(ApiError::NotFound) => Expected::NotFound,
        Err(other) => panic!("{path:?}: unexpected error {other:?}"),
    };
    assert_eq!(parsed, reference(&path), "{path:?}");
});
