//! The listener: accept, TLS handshake, HTTP/1.1 or HTTP/2 by ALPN, and a graceful drain.
//!
//! The box always serves TLS. Plain HTTP exists only for the reference cloud on a loopback
//! address (its caller checks that), so tests and demos need no certificate for it.
//!
//! A hostile client must not be able to stop the box from serving others, so everything a
//! client can hold is bounded: the number of connections, in all and per client address
//! (more are closed at accept), the TLS handshake's time, the request head's time and size
//! (431 past `max_header_bytes`), a connection's idle time, and each client address's request
//! rate (429 with `Retry-After`, [`super::ratelimit`]), and the request-body bytes held in
//! memory, in all and per client address ([`super::budget`]: the listener owns the budget and
//! hands each request its client's share; the handler reserves from it before reading). The
//! body's size and time are bounded by the handler. On shutdown
//! the listener closes first, connections are asked to finish their in-flight requests, and
//! the drain is cut off after the grace period.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::Limits;
use super::budget::{BodyBudget, ClientBudget};
use super::error::ApiError;
use super::ratelimit::{ClientConnections, ClientLimiter, ConnectionSlot};

/// Serves `handler` on `listener` (over TLS when `tls` is given) until `shutdown` is
/// cancelled, then drains. A handler that returns an error has its connection closed at once
/// (the reference cloud's fault injection uses this to reset connections).
pub async fn serve<H, F, E>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: H,
    limits: Limits,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    serve_counted(listener, tls, handler, limits, shutdown, None).await;
}

/// [`serve`], moving `open` up and down as connections are accepted and closed (the metrics'
/// open-connections gauge).
pub async fn serve_counted<H, F, E>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: H,
    limits: Limits,
    shutdown: CancellationToken,
    open: Option<Gauge>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let acceptor = tls.map(TlsAcceptor::from);
    let builder = Arc::new(http_builder(&limits));
    let mut gate = Gate::new(&limits);
    let limiter = limits
        .client_rate
        .map(|(rate, burst)| Arc::new(ClientLimiter::new(rate, burst)));
    let budget = BodyBudget::new(limits.body_budget_bytes, limits.client_body_budget_bytes);
    let graceful = GracefulShutdown::new();
    let epoch = Instant::now();

    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let Some(slots) = gate.admit(peer) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = rate_limited(
            handler.clone(),
            limiter.clone(),
            ClientBudget {
                client: peer.ip(),
                budget: budget.clone(),
            },
        );
        let connection = Connection {
            acceptor: acceptor.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            limits: limits.clone(),
            epoch,
            slots,
            open: open.clone().map(OpenConnection::new),
        };
        tokio::spawn(connection.serve(stream, peer, handler));
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "draining connections");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?limits.shutdown_grace, "connections still open after the grace period; closing them");
    }
}

/// HTTP/1.1 and HTTP/2 (chosen by ALPN) with the limits' header size and time bounds.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper refuses less than 8 KiB; the configuration checks that.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout / 2)
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(64);
    builder
}

/// The next connection, or `None` once `shutdown` is cancelled. A failed accept (out of
/// file descriptors and the like) backs off instead of spinning.
async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The connection caps, in all and per client address.
struct Gate {
    slots: Arc<Semaphore>,
    per_client: Arc<ClientConnections>,
    max_connections: usize,
    refused_at_capacity: u64,
}

/// The caps a connection holds until it closes.
type Slots = (OwnedSemaphorePermit, ConnectionSlot);

impl Gate {
    fn new(limits: &Limits) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            per_client: ClientConnections::new(limits.max_connections_per_client),
            max_connections: limits.max_connections,
            refused_at_capacity: 0,
        }
    }

    /// Takes a place for a connection from `peer`, or `None` when the client or the box is
    /// at its cap: the connection is then closed at once, which costs an attacker a
    /// connection and the box nothing.
    fn admit(&mut self, peer: SocketAddr) -> Option<Slots> {
        let Some(client_slot) = self.per_client.try_open(peer.ip()) else {
            tracing::debug!(%peer, "this client holds its share of connections: closing");
            return None;
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.refused_at_capacity += 1;
            if self.refused_at_capacity.is_power_of_two() {
                tracing::warn!(
                    %peer,
                    limit = self.max_connections,
                    refused = self.refused_at_capacity,
                    "connection limit reached: closing new connections"
                );
            }
            return None;
        };
        Some((slot, client_slot))
    }
}

/// An admitted connection: what serving it needs, and the places it holds until it ends.
struct Connection {
    acceptor: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    limits: Limits,
    epoch: Instant,
    slots: Slots,
    open: Option<OpenConnection>,
}

impl Connection {
    /// Completes the TLS handshake (within the handshake timeout) when the server has TLS,
    /// then serves the connection until it ends.
    async fn serve<H, F, E>(self, stream: TcpStream, peer: SocketAddr, handler: H)
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let Self {
            acceptor,
            builder,
            watcher,
            limits,
            epoch,
            slots: _slots,
            open: _open,
        } = self;
        let idle_limit = limits.idle_timeout;
        let Some(acceptor) = acceptor else {
            return serve_io(stream, peer, &builder, handler, watcher, epoch, idle_limit).await;
        };
        match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                serve_io(tls, peer, &builder, handler, watcher, epoch, idle_limit).await;
            }
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }
}

/// One open connection on the gauge, taken off it when dropped.
struct OpenConnection(Gauge);

impl OpenConnection {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The future a connection's service returns: the handler's, or a ready 429.
type Answer<E> = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, E>> + Send>>;

/// `handler` behind the client's request rate limit: a request over it is answered 429 with
/// `Retry-After` and never reaches the handler. A request that does carries the client's
/// share of the body budget in its extensions.
fn rate_limited<H, F, E>(
    handler: H,
    limiter: Option<Arc<ClientLimiter>>,
    budget: ClientBudget,
) -> impl Fn(Request<Incoming>) -> Answer<E> + Clone + Send + Sync + 'static
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
    E: Send + 'static,
{
    move |mut request: Request<Incoming>| {
        let client = budget.client;
        if let Some(limiter) = &limiter
            && let Err(wait) = limiter.check(client)
        {
            let retry_after_secs = wait.as_secs() + 1;
            tracing::debug!(%client, retry_after_secs, "request rate limit");
            let response = ApiError::TooManyRequests { retry_after_secs }.into_response();
            super::drain::discard(request.into_body());
            return Box::pin(std::future::ready(Ok(response)));
        }
        request.extensions_mut().insert(budget.clone());
        Box::pin(handler(request))
    }
}

/// Serves one connection until it ends, is idle for `idle_limit`, or the drain closes it.
async fn serve_io<IO, H, F, E>(
    io: IO,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    handler: H,
    watcher: hyper_util::server::graceful::Watcher,
    epoch: Instant,
    idle_limit: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let activity = Arc::new(AtomicU64::new(0));
    let io = Tracked {
        inner: io,
        activity: activity.clone(),
        epoch,
    };
    // The idle clock starts now, not when the server started.
    io.touch();
    let connection = builder
        .serve_connection(TokioIo::new(io), service_fn(handler))
        .into_owned();
    let connection = watcher.watch(connection);
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = idle(activity, epoch, idle_limit) => {
            tracing::debug!(%peer, "closed an idle connection");
        }
    }
}

/// Resolves once the connection has seen no I/O for `limit`.
async fn idle(activity: Arc<AtomicU64>, epoch: Instant, limit: Duration) {
    loop {
        let last = epoch + Duration::from_millis(activity.load(Ordering::Relaxed));
        let deadline = last + limit;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// A stream that records when it last moved bytes, for the idle timeout.
struct Tracked<T> {
    inner: T,
    activity: Arc<AtomicU64>,
    epoch: Instant,
}

impl<T> Tracked<T> {
    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(now, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
