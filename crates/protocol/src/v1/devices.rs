//! The device rule: two laptops of one candidate never collide on a seq.
//!
//! A client names the device a save comes from (`Hallrelay-Device`,
//! [`headers::DEVICE`](super::headers::DEVICE)): random per journal, so a spare laptop is a
//! new device. Per (exam, candidate) the server (box and cloud alike) keeps each device it has
//! seen with its first seq. Device Y *took over* from device X when Y's first seq is greater
//! than X's. A new save (not an identical retry: identical bytes still answer 200 with the
//! original receipt) from X at seq `s` is refused with 409 and the error code
//! [`CONTINUED_ELSEWHERE`] when some Y took over from X and `s >= Y`'s first seq: the
//! candidate continued on Y, and X's save would only collide with Y's. Saves without the
//! header are never refused by this rule. Each refusal is counted per candidate (console,
//! `/v1/status`, metrics).

/// The `error` of a 409 that refuses a save from a device the candidate left.
pub const CONTINUED_ELSEWHERE: &str = "continued_elsewhere";
