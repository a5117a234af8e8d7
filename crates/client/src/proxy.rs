//! The HTTP proxy a connection to the cloud goes through, when a campus network requires one.
//!
//! [`Proxy`] is the parsed `cloud_proxy` URL (`http://[USER:PASSWORD@]HOST:PORT`); its
//! password never shows in `Debug`, `Display` or an error. [`ProxyConnector`] is the TCP layer
//! under the TLS connector: without a proxy it is hyper-util's `HttpConnector`; with one it
//! connects to the proxy and, for an `https` destination, opens a `CONNECT` tunnel, so that TLS
//! to the cloud runs inside the tunnel and pins and CA checks are those of a direct
//! connection. For a plain-`http` destination (a loopback reference cloud) it marks the
//! connection as proxied, so hyper writes requests in absolute form, and [`Connection`]
//! adds `Proxy-Authorization` to each request. A proxy that refuses says so, with the
//! status and what to check ([`ProxyError`]).
//!
//! [`Connection`]: crate::Connection

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use hallrelay_protocol::keys::Secret;

/// The longest answer to `CONNECT` read before giving up on the proxy.
const MAX_CONNECT_ANSWER: usize = 8 * 1024;

/// An HTTP proxy: where it is and, if it asks for one, the credential it takes.
#[derive(Clone)]
pub struct Proxy {
    host: String,
    port: u16,
    /// `Basic base64(user:password)`, the value of `Proxy-Authorization`.
    authorization: Option<Secret>,
}

/// A `cloud_proxy` URL that is not one. The message never repeats the password.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadProxyUrl(String);

impl std::str::FromStr for Proxy {
    type Err = BadProxyUrl;

    /// `http://[USER:PASSWORD@]HOST:PORT[/]`. User and password may be percent-encoded.
    fn from_str(url: &str) -> Result<Self, BadProxyUrl> {
        let example = "write it as http://HOST:PORT or http://USER:PASSWORD@HOST:PORT";
        let Some(rest) = url.strip_prefix("http://") else {
            let scheme = url.split_once("://").map_or("", |(s, _)| s);
            return Err(BadProxyUrl(if scheme.eq_ignore_ascii_case("https") {
                format!(
                    "the proxy is reached over plain http (the cloud's TLS runs inside its \
                     tunnel), and https:// proxies are not supported; {example}"
                )
            } else {
                format!("a proxy URL starts with http://; {example}")
            }));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(BadProxyUrl(format!(
                "a proxy URL has no path or query; {example}"
            )));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let shown = format!("http://{hostport}");
        let authority: http::uri::Authority = hostport
            .parse()
            .map_err(|_| BadProxyUrl(format!("{shown:?} is not a proxy URL; {example}")))?;
        let port = authority.port_u16().ok_or_else(|| {
            BadProxyUrl(format!(
                "{shown:?} has no port; give the proxy's port, e.g. http://{}:3128",
                authority.host()
            ))
        })?;
        if authority.host().is_empty() || port == 0 {
            return Err(BadProxyUrl(format!(
                "{shown:?} is not a proxy URL; {example}"
            )));
        }
        let authorization = match userinfo {
            None => None,
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decoded = |part: &str, what: &str| {
                    hallrelay_protocol::v1::platform::decode_segment(part).ok_or_else(|| {
                        BadProxyUrl(format!(
                            "the proxy's {what} in cloud_proxy has a bad %-escape; write a \
                             character that is not a letter or digit as %XX"
                        ))
                    })
                };
                let credential = format!(
                    "{}:{}",
                    decoded(user, "user")?,
                    decoded(password, "password")?
                );
                let encoded = base64::engine::general_purpose::STANDARD.encode(credential);
                Some(Secret::new(format!("Basic {encoded}")))
            }
        };
        Ok(Self {
            host: authority.host().to_owned(),
            port,
            authorization,
        })
    }
}

impl Proxy {
    /// Whether the URL carried a user and password.
    pub fn has_credential(&self) -> bool {
        self.authorization.is_some()
    }

    /// Whether the proxy is on this machine (`localhost` or a loopback address).
    pub fn is_loopback(&self) -> bool {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        bare.eq_ignore_ascii_case("localhost")
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The `Proxy-Authorization` value, for the one place that sends it.
    pub(crate) fn authorization(&self) -> Option<&Secret> {
        self.authorization.as_ref()
    }

    fn uri(&self) -> Result<Uri, ProxyError> {
        format!("http://{}:{}", self.host, self.port)
            .parse()
            .map_err(|_| ProxyError::Destination(self.to_string()))
    }
}

/// `http://HOST:PORT`: the proxy as logs and messages name it, without its credential.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credential = if self.authorization.is_some() {
            "MASKED@"
        } else {
            ""
        };
        write!(f, "Proxy(http://{credential}{}:{})", self.host, self.port)
    }
}

impl<'de> serde::Deserialize<'de> for Proxy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why the proxy did not give a connection to the cloud.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    #[error("the proxy at {proxy} cannot be reached: {source}")]
    Unreachable {
        proxy: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the proxy at {proxy} refused: {status}: {advice}")]
    Refused {
        proxy: String,
        /// The proxy's status line after the version, e.g. `407 Proxy Authentication Required`.
        status: String,
        advice: &'static str,
    },
    #[error("the proxy at {proxy} broke off the tunnel: {why}")]
    Broken { proxy: String, why: String },
    #[error("the cloud address {0:?} cannot be sent to a proxy")]
    Destination(String),
}

/// What to check when the proxy answers `CONNECT` with `status`.
fn advice(status: u16) -> &'static str {
    match status {
        // 407 is the standard answer; some proxies (tinyproxy 1.11) answer 401.
        401 | 407 => "check cloud_proxy's user and password",
        403 => {
            "the proxy does not let this box reach the cloud; ask the network's administrators to allow it (CONNECT to the cloud's host and port)"
        }
        // tinyproxy says 500 ("Unable to connect") where others say 502.
        500 | 502..=504 => {
            "the proxy could not reach the cloud; check the cloud URL, and that the proxy has a working uplink"
        }
        _ => "check cloud_proxy, and the proxy's log",
    }
}

/// The TCP layer under the TLS connector: direct, or through a [`Proxy`].
#[derive(Clone)]
pub struct ProxyConnector {
    tcp: HttpConnector,
    proxy: Option<Arc<Proxy>>,
}

impl ProxyConnector {
    pub fn new(tcp: HttpConnector, proxy: Option<Proxy>) -> Self {
        Self {
            tcp,
            proxy: proxy.map(Arc::new),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = ProxyStream;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<Result<ProxyStream, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut tcp = self.tcp.clone();
        let Some(proxy) = self.proxy.clone() else {
            return Box::pin(async move {
                let io = tcp.call(dst).await?;
                Ok(ProxyStream {
                    io,
                    absolute_form: false,
                })
            });
        };
        Box::pin(async move {
            let unreachable =
                |source: Box<dyn std::error::Error + Send + Sync>| ProxyError::Unreachable {
                    proxy: proxy.to_string(),
                    source,
                };
            let mut io = tcp
                .call(proxy.uri()?)
                .await
                .map_err(|e| unreachable(e.into()))?;
            if dst.scheme() == Some(&http::uri::Scheme::HTTP) {
                // Plain http: requests go to the proxy in absolute form.
                return Ok(ProxyStream {
                    io,
                    absolute_form: true,
                });
            }
            let target =
                destination(&dst).ok_or_else(|| ProxyError::Destination(dst.to_string()))?;
            tunnel(io.inner_mut(), &proxy, &target).await?;
            tracing::debug!(proxy = %proxy, target = %target, "tunnel to the cloud open");
            Ok(ProxyStream {
                io,
                absolute_form: false,
            })
        })
    }
}

/// `HOST:PORT` for `CONNECT` (port 443 when the URL gives none).
fn destination(dst: &Uri) -> Option<String> {
    let host = dst.host()?;
    Some(format!("{host}:{}", dst.port_u16().unwrap_or(443)))
}

/// Asks the proxy for a tunnel to `target` and reads its answer, up to the blank line.
async fn tunnel(tcp: &mut TcpStream, proxy: &Proxy, target: &str) -> Result<(), ProxyError> {
    let broken = |why: String| ProxyError::Broken {
        proxy: proxy.to_string(),
        why,
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(authorization) = proxy.authorization() {
        request.push_str("Proxy-Authorization: ");
        request.push_str(authorization.expose());
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| broken(format!("sending CONNECT: {e}")))?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let head_end = loop {
        if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if answer.len() > MAX_CONNECT_ANSWER {
            return Err(broken(format!(
                "its answer to CONNECT is longer than {MAX_CONNECT_ANSWER} bytes"
            )));
        }
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| broken(format!("reading its answer to CONNECT: {e}")))?;
        if n == 0 {
            return Err(broken(
                "it closed the connection instead of answering CONNECT".into(),
            ));
        }
        answer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&answer[..head_end]);
    let status_line = head.lines().next().unwrap_or_default();
    let (code, status) = parse_status(status_line).ok_or_else(|| {
        broken(format!(
            "its answer to CONNECT is not HTTP: {status_line:?}"
        ))
    })?;
    if !(200..300).contains(&code) {
        return Err(ProxyError::Refused {
            proxy: proxy.to_string(),
            status,
            advice: advice(code),
        });
    }
    if head_end != answer.len() {
        // The client speaks first in TLS: bytes before it did are not the cloud's.
        return Err(broken(
            "it sent data into the tunnel before the TLS handshake".into(),
        ));
    }
    Ok(())
}

/// `HTTP/1.1 407 Proxy Authentication Required` → (407, "407 Proxy Authentication Required").
fn parse_status(line: &str) -> Option<(u16, String)> {
    let rest = line.strip_prefix("HTTP/1.")?;
    let (_, status) = rest.split_once(' ')?;
    let code: u16 = status.get(..3)?.parse().ok()?;
    let status: String = status
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    Some((code, status))
}

/// A TCP connection, direct or to a proxy, as hyper uses it.
pub struct ProxyStream {
    io: TokioIo<TcpStream>,
    /// Requests on it go to a proxy in absolute form (plain http through a proxy).
    absolute_form: bool,
}

impl Connection for ProxyStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.absolute_form)
    }
}

impl Read for ProxyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for ProxyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls() {
        let p: Proxy = "http://proxy.campus:3128".parse().unwrap();
        assert_eq!(p.to_string(), "http://proxy.campus:3128");
        assert!(!p.has_credential() && !p.is_loopback());
        let p: Proxy = "http://127.0.0.1:8080/".parse().unwrap();
        assert!(p.is_loopback());
        let p: Proxy = "http://exam%40hall:p%3Ass@[::1]:3128".parse().unwrap();
        assert!(p.is_loopback());
        // Basic base64("exam@hall:p:ss")
        assert_eq!(
            p.authorization().unwrap().expose(),
            "Basic ZXhhbUBoYWxsOnA6c3M="
        );
        for bad in [
            "proxy.campus:3128",
            "https://proxy.campus:3128",
            "socks5://proxy:1080",
            "http://proxy.campus",
            "http://proxy.campus:0",
            "http://:3128",
            "http://proxy:3128/path",
            "http://u:%zz@proxy:3128",
        ] {
            assert!(bad.parse::<Proxy>().is_err(), "{bad}");
        }
    }

    /// The password shows nowhere: not in Debug, Display, nor in an error about the URL.
    #[test]
    fn the_password_never_shows() {
        let p: Proxy = "http://exam:hunter2@proxy.campus:3128".parse().unwrap();
        for shown in [format!("{p:?}"), p.to_string()] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("exam:"),
                "{shown}"
            );
        }
        let bad = "http://exam:hunter2@proxy.campus"
            .parse::<Proxy>()
            .unwrap_err();
        assert!(!bad.to_string().contains("hunter2"), "{bad}");
    }

    #[test]
    fn connect_answers() {
        assert_eq!(
            parse_status("HTTP/1.0 407 Proxy Authentication Required"),
            Some((407, "407 Proxy Authentication Required".into()))
        );
        assert_eq!(
            parse_status("HTTP/1.1 200 Connection established"),
            Some((200, "200 Connection established".into()))
        );
        assert_eq!(parse_status("SSH-2.0-OpenSSH"), None);
    }
}
