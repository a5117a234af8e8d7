//! The v1 protocol's names: where a box is found and where its API lives.

/// The DNS-SD service type a box advertises and clients browse for.
pub const SERVICE_TYPE: &str = "_hallrelay._tcp.local.";
/// The TXT `v` this build writes and understands.
pub const TXT_VERSION: &str = "1";
/// The TXT `path`: where the API lives on the box.
pub const API_PATH: &str = "/v1";
