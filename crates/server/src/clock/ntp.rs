//! Syncing the hall clock from NTP servers the venue configured (`ntp_servers` in
//! `hallrelay.toml`, typically the hall router): an SNTP client (RFC 5905, client mode, one
//! 48-byte UDP packet each way) and the loop that polls them.
//!
//! NTP has no authentication here, so a configured server is trusted because the venue named
//! it, never because it answered: the hall network's DHCP-announced NTP, which any laptop can
//! answer, does not come through this path (the clock calls that `hall_ntp` and never counts
//! it as synced). To make a spoofed answer hard even on the hall network, every request
//! carries a random transmit timestamp that the answer must echo as its origin (RFC 9109's
//! advice), and the answer must come from the address asked. The round trip is measured on
//! the monotonic clock, so a wrong system clock does not enter the sample.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::{HallClock, Sample};
use hallrelay_protocol::clock::ClockSource;

/// The NTP port, when a server is named without one.
pub const DEFAULT_PORT: u16 = 123;
/// How long one query waits for its answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the configured servers are asked while the clock is synced (NTP's usual
/// minimum poll interval).
const SYNCED_EVERY: Duration = Duration::from_secs(64);
/// How often while it is not: the clock is synced within seconds of a server answering.
const UNSYNCED_EVERY: Duration = Duration::from_secs(4);
/// Seconds from the NTP era's start (1900) to the Unix epoch (1970).
const NTP_TO_UNIX_SECS: u64 = 2_208_988_800;
/// The size of an NTP packet without extensions.
const PACKET: usize = 48;

/// A configured NTP server: `host` or `host:port` (`[v6]:port` for an IPv6 address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NtpServer {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for NtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for NtpServer {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{text:?} is not an NTP server; write a host name or address, optionally with \
                 a port: \"192.168.1.1\", \"ntp.hall.example\", \"192.168.1.1:123\", \"[fd00::1]:123\""
            )
        };
        let text = text.trim();
        if text.parse::<std::net::IpAddr>().is_ok() {
            return Ok(Self {
                host: text.to_owned(),
                port: DEFAULT_PORT,
            });
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(bad()),
            }
        } else {
            match text.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(bad)?,
            None => DEFAULT_PORT,
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && (host.parse::<std::net::IpAddr>().is_ok()
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !host_ok {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// Why an NTP query gave no sample. Each says what was wrong with the server or its answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NtpError {
    #[error("cannot resolve the NTP server {server}: {problem}")]
    Resolve { server: String, problem: String },
    #[error("cannot ask the NTP server {server}: {source}")]
    Io {
        server: String,
        source: std::io::Error,
    },
    #[error("the NTP server {server} did not answer within {timeout:?}")]
    Timeout { server: String, timeout: Duration },
    #[error("the NTP server {server} sent {len} bytes, not an NTP packet (48 bytes or more)")]
    Short { server: String, len: usize },
    #[error("the NTP server {server} answered in mode {mode}, not as a server (mode 4)")]
    NotServer { server: String, mode: u8 },
    #[error(
        "the NTP server {server} refused to give the time (kiss code {code:?}); it may be \
         rate-limiting this box or not allow it"
    )]
    Kiss { server: String, code: String },
    #[error(
        "the NTP server {server} has stratum {stratum}: it is not synchronised itself \
         (stratum 1 to 15 is)"
    )]
    Stratum { server: String, stratum: u8 },
    #[error("the NTP server {server} says its clock is not synchronised (leap indicator 3)")]
    Unsynchronised { server: String },
    #[error(
        "an answer from {server} does not echo this box's request (its origin timestamp \
         differs): a spoofed or stale answer, ignored"
    )]
    Spoofed { server: String },
    #[error("the NTP server {server} sent no time (a zero transmit timestamp)")]
    NoTime { server: String },
}

/// Asks `server` for the time: one SNTP request, one answer within `timeout`. The answer's
/// transmit time is the sample's time, its delay (the round trip less the server's own
/// processing time) the sample's round trip.
pub async fn query(server: &NtpServer, timeout: Duration) -> Result<Sample, NtpError> {
    let name = server.to_string();
    let io = |source| NtpError::Io {
        server: name.clone(),
        source,
    };
    let addr = resolve(server).await?;
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    // Connected: the kernel drops datagrams from any other address.
    socket.connect(addr).await.map_err(io)?;
    let nonce: u64 = rand::random::<u64>() | 1;
    let request = request(nonce);
    let sent = Instant::now();
    socket.send(&request).await.map_err(io)?;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::from_std(sent + timeout);
    loop {
        let len = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Err(_) => {
                return Err(NtpError::Timeout {
                    server: name,
                    timeout,
                });
            }
            Ok(Err(e)) => return Err(io(e)),
            Ok(Ok(len)) => len,
        };
        let arrived = Instant::now();
        match parse_answer(&buf[..len], nonce, &name) {
            // A stale answer to an earlier request, or a forgery: keep waiting for ours.
            Err(NtpError::Spoofed { .. }) => {
                tracing::warn!(server = %name, "an NTP answer did not echo the request; ignored");
                continue;
            }
            Err(e) => return Err(e),
            Ok(answer) => {
                let round_trip = (arrived - sent).saturating_sub(answer.server_time);
                return Ok(Sample {
                    source: ClockSource::Ntp,
                    time_ms: answer.transmit_ms,
                    round_trip,
                    precision_ms: answer.precision_ms,
                    at: arrived,
                });
            }
        }
    }
}

/// The server's first address.
async fn resolve(server: &NtpServer) -> Result<SocketAddr, NtpError> {
    let resolve = |problem: String| NtpError::Resolve {
        server: server.to_string(),
        problem,
    };
    tokio::net::lookup_host((server.host.as_str(), server.port))
        .await
        .map_err(|e| resolve(e.to_string()))?
        .next()
        .ok_or_else(|| resolve("no address".to_owned()))
}

/// A client-mode request (version 4, mode 3) whose transmit timestamp is `nonce`.
fn request(nonce: u64) -> [u8; PACKET] {
    let mut packet = [0u8; PACKET];
    packet[0] = (4 << 3) | 3;
    packet[40..48].copy_from_slice(&nonce.to_be_bytes());
    packet
}

/// What a valid answer says.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    /// The server's transmit time (t3), Unix milliseconds.
    transmit_ms: u64,
    /// How long the server held the request (t3 - t2).
    server_time: Duration,
    /// The resolution of the server's clock, rounded up to whole milliseconds.
    precision_ms: u64,
}

/// Checks an answer to the request whose transmit timestamp was `nonce`.
fn parse_answer(packet: &[u8], nonce: u64, server: &str) -> Result<Answer, NtpError> {
    let server = server.to_owned();
    if packet.len() < PACKET {
        return Err(NtpError::Short {
            server,
            len: packet.len(),
        });
    }
    let leap = packet[0] >> 6;
    let mode = packet[0] & 0x7;
    let stratum = packet[1];
    let timestamp = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&packet[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    if mode != 4 {
        return Err(NtpError::NotServer { server, mode });
    }
    if timestamp(24) != nonce {
        return Err(NtpError::Spoofed { server });
    }
    if stratum == 0 {
        let code = String::from_utf8_lossy(&packet[12..16])
            .trim_end_matches('\0')
            .to_owned();
        return Err(NtpError::Kiss { server, code });
    }
    if stratum > 15 {
        return Err(NtpError::Stratum { server, stratum });
    }
    if leap == 3 {
        return Err(NtpError::Unsynchronised { server });
    }
    let (receive, transmit) = (timestamp(32), timestamp(40));
    if transmit == 0 {
        return Err(NtpError::NoTime { server });
    }
    let precision = packet[3] as i8;
    Ok(Answer {
        transmit_ms: unix_ms(transmit),
        server_time: duration(transmit.saturating_sub(receive)),
        precision_ms: precision_ms(precision),
    })
}

/// An NTP timestamp (seconds since 1900 in the high 32 bits, the fraction in the low) as
/// Unix milliseconds. Era 0 runs to 2036; a timestamp whose seconds are below the Unix epoch's
/// is read in era 1 (RFC 5905's usual pivot).
fn unix_ms(timestamp: u64) -> u64 {
    let mut secs = timestamp >> 32;
    if secs < NTP_TO_UNIX_SECS {
        secs += 1 << 32;
    }
    let fraction = timestamp & 0xffff_ffff;
    (secs - NTP_TO_UNIX_SECS) * 1000 + ((fraction * 1000) >> 32)
}

/// The span between two NTP timestamps, as a duration.
fn duration(span: u64) -> Duration {
    Duration::from_secs(span >> 32)
        + Duration::from_nanos(((span & 0xffff_ffff) * 1_000_000_000) >> 32)
}

/// The packet's precision (log2 seconds, signed) in whole milliseconds, rounded up.
fn precision_ms(log2: i8) -> u64 {
    let log2 = i32::from(log2).clamp(-60, 20);
    (2f64.powi(log2) * 1000.0).ceil() as u64
}

/// Keeps the hall clock synced from the configured NTP servers until `shutdown`: each round
/// asks every server in turn and hands each good answer to the clock (which keeps the
/// tightest), every few seconds while the clock is not synced, every 64 s once it is.
pub async fn sync_from_ntp(
    clock: Arc<HallClock>,
    servers: Vec<NtpServer>,
    shutdown: CancellationToken,
) {
    if servers.is_empty() {
        return;
    }
    let mut failing = vec![false; servers.len()];
    loop {
        for (server, failing) in servers.iter().zip(failing.iter_mut()) {
            match query(server, QUERY_TIMEOUT).await {
                Ok(sample) => {
                    if *failing {
                        tracing::info!(server = %server, "the NTP server answers again");
                    }
                    *failing = false;
                    clock.observe(sample);
                }
                Err(error) => {
                    // Once per outage, not every round.
                    if !*failing {
                        tracing::warn!(server = %server, %error, "no time from a configured NTP server");
                    }
                    *failing = true;
                }
            }
        }
        if super::after_poll(&clock, (SYNCED_EVERY, UNSYNCED_EVERY), &shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(nonce: u64) -> [u8; PACKET] {
        let mut p = [0u8; PACKET];
        p[0] = (4 << 3) | 4;
        p[1] = 2;
        p[3] = (-20i8) as u8;
        p[24..32].copy_from_slice(&nonce.to_be_bytes());
        // 2026-12-05T08:00:00Z and a half, received 1/4 s earlier.
        let secs = 1_796_457_600 + NTP_TO_UNIX_SECS;
        p[32..40].copy_from_slice(&((secs << 32) | (1 << 30)).to_be_bytes());
        p[40..48].copy_from_slice(&((secs << 32) | (1 << 31)).to_be_bytes());
        p
    }

    #[test]
    fn a_good_answer_gives_the_transmit_time_and_the_server_s_hold() {
        let a = parse_answer(&answer(7), 7, "s").unwrap();
        assert_eq!(a.transmit_ms, 1_796_457_600_500);
        assert_eq!(a.server_time, Duration::from_millis(250));
        assert_eq!(a.precision_ms, 1);
        assert_eq!(precision_ms(0), 1000);
        assert_eq!(precision_ms(-10), 1);
    }

    #[test]
    fn bad_answers_say_what_is_wrong() {
        let check = |p: &[u8], nonce: u64, needle: &str| {
            let e = parse_answer(p, nonce, "s").unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        check(&answer(7)[..40], 7, "40 bytes");
        check(&answer(7), 8, "spoofed");
        let mut p = answer(7);
        p[0] = (4 << 3) | 3;
        check(&p, 7, "mode 3");
        let mut p = answer(7);
        p[1] = 0;
        p[12..16].copy_from_slice(b"RATE");
        check(&p, 7, "RATE");
        let mut p = answer(7);
        p[1] = 16;
        check(&p, 7, "stratum 16");
        let mut p = answer(7);
        p[0] |= 3 << 6;
        check(&p, 7, "leap indicator 3");
        let mut p = answer(7);
        p[40..48].fill(0);
        check(&p, 7, "zero transmit");
    }

    #[test]
    fn servers_parse_with_and_without_ports() {
        let s = |t: &str| t.parse::<NtpServer>();
        assert_eq!(s("192.168.1.1").unwrap().to_string(), "192.168.1.1:123");
        assert_eq!(s("ntp.hall.example:1123").unwrap().port, 1123);
        assert_eq!(s("fd00::1").unwrap().to_string(), "[fd00::1]:123");
        assert_eq!(s("[fd00::1]:9").unwrap().port, 9);
        for bad in ["", "a b", "host:0", "host:x", "[nope]:1", "h:1:2"] {
            let e = s(bad).unwrap_err();
            assert!(e.contains("not an NTP server"), "{bad}: {e}");
        }
    }
}
