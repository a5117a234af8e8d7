//! `hallrelay cloud`: the reference cloud ingest, the contract platform vendors can read.
//!
//! It speaks the box's own API (the same routes and handlers) over its own redb store, with no
//! outbox: it is the end of the line. It accepts candidate tokens under the venue key, so a
//! client can save to it directly, and the boxes' bearer credentials listed in
//! `--appliance-token-file`; for an autosave that comes through a box it keeps the box's
//! receipt beside the payload, as evidence of hall time. Identical re-sends answer 200,
//! different bytes 409, and a 2xx only after a durable commit, as on the box.
//!
//! It also plays the exam platform ([`crate::platform`]): it issues enrollment codes, enrolls
//! boxes into `platform.redb`, accepts their credentials for replay (and for nothing that
//! reads), and lists each exam's relays to its candidates. It holds the exams' answer keys
//! (`answer-keys.key`): it gives each candidate the signed keys their saves are sealed to, and
//! opens a stored save for a platform admin; the box it plays against never can.
//!
//! It speaks plain HTTP only on a loopback address; anywhere else it serves TLS with its own
//! identity. For tests, `--fault-rate` answers that share of requests with 500 and
//! `--reset-rate` drops that share of connections without an answer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::api::error::json_response;
use crate::api::{self, AppState, Auth, Limits};
use crate::keyring::KeyRing;
use crate::replay::Uplink;
use crate::serve::{Parts, Ready, ServeError};
use hallrelay_protocol::keys::{KeyFileError, Secret};
use hallrelay_store::StoreOptions;

/// How the reference cloud runs.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub venue_key_file: PathBuf,
    pub appliance_token_file: Option<PathBuf>,
    /// 1 or 2: the exams' `hall_copies` (two-box writing on or off).
    pub hall_copies: u8,
    /// Serve TLS even on loopback.
    pub tls: bool,
    /// Share of requests answered 500 (fault injection for tests), 0..=1.
    pub fault_rate: f64,
    /// Share of requests whose connection is dropped without an answer, 0..=1.
    pub reset_rate: f64,
    pub limits: Limits,
}

/// Reads the appliance credentials: one a line; blank lines and `#` comments are skipped.
pub fn load_appliance_tokens(path: &Path) -> Result<Vec<Secret>, KeyFileError> {
    let bytes = hallrelay_protocol::keys::read_secret(path)?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Secret::new)
        .collect())
}

/// How often the running cloud re-reads its key ring, so that `cloud rotate-key` takes effect
/// without a restart.
const KEY_RING_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Publishes what the key ring holds as it changes.
async fn follow_key_ring(ring: KeyRing, state: Arc<AppState>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(KEY_RING_POLL) => {}
        }
        let mut trust = state.auth.trust();
        match ring.published() {
            Ok(keys) if keys != trust.platform => {
                tracing::info!(
                    keys = keys.keys().len(),
                    "the platform's published keys changed"
                );
                trust.platform = keys;
                state.auth.set_trust(trust);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the platform's keys; keeping the last ones")
            }
        }
    }
}

/// An injected fault: the connection is closed without an answer.
#[derive(Debug, thiserror::Error)]
#[error("injected connection reset")]
pub struct InjectedReset;

/// Runs the reference cloud until `shutdown`.
pub async fn run(
    config: CloudConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), ServeError> {
    let options = StoreOptions {
        outbox: false,
        ..StoreOptions::default()
    };
    crate::rlimit::raise_open_files(config.limits.max_connections as u64 + 256);
    let parts = Parts::assemble(
        &config.data_dir,
        &config.venue_key_file,
        Some("hallrelay-cloud".into()),
        config.listen,
        options.clone(),
        None,
    )?;
    let credentials = match &config.appliance_token_file {
        Some(path) => load_appliance_tokens(path)?,
        None => Vec::new(),
    };
    let ring = KeyRing::open(&config.venue_key_file)?;
    let answer_keys = crate::platform::AnswerKeys::open_or_create(&config.data_dir)?;
    let mut platform =
        crate::platform::Platform::open(&config.data_dir, ring.clone(), answer_keys)?;
    platform.hall_copies = config.hall_copies;
    let platform = Arc::new(platform);
    let tls = if config.tls || !config.listen.ip().is_loopback() {
        Some(Arc::new(crate::tls::server_config(&parts.identity)?))
    } else {
        None
    };
    let (listener, ready) = parts.bind(config.listen).await?;
    tracing::info!(
        scheme = if tls.is_some() { "https" } else { "http" },
        appliances = credentials.len(),
        "reference cloud ready"
    );
    on_ready(&ready);
    let store = parts.store.clone();
    let state = Arc::new(AppState {
        store: parts.store,
        auth: Auth::for_cloud(ring.published()?, credentials)
            .with_boxes(Arc::new(platform.registry.clone())),
        keeps_tokens: false,
        limits: config.limits.clone(),
        cors: api::cors::Cors::new(vec!["*".into()]),
        pin: ready.pin.clone(),
        name: ready.name.clone(),
        min_free_bytes: options.min_free_bytes,
        uplink: Arc::new(Uplink::new(None)),
        console: None,
        metrics: None,
        identity: None,
        platform: Some(Arc::new(platform.clone())),
        enrollment: None,
        clock: None,
        exam_configs: Some(Arc::new(platform)),
    });
    tokio::spawn(follow_key_ring(ring, state.clone(), shutdown.clone()));
    let (fault_rate, reset_rate) = (config.fault_rate, config.reset_rate);
    let handler = move |request: Request<Incoming>| {
        let state = state.clone();
        async move {
            let roll: f64 = rand::random();
            if roll < reset_rate {
                return Err(InjectedReset);
            }
            if roll < reset_rate + fault_rate {
                let body = serde_json::json!({"error": "injected", "message": "injected fault"});
                return Ok(json_response(StatusCode::INTERNAL_SERVER_ERROR, &body));
            }
            let response: Response<Full<Bytes>> = match api::routes::handle(state, request).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(response)
        }
    };
    api::server::serve(listener, tls, handler, config.limits.clone(), shutdown).await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}
