//! Console sessions: an invigilator enters the admin token once and the browser then holds a
//! random session id in an `HttpOnly; Secure; SameSite=Strict` cookie instead of the token.
//!
//! Why not keep the token in the cookie: a session can be ended (sign-out forgets it on the
//! box, not only in the browser), and the token never sits in the browser's cookie jar. Only
//! the blake3 hash of each session id is kept, in memory: a restart signs everyone out, which
//! costs an invigilator one paste. A session ends when the token it came from would expire,
//! or after [`SESSION_MAX`], whichever is sooner. Their number is bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::Admin;
use hallrelay_protocol::hex::hex;
use hallrelay_protocol::timefmt::unix_secs;

/// The cookie's name. `__Host-` makes browsers insist on `Secure`, `Path=/` and no `Domain`.
pub const COOKIE: &str = "__Host-hallrelay-session";
/// The longest a session lasts, whatever its token's expiry.
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept at once; signing in past it drops the one closest to its end.
const MAX_SESSIONS: usize = 256;

/// One open session: the Unix second at which it ends, and who signed in (for the audit of
/// what the session does, such as issuing a box-only token).
struct Open {
    end: u64,
    admin: Option<Admin>,
}

/// The open sessions: hash of the id → [`Open`].
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Open>>,
}

impl Sessions {
    /// Opens a session ending at `token_expires` (Unix seconds) or after [`SESSION_MAX`];
    /// returns its id (to put in the cookie) and its lifetime.
    pub fn open(&self, token_expires: u64, now: SystemTime) -> (String, Duration) {
        self.open_with(token_expires, None, now)
    }

    /// [`open`](Self::open) for the holder of `admin`, remembered for the audit log.
    pub fn open_as(&self, admin: &Admin, now: SystemTime) -> (String, Duration) {
        self.open_with(admin.expires, Some(admin.clone()), now)
    }

    fn open_with(
        &self,
        token_expires: u64,
        admin: Option<Admin>,
        now: SystemTime,
    ) -> (String, Duration) {
        let now_secs = unix_secs(now);
        let ends = token_expires.min(now_secs.saturating_add(SESSION_MAX.as_secs()));
        let id: [u8; 32] = rand::random();
        let mut open = self.lock();
        open.retain(|_, o| o.end > now_secs);
        if open.len() >= MAX_SESSIONS
            && let Some(soonest) = open.iter().min_by_key(|(_, o)| o.end).map(|(k, _)| *k)
        {
            open.remove(&soonest);
        }
        open.insert(*blake3::hash(&id).as_bytes(), Open { end: ends, admin });
        (hex(&id), Duration::from_secs(ends.saturating_sub(now_secs)))
    }

    /// Whether `id` names a session that has not ended.
    pub fn is_open(&self, id: &str, now: SystemTime) -> bool {
        let Some(raw) = hallrelay_protocol::hex::parse_hex32(id) else {
            return false;
        };
        self.lock()
            .get(blake3::hash(&raw).as_bytes())
            .is_some_and(|o| o.end > unix_secs(now))
    }

    /// Who signed in to the open session `id`, if it is open and was opened with
    /// [`open_as`](Self::open_as).
    pub fn holder(&self, id: &str, now: SystemTime) -> Option<Admin> {
        let raw = hallrelay_protocol::hex::parse_hex32(id)?;
        self.lock()
            .get(blake3::hash(&raw).as_bytes())
            .filter(|o| o.end > unix_secs(now))
            .and_then(|o| o.admin.clone())
    }

    /// Ends the session `id` (sign-out); unknown ids are ignored.
    pub fn close(&self, id: &str) {
        if let Some(raw) = hallrelay_protocol::hex::parse_hex32(id) {
            self.lock().remove(blake3::hash(&raw).as_bytes());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Open>> {
        match self.open.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// The session id in a request's `Cookie` headers, if any.
pub fn cookie_value(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// The `Set-Cookie` value that stores session `id` for `lifetime`.
pub fn set_cookie(id: &str, lifetime: Duration) -> String {
    format!(
        "{COOKIE}={id}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        lifetime.as_secs()
    )
}

/// The `Set-Cookie` value that makes the browser forget the session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_check_close() {
        let sessions = Sessions::default();
        let now = SystemTime::now();
        let far = unix_secs(now) + 100_000;
        let (id, lifetime) = sessions.open(far, now);
        assert_eq!(lifetime, SESSION_MAX);
        assert!(sessions.is_open(&id, now));
        assert!(!sessions.is_open("00", now));
        assert!(!sessions.is_open(&"0".repeat(64), now));
        assert!(!sessions.is_open(&id, now + SESSION_MAX + Duration::from_secs(1)));
        sessions.close(&id);
        assert!(!sessions.is_open(&id, now));
    }

    #[test]
    fn a_session_ends_with_its_token() {
        let sessions = Sessions::default();
        let now = SystemTime::now();
        let (id, lifetime) = sessions.open(unix_secs(now) + 60, now);
        assert_eq!(lifetime, Duration::from_secs(60));
        assert!(!sessions.is_open(&id, now + Duration::from_secs(61)));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=b; __Host-hallrelay-session=abc; c=d"),
        );
        assert_eq!(cookie_value(&headers), Some("abc"));
        assert!(set_cookie("abc", SESSION_MAX).contains("HttpOnly; Secure; SameSite=Strict"));
    }
}
