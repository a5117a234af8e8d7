//! Talking to a box (or the cloud) over HTTPS, trusting it by its pin.
//!
//! [`Connection`] is the one HTTP client the CLI tools, the tests and the benchmarks use: it
//! speaks HTTP/1.1 or HTTP/2 (by ALPN) with keep-alive, and refuses any server whose key is
//! not pinned.

mod connection;

pub use connection::{ClientError, Connection, Reply};
