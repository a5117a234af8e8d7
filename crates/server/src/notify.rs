//! Telling systemd how the box is doing: the service notification protocol (`sd_notify`).
//!
//! The unit is `Type=notify`, so systemd counts the box as started only when it says
//! `READY=1`, which `serve` sends once the store is open and the listener is bound. With
//! `WatchdogSec=` systemd also expects `WATCHDOG=1` at least that often and restarts the box
//! when it stops coming; a ping is sent only after a round trip through the store's writer
//! thread, so a writer that died or hangs in the disk stops the pings and gets the box
//! restarted, while a busy but healthy one does not. `STATUS=` lines (shown by
//! `systemctl status`) say where the uplink stands and how much is queued.
//!
//! The protocol is a few text datagrams to the `AF_UNIX` socket named by `$NOTIFY_SOCKET`; a
//! std `UnixDatagram` does it, no crate needed. Without `$NOTIFY_SOCKET` (a developer's
//! shell, the tests) everything here is a no-op.
//!
//! Kept rather than the `sd-notify` crate (issue 18 weighed it): its `notify` reads the
//! environment and opens a fresh, blocking socket on every call, while this one resolves the
//! address once (a bad one is logged once, at start) and never blocks the runtime on a full
//! manager queue (non-blocking: a lost `STATUS=` is harmless, a lost `WATCHDOG=1` is
//! followed by the next); and it takes the socket path as an argument, so its tests need no
//! process-wide `set_var`.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::replay::{Uplink, UplinkState};
use hallrelay_store::Store;

/// How often `STATUS=` is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Why notifications cannot be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract name (@…)")]
    BadAddress(String),
    #[error("cannot send to NOTIFY_SOCKET: {0}")]
    Io(#[from] std::io::Error),
}

/// A connection to the service manager's notification socket.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names, or `None` when it is unset (not run by systemd).
    pub fn from_env() -> Result<Option<Self>, NotifyError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(value) => Self::new(&value.to_string_lossy()).map(Some),
        }
    }

    /// A notifier for the socket at `path` (`@name` for an abstract socket).
    pub fn new(path: &str) -> Result<Self, NotifyError> {
        let addr = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name.as_bytes())?
        } else if path.starts_with('/') {
            SocketAddr::from_pathname(path)?
        } else {
            return Err(NotifyError::BadAddress(path.to_owned()));
        };
        let socket = UnixDatagram::unbound()?;
        // A full queue at the manager must never stall the runtime: a lost STATUS= is fine
        // and a lost WATCHDOG=1 is followed by another.
        socket.set_nonblocking(true)?;
        Ok(Self { socket, addr })
    }

    /// Sends one notification, such as `READY=1` or `STATUS=…` (newline-separated
    /// assignments).
    pub fn send(&self, state: &str) -> Result<(), NotifyError> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        Ok(())
    }

    /// Sends and logs a failure instead of returning it: notifications are advisory.
    fn send_or_log(&self, state: &str) {
        if let Err(error) = self.send(state) {
            tracing::warn!(%error, state, "a notification to systemd was not sent");
        }
    }
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`), if it is meant for this
/// process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_string_lossy().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The one-line status: where the uplink stands and what is queued.
pub fn status_line(uplink: UplinkState, pending: Option<(u64, u64)>) -> String {
    let uplink = match uplink {
        UplinkState::NotConfigured => "no cloud configured (queue only)",
        UplinkState::Unknown => "uplink not checked yet",
        UplinkState::Up => "uplink up",
        UplinkState::Down => "uplink DOWN",
        UplinkState::Refused => "cloud REFUSES this box's credential",
    };
    match pending {
        Some((count, bytes)) => format!("{uplink}; {count} autosaves pending ({bytes} bytes)"),
        None => format!("{uplink}; store status unreadable"),
    }
}

/// Tells systemd the box is ready, then keeps the watchdog fed and the status current until
/// `shutdown`, when it says `STOPPING=1`. Returns at once when there is no `$NOTIFY_SOCKET`.
pub async fn supervise(
    notifier: Option<Arc<Notifier>>,
    store: Store,
    uplink: Arc<Uplink>,
    shutdown: CancellationToken,
) {
    let Some(notifier) = notifier else {
        return;
    };
    let watchdog = watchdog_interval();
    // Ping at half the interval so that one slow round trip does not cost a restart.
    let every = watchdog.map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY));
    let mut last_status = String::new();
    let mut ready = false;
    loop {
        let alive = tokio::select! {
            _ = shutdown.cancelled() => break,
            alive = tokio::time::timeout(every, store.ping_writer()) => alive,
        };
        let pending = store
            .status()
            .await
            .ok()
            .map(|s| (s.pending, s.pending_bytes));
        let status = status_line(uplink.state(), pending);
        let mut message = String::new();
        if !ready {
            message.push_str("READY=1\n");
            ready = true;
            tracing::info!(watchdog = ?watchdog, "told systemd the box is ready");
        }
        match alive {
            Ok(Ok(())) if watchdog.is_some() => message.push_str("WATCHDOG=1\n"),
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "the store's writer did not answer; no watchdog ping")
            }
            Err(_) => tracing::error!(
                waited = ?every,
                "the store's writer is stuck; no watchdog ping"
            ),
        }
        if status != last_status {
            message.push_str(&format!("STATUS={status}\n"));
            last_status = status;
        }
        if !message.is_empty() {
            notifier.send_or_log(message.trim_end());
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    notifier.send_or_log("STOPPING=1\nSTATUS=shutting down: draining requests");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        Notifier::new(path.to_str().unwrap())
            .unwrap()
            .send("READY=1")
            .unwrap();
        let mut buf = [0; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("hallrelay-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        Notifier::new(&format!("@{name}"))
            .unwrap()
            .send("WATCHDOG=1")
            .unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");

        assert!(matches!(
            Notifier::new("relative/path"),
            Err(NotifyError::BadAddress(_))
        ));
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            status_line(UplinkState::Down, Some((12, 4096))),
            "uplink DOWN; 12 autosaves pending (4096 bytes)"
        );
        assert!(status_line(UplinkState::Up, None).contains("unreadable"));
    }
}
