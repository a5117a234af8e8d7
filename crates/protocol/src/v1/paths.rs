//! The paths of the v1 routes: the constants of the fixed ones, the builders of the named
//! ones, and [`Route::parse`], their one parser. Building and parsing are inverse: every
//! path [`Route::path`] builds parses back to its route, and every path that parses is the
//! one spelling of what it names, so no autosave can be reached under two paths.

use crate::ids::{AutosaveName, is_valid_id, parse_seq};

/// `GET`: the box's (or cloud's) health and pin; no token.
pub const HEALTH: &str = "/v1/health";
/// `GET` (admin): the box's status.
pub const STATUS: &str = "/v1/status";
/// `POST` (admin): parked autosaves go back to the outbox.
pub const RETRY_PARKED: &str = "/v1/replay/retry-parked";
/// `GET`: the OpenAPI document of the whole API (`docs/openapi.yaml`, as built in); no token.
pub const OPENAPI: &str = "/v1/openapi.yaml";
/// `GET` (admin): a page of the audit log (`?after=N&limit=M&since=RFC3339`).
pub const AUDIT: &str = "/v1/audit";
/// `GET` (admin): the offline-time record, one row per candidate (`?format=csv` for CSV).
pub const REPORT: &str = "/v1/report";
/// `GET` (admin): a page of export frames (`?after=EXAM/CANDIDATE/SEQ`).
pub const EXPORT_AUTOSAVES: &str = "/v1/export/autosaves";
/// `POST` (admin): the signed manifest of an export.
pub const EXPORT_MANIFEST: &str = "/v1/export/manifest";
/// What every exam's path starts with (the autosave routes).
pub const EXAMS_PREFIX: &str = "/v1/exams/";
/// What every export route's path starts with.
pub const EXPORT_PREFIX: &str = "/v1/export/";

/// `/v1/exams/{exam}/candidates/{candidate}/autosaves`: one candidate's list (GET).
pub fn autosaves_path(exam: &str, candidate: &str) -> String {
    format!("{EXAMS_PREFIX}{exam}/candidates/{candidate}/autosaves")
}

/// `…/autosaves/latest`: one candidate's newest payload (GET).
pub fn latest_path(exam: &str, candidate: &str) -> String {
    format!("{}/latest", autosaves_path(exam, candidate))
}

/// `…/autosaves/{seq}`: one autosave (PUT, GET). A PUT of a final submission adds
/// `?final=true` ([`AutosavePut`](super::AutosavePut) does).
pub fn autosave_path(exam: &str, candidate: &str, seq: u64) -> String {
    format!("{}/{seq}", autosaves_path(exam, candidate))
}

/// `/v1/exams/{exam}/config` (GET, candidate token for that exam; on the cloud and the box):
/// the platform-signed exam configuration ([`crate::exam_config::ExamConfig`]).
pub fn exam_config_path(exam: &str) -> String {
    format!("{EXAMS_PREFIX}{exam}/config")
}

/// What a request path names, as far as the path alone can tell. Every id and seq in it has
/// been checked by [`Route::parse`], so a handler never sees a name that could not be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// [`HEALTH`]
    Health,
    /// [`STATUS`]
    Status,
    /// [`RETRY_PARKED`]
    RetryParked,
    /// [`autosaves_path`]
    List { exam: String, candidate: String },
    /// [`latest_path`]
    Latest { exam: String, candidate: String },
    /// [`autosave_path`]
    Autosave(AutosaveName),
    /// [`exam_config_path`]
    ExamConfig { exam: String },
}

/// Why a path names no route. The id errors are the API's 400s, checked in path order (exam,
/// candidate, seq) before anything after them; [`PathError::NotFound`] is its 404.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("{}", self.reason())]
    BadExam,
    #[error("{}", self.reason())]
    BadCandidate,
    #[error("{}", self.reason())]
    BadSeq,
    #[error("{}", self.reason())]
    NotFound,
}

impl PathError {
    /// What the API answers, in words.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::BadExam => "the exam id must match [A-Za-z0-9._-]{1,64}",
            Self::BadCandidate => "the candidate id must match [A-Za-z0-9._-]{1,64}",
            Self::BadSeq => "the seq must be a decimal u64 without leading zeros",
            Self::NotFound => "no such path in the v1 API",
        }
    }
}

impl Route {
    /// Maps a request path (without its query) to what it names.
    pub fn parse(path: &str) -> Result<Self, PathError> {
        let Some(rest) = path.strip_prefix("/v1/") else {
            return Err(PathError::NotFound);
        };
        let segments: Vec<&str> = rest.split('/').collect();
        match segments.as_slice() {
            ["health"] => Ok(Self::Health),
            ["status"] => Ok(Self::Status),
            ["replay", "retry-parked"] => Ok(Self::RetryParked),
            ["exams", exam, "config"] => {
                if !is_valid_id(exam) {
                    return Err(PathError::BadExam);
                }
                Ok(Self::ExamConfig {
                    exam: exam.to_string(),
                })
            }
            [
                "exams",
                exam,
                "candidates",
                candidate,
                "autosaves",
                tail @ ..,
            ] => {
                if !is_valid_id(exam) {
                    return Err(PathError::BadExam);
                }
                if !is_valid_id(candidate) {
                    return Err(PathError::BadCandidate);
                }
                let (exam, candidate) = (exam.to_string(), candidate.to_string());
                match tail {
                    [] => Ok(Self::List { exam, candidate }),
                    ["latest"] => Ok(Self::Latest { exam, candidate }),
                    [seq] => {
                        let seq = parse_seq(seq).ok_or(PathError::BadSeq)?;
                        Ok(Self::Autosave(AutosaveName {
                            exam,
                            candidate,
                            seq,
                        }))
                    }
                    _ => Err(PathError::NotFound),
                }
            }
            _ => Err(PathError::NotFound),
        }
    }

    /// The one path that names this route.
    pub fn path(&self) -> String {
        match self {
            Self::Health => HEALTH.to_owned(),
            Self::Status => STATUS.to_owned(),
            Self::RetryParked => RETRY_PARKED.to_owned(),
            Self::List { exam, candidate } => autosaves_path(exam, candidate),
            Self::Latest { exam, candidate } => latest_path(exam, candidate),
            Self::Autosave(name) => autosave_path(&name.exam, &name.candidate, name.seq),
            Self::ExamConfig { exam } => exam_config_path(exam),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(seq: u64) -> AutosaveName {
        AutosaveName {
            exam: "math-2026".into(),
            candidate: "c042".into(),
            seq,
        }
    }

    #[test]
    fn builders_spell_the_contract() {
        assert_eq!(
            autosaves_path("math-2026", "c042"),
            "/v1/exams/math-2026/candidates/c042/autosaves"
        );
        assert_eq!(
            latest_path("math-2026", "c042"),
            "/v1/exams/math-2026/candidates/c042/autosaves/latest"
        );
        assert_eq!(
            autosave_path("math-2026", "c042", 42),
            "/v1/exams/math-2026/candidates/c042/autosaves/42"
        );
    }

    #[test]
    fn what_is_built_parses_back() {
        let (exam, candidate) = ("math-2026".to_owned(), "c042".to_owned());
        for route in [
            Route::Health,
            Route::Status,
            Route::RetryParked,
            Route::List {
                exam: exam.clone(),
                candidate: candidate.clone(),
            },
            Route::Latest { exam, candidate },
            Route::Autosave(name(0)),
            Route::Autosave(name(u64::MAX)),
            Route::ExamConfig {
                exam: "math-2026".into(),
            },
        ] {
            assert_eq!(Route::parse(&route.path()), Ok(route.clone()), "{route:?}");
        }
    }

    #[test]
    fn bad_ids_are_told_in_path_order() {
        for (path, want) in [
            ("/v1/exams/a%2Fb/candidates/c/autosaves", PathError::BadExam),
            ("/v1/exams/../candidates/c/autosaves", PathError::BadExam),
            (
                "/v1/exams/e/candidates//autosaves/1",
                PathError::BadCandidate,
            ),
            ("/v1/exams/e/candidates/c/autosaves/007", PathError::BadSeq),
            ("/v1/exams/e/candidates/c/autosaves/", PathError::BadSeq),
            ("/v1/exams/e/candidates/c/autosaves/-1", PathError::BadSeq),
            ("/v1/exams/a b/config", PathError::BadExam),
            // The ids are checked before what follows them.
            (
                "/v1/exams/e/candidates/c c/autosaves/1/extra",
                PathError::BadCandidate,
            ),
        ] {
            assert_eq!(Route::parse(path), Err(want), "{path}");
        }
        for unknown in [
            "",
            "/",
            "/v1",
            "/v1/",
            "/v2/health",
            "/v1/health/",
            "/v1/exams/e/candidates/c",
            "/v1/exams/e/candidates/c/autosaves/1/extra",
        ] {
            assert_eq!(Route::parse(unknown), Err(PathError::NotFound), "{unknown}");
        }
    }
}
