//! A keep-alive HTTPS client for one base URL, authenticated with an optional bearer token,
//! directly or through an HTTP proxy ([`crate::proxy`]).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use hallrelay_protocol::keys::Secret;

use crate::CloudTrust;
use crate::proxy::{Proxy, ProxyConnector};

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("bad URL {0}")]
    Url(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The server's key is none of the pins: nothing was sent to it.
    #[error(transparent)]
    NotPinned(crate::tls::NotPinned),
    #[error("request failed: {}", with_causes(.0))]
    Request(hyper_util::client::legacy::Error),
    #[error("reading the answer failed: {0}")]
    Body(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("building the request: {0}")]
    Http(#[from] http::Error),
}

/// An error and its causes, `outer: inner: innermost`: hyper's errors say little alone
/// ("client error (Connect)") and the cause is what an operator needs.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The `message` of a JSON error answer (what the server says went wrong), if it has one.
    pub fn message(&self) -> Option<String> {
        self.json::<serde_json::Value>()
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
    }

    /// The `error` code of a JSON error answer (`conflict`, `after_final`, …), if it has one.
    pub fn code(&self) -> Option<String> {
        self.json::<serde_json::Value>()
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
    }

    /// A header as text, if present and printable.
    pub fn header(&self, name: impl http::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A client for one base URL (`https://host:port`; `http://` only where the caller allows).
#[derive(Clone)]
pub struct Connection {
    base: String,
    token: Option<Secret>,
    http: Client<HttpsConnector<ProxyConnector>, Full<Bytes>>,
    /// The proxy's `Proxy-Authorization`, sent with each request when `base` is plain http
    /// (an https cloud gets it once, in the tunnel's `CONNECT`).
    proxy_authorization: Option<Secret>,
    timeout: Duration,
}

impl Connection {
    /// A client that trusts the server at `base` only if its key matches one of `pins`.
    pub fn pinned(
        base: &str,
        pins: Vec<String>,
        token: Option<Secret>,
    ) -> Result<Self, ClientError> {
        Self::build(
            base,
            crate::tls::pinned_client_config(base, pins)?,
            token,
            None,
        )
    }

    /// A client that trusts the server at `base` through the system's CA roots plus, if
    /// given, the CAs in `ca_file` (PEM): how the box reaches the cloud platform. `base` must
    /// pass [`check_cloud_url`]: a credential sent this way
    /// never crosses a network in plain text, whatever the URL's user information says.
    pub fn with_roots(
        base: &str,
        ca_file: Option<&std::path::Path>,
        token: Option<Secret>,
    ) -> Result<Self, ClientError> {
        check_cloud_url(base).map_err(|e| ClientError::Url(e.to_string()))?;
        Self::build(base, crate::tls::roots_client_config(ca_file)?, token, None)
    }

    /// A client for a cloud at `base` (which must pass [`check_cloud_url`]), trusted as
    /// `trust` says, through `proxy` when one is given: the one way to build a connection to
    /// the cloud that honours a campus proxy. TLS to the cloud runs inside the proxy's tunnel,
    /// so pins and CA checks are those of a direct connection. A plain-http cloud (loopback
    /// only) goes only through a proxy on loopback too, so neither its credential nor the
    /// proxy's crosses a network in the clear.
    pub fn to_cloud(
        base: &str,
        trust: &CloudTrust,
        proxy: Option<&Proxy>,
        token: Option<Secret>,
    ) -> Result<Self, ClientError> {
        check_cloud_url(base).map_err(|e| ClientError::Url(e.to_string()))?;
        if let Some(proxy) = proxy {
            check_proxy_for(base, proxy).map_err(|e| ClientError::Url(e.to_string()))?;
        }
        let tls = match trust {
            CloudTrust::Roots { ca_file } => crate::tls::roots_client_config(ca_file.as_deref())?,
            CloudTrust::Pins(pins) => crate::tls::pinned_client_config(base, pins.clone())?,
        };
        Self::build(base, tls, token, proxy.cloned())
    }

    fn build(
        base: &str,
        tls: rustls::ClientConfig,
        token: Option<Secret>,
        proxy: Option<Proxy>,
    ) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("https://") && !base.starts_with("http://") {
            return Err(ClientError::Url(base));
        }
        let proxy_authorization = if base.starts_with("http://") {
            proxy.as_ref().and_then(|p| p.authorization().cloned())
        } else {
            None
        };
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(ProxyConnector::new(tcp, proxy));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            base,
            token,
            http,
            proxy_authorization,
            timeout: Duration::from_secs(30),
        })
    }

    /// The same client with another bearer token.
    pub fn with_token(&self, token: Option<Secret>) -> Self {
        Self {
            token,
            ..self.clone()
        }
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET {base}{path}`.
    pub async fn get(&self, path: &str) -> Result<Reply, ClientError> {
        self.send(Method::GET, path, HeaderMap::new(), Bytes::new())
            .await
    }

    /// `PUT {base}{path}` with `body`.
    pub async fn put(
        &self,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        self.send(Method::PUT, path, headers, body).await
    }

    /// Sends one request and reads the whole answer, within the client's timeout.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .body(Full::new(body))?;
        request.headers_mut().extend(headers);
        if let Some(token) = &self.token {
            let value = format!("Bearer {}", token.expose())
                .parse()
                .map_err(|_| ClientError::Url("the token is not a valid header value".into()))?;
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        if let Some(authorization) = &self.proxy_authorization {
            let value = authorization.expose().parse().map_err(|_| {
                ClientError::Url("the proxy's credential is not a valid header value".into())
            })?;
            request
                .headers_mut()
                .insert(header::PROXY_AUTHORIZATION, value);
        }
        let exchange = async {
            let response =
                self.http.request(request).await.map_err(
                    |error| match crate::tls::NotPinned::find(&error) {
                        Some(refusal) => ClientError::NotPinned(refusal.clone()),
                        None => ClientError::Request(error),
                    },
                )?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, ClientError>(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }
}

/// Whether `proxy` may carry requests to the cloud at `base`: a plain-http cloud only
/// through a proxy on loopback, since the request (and its credentials) travel to the proxy
/// in the clear.
pub fn check_proxy_for(base: &str, proxy: &Proxy) -> Result<(), BadCloudUrl> {
    if base.starts_with("http://") && !proxy.is_loopback() {
        return Err(BadCloudUrl(format!(
            "the cloud {base:?} is plain http, so its requests would reach the proxy at \
             {proxy} in the clear; use an https cloud, or a proxy on loopback"
        )));
    }
    Ok(())
}

/// A cloud URL that is not one, or that would send a credential or answers across a network
/// in the clear.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadCloudUrl(String);

/// `https://` anywhere; `http://` only to a loopback host, so credentials and answers never
/// cross a network in the clear.
///
/// The host checked is the one the HTTP client will connect to: the URL is parsed as
/// [`http::Uri`], as the client parses it, so `http://localhost:1@example.org/` names
/// example.org (with `localhost:1` as user information) and is refused. User information is
/// refused outright: the box's credential goes in `cloud_token_file`, never in a URL.
pub fn check_cloud_url(url: &str) -> Result<(), BadCloudUrl> {
    let bad = BadCloudUrl;
    let uri: http::Uri = url.parse().map_err(|_| {
        bad(format!(
            "{url:?} is not a URL; write e.g. https://cloud.example.org"
        ))
    })?;
    let authority = uri
        .authority()
        .ok_or_else(|| bad(format!("{url:?} has no host")))?;
    if authority.as_str().contains('@') {
        return Err(bad(format!(
            "{url:?} carries user information before '@'; put the credential in \
             cloud_token_file and give the cloud as https://HOST[:PORT]"
        )));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(bad(format!("{url:?} has no host")));
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = bare.eq_ignore_ascii_case("localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(bad(format!(
                    "{url:?}: plain http is allowed only to loopback; use https"
                )))
            }
        }
        _ => Err(bad(format!("{url:?} must start with https://"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_urls() {
        for ok in [
            "https://cloud.example.org",
            "http://127.0.0.1:9000",
            "http://[::1]:80/x",
            "http://localhost:1",
        ] {
            assert!(check_cloud_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:80",
            "http://cloud.example.org",
            "ftp://x",
            "cloud",
            "https://",
            // The host the client connects to is example.org; `localhost:1` is user info.
            "http://localhost:1@example.org/",
            "http://127.0.0.1@example.org:80/",
            "http://[::1]@example.org/",
            "https://user:secret@cloud.example.org/",
        ] {
            assert!(check_cloud_url(bad).is_err(), "{bad}");
        }
    }

    /// A credential sent through a CA-trusted connection never goes out in plain text: the
    /// host checked is the one the client connects to, not what precedes an `@`.
    #[test]
    fn credentials_never_travel_in_plain_text_to_another_host() {
        let token = || Some(Secret::new("credential"));
        assert!(Connection::with_roots("http://127.0.0.1:9", None, token()).is_ok());
        for url in [
            "http://localhost:1@example.org/",
            "http://example.org",
            "https://user:pass@example.org",
        ] {
            assert!(
                matches!(
                    Connection::with_roots(url, None, token()),
                    Err(ClientError::Url(_))
                ),
                "{url}"
            );
        }
    }
}
