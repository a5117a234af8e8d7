//! `hallrelay serve`: assembles the appliance from its configuration and runs it.
//!
//! Start-up order matters: the data dir, the venue key, the store (which knows the appliance
//! id and so the default name), the identity, then the listener. Only once the listener is
//! bound is the box ready. Shutdown runs the other way: stop accepting, drain requests, let
//! the writer commit what is queued, close the store.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Auth};
use crate::config::ServeConfig;
use crate::identity::{Identity, IdentityError};
use crate::keyfile::{KeyFileError, VenueKey};
use crate::store::{OpenError, STORE_FILE, StoreFile};

/// Why the box could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("cannot create the data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound, ready box: its address and pin, and the future that runs it.
pub struct Ready {
    pub addr: SocketAddr,
    pub pin: String,
    pub name: String,
    pub appliance: String,
}

/// Starts the appliance and runs it until `shutdown` is cancelled. `on_ready` is called once
/// the listener is bound.
pub async fn run(
    config: ServeConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), ServeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(|source| ServeError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    let venue_key = VenueKey::load_or_create(&config.venue_key_file)?;
    let file = StoreFile::open(&config.data_dir.join(STORE_FILE))?;
    let name = config
        .name
        .clone()
        .unwrap_or_else(|| default_name(file.appliance()));
    let ips: Vec<IpAddr> = Some(config.listen.ip())
        .filter(|ip| !ip.is_unspecified())
        .into_iter()
        .collect();
    let identity = Arc::new(Identity::load_or_create(
        &config.data_dir,
        &[format!("{name}.local")],
        &ips,
    )?);
    let tls = Arc::new(crate::tls::server_config(&identity)?);
    let store = file.start(identity.clone(), config.store.clone())?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let ready = Ready {
        addr,
        pin: identity.pin().to_owned(),
        name: name.clone(),
        appliance: store.appliance().to_owned(),
    };
    tracing::info!(%addr, pin = %ready.pin, name = %name, appliance = %ready.appliance, "listening");
    if config.mdns {
        tracing::warn!("mDNS advertisement is not built yet: give clients the box's URL and pin");
    }
    on_ready(&ready);

    let state = Arc::new(AppState {
        store: store.clone(),
        auth: Auth::new(venue_key, Vec::new()),
        limits: config.limits.clone(),
        cors: api::cors::Cors::new(config.cors_origins.clone()),
        pin: identity.pin().to_owned(),
        name,
        min_free_bytes: config.store.min_free_bytes,
    });
    let handler = move |request| api::routes::handle(state.clone(), request);
    api::server::serve(listener, tls, handler, config.limits.clone(), shutdown).await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The name a box has when none is configured: `hallrelay-` and four hex digits of its id.
pub fn default_name(appliance: &str) -> String {
    format!("hallrelay-{}", appliance.get(..4).unwrap_or(appliance))
}

/// A token that is cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "shutting down");
        cancel.cancel();
    });
    Ok(token)
}
