//! A closed-loop HTTPS load generator: N connections, each sending PUTs back to back.
//!
//! Each simulated client holds one TLS connection (HTTP/1.1, keep-alive) to the target and
//! trusts it by pin, as a candidate's client would. Used by the benchmarks and by
//! `hallrelay loadtest`; it measures what a hall of clients sees: answered requests per
//! second and the latency of each acknowledgement.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// What to load and how hard.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    pub addr: SocketAddr,
    pub pin: String,
    pub connections: usize,
    pub body_size: usize,
    /// Measured time, after `warmup`.
    pub duration: Duration,
    pub warmup: Duration,
    pub exam: String,
}

/// What the load saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// 2xx answers in the measured window.
    pub ok: u64,
    /// Non-2xx answers and transport errors in the measured window.
    pub errors: u64,
    /// Latency of every measured 2xx answer, microseconds, sorted.
    pub latencies_us: Vec<u32>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0..=1), milliseconds.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[rank]) / 1000.0
    }
}

/// Why the load could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("HTTP handshake: {0}")]
    Http(#[from] hyper::Error),
}

/// Runs the plan. `token_for(i)` is the bearer token of client `i`, which saves as candidate
/// `c{i}` of `plan.exam`.
pub async fn run(
    plan: &LoadPlan,
    token_for: impl Fn(usize) -> String,
) -> Result<LoadReport, LoadError> {
    let mut tls = crate::tls::pinned_client_config(vec![plan.pin.clone()])?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let body = Bytes::from(vec![0x5a_u8; plan.body_size]);
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let stop_at = measure_from + plan.duration;

    let mut clients = Vec::with_capacity(plan.connections);
    for i in 0..plan.connections {
        let tcp = TcpStream::connect(plan.addr)
            .await
            .map_err(|source| LoadError::Connect {
                addr: plan.addr,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let stream = connector
            .connect(
                ServerName::try_from("localhost")
                    .map_err(|_| rustls::Error::General("name".into()))?,
                tcp,
            )
            .await
            .map_err(|source| LoadError::Connect {
                addr: plan.addr,
                source,
            })?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let authorization = format!("Bearer {}", token_for(i));
        let path_base = format!("/v1/exams/{}/candidates/c{i}/autosaves/", plan.exam);
        let body = body.clone();
        clients.push(tokio::spawn(client_loop(
            sender,
            authorization,
            path_base,
            body,
            measure_from,
            stop_at,
        )));
    }
    let mut report = LoadReport::default();
    for client in clients {
        if let Ok(part) = client.await {
            report.ok += part.ok;
            report.errors += part.errors;
            report.latencies_us.extend(part.latencies_us);
        }
    }
    report.latencies_us.sort_unstable();
    report.elapsed = plan.duration;
    Ok(report)
}

async fn client_loop(
    mut sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authorization: String,
    path_base: String,
    body: Bytes,
    measure_from: Instant,
    stop_at: Instant,
) -> LoadReport {
    let mut report = LoadReport::default();
    // Seqs start from the clock so that repeated runs against one box never collide.
    let mut seq =
        u64::try_from(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_micros())).unwrap_or(0);
    loop {
        let sent = Instant::now();
        if sent >= stop_at {
            break;
        }
        seq += 1;
        // Every autosave is different bytes, as in a hall: the store's dedup must not flatter.
        let mut payload = body.to_vec();
        let stamp = format!("{path_base}{seq}");
        let n = stamp.len().min(payload.len());
        payload[..n].copy_from_slice(&stamp.as_bytes()[..n]);
        let request = Request::put(stamp)
            .header(header::HOST, "hallrelay")
            .header(header::AUTHORIZATION, &authorization)
            .body(Full::new(Bytes::from(payload)));
        let Ok(request) = request else { break };
        if sender.ready().await.is_err() {
            break;
        }
        let outcome = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let drained = response.into_body().collect().await.is_ok();
                drained && (status == StatusCode::CREATED || status == StatusCode::OK)
            }
            Err(_) => false,
        };
        if sent >= measure_from {
            if outcome {
                report.ok += 1;
                report
                    .latencies_us
                    .push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
            } else {
                report.errors += 1;
            }
        }
        if !outcome && sender.is_closed() {
            break;
        }
    }
    report
}
