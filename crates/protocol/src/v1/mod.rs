//! The v1 API as both ends speak it, written once: where a box is found (mDNS), the paths of
//! its routes ([`Route`], built and parsed by the same code), the header names
//! ([`headers`]), an autosave PUT's parts ([`AutosavePut`]) and what an answer to one means
//! ([`Answer`]).
//!
//! The candidate client, the box's replay, the box's router, `import`, the load generator and
//! the demo all speak through this module, so that a path, a header or the meaning of a status
//! code cannot drift between them. It builds and reads names and parts only; sending them is
//! the caller's business (no networking here).

mod autosave;
pub mod box_tokens;
pub mod codes;
pub mod devices;
pub mod headers;
mod paths;
pub mod platform;

pub use autosave::{Answer, AutosavePut, DEFAULT_CONTENT_TYPE, retry_after};
pub use paths::{
    AUDIT, EXAMS_PREFIX, EXPORT_AUTOSAVES, EXPORT_MANIFEST, EXPORT_PREFIX, HEALTH, OPENAPI,
    PathError, REPORT, RETRY_PARKED, Route, STATUS, autosave_path, autosaves_path,
    exam_config_path, latest_path, left_path,
};

/// The DNS-SD service type a box advertises and clients browse for.
pub const SERVICE_TYPE: &str = "_hallrelay._tcp.local.";
/// The TXT `v` this build writes and understands.
pub const TXT_VERSION: &str = "1";
/// The TXT `path`: where the API lives on the box.
pub const API_PATH: &str = "/v1";
