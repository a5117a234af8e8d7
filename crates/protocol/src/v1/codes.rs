//! The `error` codes of the API's JSON error bodies that a client acts on, written once: a
//! 409 to an autosave PUT says *why* the name was refused, and each reason asks something
//! different of the exam UI. The server's `ApiError` answers with these words; the Rust
//! client's `SaveError` and the TypeScript client's rejection carry them
//! ([`Refusal::of`]).

/// Other bytes are already stored under this name.
pub const CONFLICT: &str = "conflict";
/// A save after the candidate's final (a seq above the final's) under the exam policy
/// `after_final = "refuse"`.
pub const AFTER_FINAL: &str = "after_final";
/// The candidate continued on another device, which took over this one's seqs.
pub const CONTINUED_ELSEWHERE: &str = "continued_elsewhere";

/// Why a 409 refused a save, as its `error` code says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// [`CONFLICT`], and a 409 whose code is missing or unknown (an older server's).
    Conflict,
    /// [`AFTER_FINAL`].
    AfterFinal,
    /// [`CONTINUED_ELSEWHERE`].
    ContinuedElsewhere,
}

impl Refusal {
    /// Reads a 409's `error` code.
    pub fn of(code: Option<&str>) -> Self {
        match code {
            Some(AFTER_FINAL) => Self::AfterFinal,
            Some(CONTINUED_ELSEWHERE) => Self::ContinuedElsewhere,
            _ => Self::Conflict,
        }
    }

    /// The code, as the API spells it.
    pub fn code(self) -> &'static str {
        match self {
            Self::Conflict => CONFLICT,
            Self::AfterFinal => AFTER_FINAL,
            Self::ContinuedElsewhere => CONTINUED_ELSEWHERE,
        }
    }

    /// Reads the `error` code of a JSON error body (`{"error": "…", "message": "…"}`).
    pub fn of_body(body: &[u8]) -> Self {
        let code = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        Self::of(code.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_reads_back_and_an_unknown_one_is_a_conflict() {
        for r in [
            Refusal::Conflict,
            Refusal::AfterFinal,
            Refusal::ContinuedElsewhere,
        ] {
            assert_eq!(Refusal::of(Some(r.code())), r);
            let body = format!("{{\"error\":\"{}\",\"message\":\"m\"}}", r.code());
            assert_eq!(Refusal::of_body(body.as_bytes()), r);
        }
        assert_eq!(Refusal::of(None), Refusal::Conflict);
        assert_eq!(Refusal::of(Some("later_code")), Refusal::Conflict);
        assert_eq!(Refusal::of_body(b"not json"), Refusal::Conflict);
    }
}
