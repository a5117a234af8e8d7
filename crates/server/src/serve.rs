//! `hallrelay serve`: assembles the appliance from its configuration and runs it.
//!
//! Start-up order matters: the data dir, the venue key, the store (which knows the appliance
//! id and so the default name), the identity, then the listener. Only once the listener is
//! bound is the box ready. Shutdown runs the other way: stop accepting, drain requests, let
//! the writer commit what is queued, close the store.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Auth, Trust};
use crate::clock::{ClockFileError, ClockSettings, HallClock};
use crate::config::ServeConfig;
use crate::enrollment;
use crate::identity::{Identity, IdentityError};
use crate::replay::Uplink;
use hallrelay_protocol::keys::{KeyFileError, Secret, TokenKey};
use hallrelay_store::{Hall, OpenError, STORE_FILE, Store, StoreFile, StoreOptions};

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
    KeyRing(#[from] crate::keyring::KeyRingError),
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error(transparent)]
    Clock(#[from] ClockFileError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Mdns(#[from] hallrelay_client::discovery::MdnsError),
    #[error(transparent)]
    Enrollment(#[from] crate::enrollment::StateFileError),
    #[error(transparent)]
    Registry(#[from] crate::platform::RegistryError),
    #[error(transparent)]
    AnswerKeys(#[from] crate::platform::AnswerKeysError),
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
    crate::rlimit::raise_open_files(config.limits.max_connections as u64 + 256);
    let parts = Parts::assemble(
        &config.data_dir,
        &config.venue_key_file,
        config.name.clone(),
        config.listen,
        config.store.clone(),
        Some(config.clock.clone()),
    )?;
    let tls = Arc::new(crate::tls::server_config(&parts.identity)?);
    let (listener, ready) = parts.bind(config.listen).await?;
    let advertiser = advertise(&config, &ready, &shutdown)?;
    on_ready(&ready);

    let uplink = Arc::new(Uplink::new(config.replay.as_ref().map(|r| r.cloud.clone())));
    let enrollment = match &config.replay {
        None => enrollment::Start {
            progress: Arc::new(enrollment::Progress::no_cloud()),
            saved: None,
        },
        Some(replay) if replay.credential.is_some() => enrollment::Start {
            progress: Arc::new(enrollment::Progress::static_credential()),
            saved: None,
        },
        Some(_) => enrollment::start(&config.data_dir, config.enrollment_code.is_some())?,
    };
    let progress = enrollment.progress.clone();
    // An enrolled box serves the venue it enrolled into, with the platform's keys it keeps.
    let mut trust = Trust {
        venue: Some(config.venue.clone()),
        platform: config.platform_keys.clone(),
    };
    if let Some(saved) = &enrollment.saved {
        trust = saved.trust(&config.platform_keys);
    }
    let exam_configs = Arc::new(crate::exam_configs::Kept::load(
        &config.data_dir,
        trust.venue.as_deref(),
        &trust.platform,
    ));
    let store = parts.store.clone();
    let identity = parts.identity.clone();
    let metrics = Arc::new(api::metrics::Metrics::new(
        uplink.clone(),
        parts.clock.clone(),
        config.metrics_token.clone(),
    ));
    let observer = metrics.clone();
    store.observe_commits(Box::new(move |sample| observer.observe_commit(sample)));
    let open_connections = metrics.open_connections();
    let supervisor = supervise(&store, &uplink, &shutdown);
    let state = app_state(
        &config,
        parts,
        &ready,
        uplink.clone(),
        metrics,
        progress,
        trust,
        exam_configs.clone(),
    );
    let replay = start_replay(
        &config,
        &identity,
        &ready,
        enrollment,
        &state,
        exam_configs,
        &shutdown,
    );
    sync_clock(&config, &state, &shutdown);
    let handler = move |request| api::routes::handle(state.clone(), request);
    api::server::serve_counted(
        listener,
        Some(tls),
        handler,
        config.limits.clone(),
        shutdown,
        Some(open_connections),
    )
    .await;
    let _ = supervisor.await;
    if let Some(advertiser) = advertiser {
        let _ = advertiser.await;
    }
    if let Some(replay) = replay {
        let _ = replay.await;
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Advertises the box over mDNS when the configuration asks for it, until shutdown starts:
/// the goodbye goes out then, so that clients stop choosing this box while it drains.
fn advertise(
    config: &ServeConfig,
    ready: &Ready,
    shutdown: &CancellationToken,
) -> Result<Option<JoinHandle<()>>, ServeError> {
    if !config.mdns {
        tracing::info!("mDNS is off: give clients the box's URL and pin");
        return Ok(None);
    }
    let advert = crate::mdns::Advert {
        name: ready.name.clone(),
        appliance: ready.appliance.clone(),
        pin: ready.pin.clone(),
        listen: ready.addr,
    };
    let advertiser = crate::mdns::Advertiser::start(&advert, &config.mdns_interfaces)?;
    let stopping = shutdown.clone();
    Ok(Some(tokio::spawn(async move {
        stopping.cancelled().await;
        advertiser.stop().await;
    })))
}

/// Starts replaying to the cloud, when one is configured. A box that enrolls first enrolls
/// (or takes its saved enrollment), then replays with the credential it got, and keeps its
/// enrollment fresh beside replay.
fn start_replay(
    config: &ServeConfig,
    identity: &Arc<Identity>,
    ready: &Ready,
    enrollment: enrollment::Start,
    state: &Arc<AppState>,
    exam_configs: Arc<crate::exam_configs::Kept>,
    shutdown: &CancellationToken,
) -> Option<JoinHandle<()>> {
    let Some(mut replay) = config.replay.clone() else {
        tracing::info!("no cloud configured: autosaves are kept and queued, not replayed");
        return None;
    };
    let store = state.store.clone();
    let (uplink, shutdown) = (state.uplink.clone(), shutdown.clone());
    if replay.credential.is_some() {
        return Some(tokio::spawn(crate::replay::run(
            store, replay, uplink, shutdown,
        )));
    }
    let agent = enrollment::Agent {
        replay: replay.clone(),
        data_dir: config.data_dir.clone(),
        identity: identity.clone(),
        name: ready.name.clone(),
        listen: ready.addr,
        code: config.enrollment_code.clone(),
        progress: enrollment.progress,
        state: state.clone(),
        configured_keys: config.platform_keys.clone(),
        exam_configs,
    };
    let saved = enrollment.saved;
    Some(tokio::spawn(async move {
        let saved = match saved {
            Some(saved) => saved,
            None => match agent.enroll(&shutdown).await {
                Some(saved) => saved,
                None => return,
            },
        };
        replay.credential = Some(Secret::new(saved.credential.clone()));
        let fresh = tokio::spawn({
            let (uplink, shutdown) = (uplink.clone(), shutdown.clone());
            async move { agent.keep_fresh(saved, uplink, shutdown).await }
        });
        crate::replay::run(store, replay, uplink, shutdown).await;
        let _ = fresh.await;
    }))
}

/// Keeps the hall clock synced: from the venue's sources ([`start_venue_clock`]), and from
/// the cloud, when one is configured: the cloud's time over
/// the same authenticated connection replay uses (no credential needed for its health). A
/// cloud reached over plain HTTP authenticates nothing, so its time does not count.
fn sync_clock(config: &ServeConfig, state: &Arc<AppState>, shutdown: &CancellationToken) {
    let Some(clock) = &state.clock else {
        return;
    };
    start_venue_clock(config, clock, shutdown);
    let Some(replay) = &config.replay else {
        return;
    };
    if !replay.cloud.starts_with("https://") {
        tracing::warn!(cloud = %replay.cloud,
            "the cloud is reached over plain HTTP: its time is not authenticated, so the hall clock does not sync from it");
        return;
    }
    match crate::replay::cloud_connection(replay, None) {
        Ok(cloud) => {
            let cloud = cloud.with_timeout(replay.probe_timeout);
            tokio::spawn(crate::clock::sync_from_cloud(
                clock.clone(),
                cloud,
                shutdown.clone(),
            ));
        }
        Err(e) => tracing::warn!(error = %e, "the hall clock cannot sync from the cloud"),
    }
}

/// Starts telling systemd how the box is doing. READY=1 goes out from there, after the first
/// round trip through the store's writer: the store is open and the listener bound
/// (connections wait in its backlog).
fn supervise(store: &Store, uplink: &Arc<Uplink>, shutdown: &CancellationToken) -> JoinHandle<()> {
    let notifier = match crate::notify::Notifier::from_env() {
        Ok(n) => n.map(Arc::new),
        Err(error) => {
            tracing::warn!(%error, "not notifying systemd");
            None
        }
    };
    tokio::spawn(crate::notify::supervise(
        notifier,
        store.clone(),
        uplink.clone(),
        shutdown.clone(),
    ))
}

/// What every request handler of the box shares.
#[expect(
    clippy::too_many_arguments,
    reason = "each is one part of the box the handlers share, built before it"
)]
fn app_state(
    config: &ServeConfig,
    parts: Parts,
    ready: &Ready,
    uplink: Arc<Uplink>,
    metrics: Arc<api::metrics::Metrics>,
    enrollment: Arc<enrollment::Progress>,
    trust: Trust,
    exam_configs: Arc<crate::exam_configs::Kept>,
) -> Arc<AppState> {
    let mut auth = Auth::for_box(&parts.token_key, &ready.pin, trust);
    if let Some(clock) = &parts.clock {
        auth = auth.with_clock(clock.clone());
    }
    Arc::new(AppState {
        clock: parts.clock,
        store: parts.store,
        auth,
        keeps_tokens: true,
        limits: config.limits.clone(),
        cors: api::cors::Cors::new(config.cors_origins.clone()),
        pin: ready.pin.clone(),
        name: ready.name.clone(),
        min_free_bytes: config.store.min_free_bytes,
        uplink,
        console: Some(
            api::console::Console::new(config.data_dir.clone(), config.console_silent_after)
                .with_token_key(parts.token_key.clone(), box_urls(ready)),
        ),
        metrics: Some(metrics),
        identity: Some(parts.identity.clone()),
        platform: None,
        enrollment: Some(enrollment),
        exam_configs: Some(exam_configs),
    })
}

/// The URLs a spare laptop may reach the box at, told with a box-only token: the listen
/// address unless it is every address (then the laptop finds the box over mDNS by its pin).
fn box_urls(ready: &Ready) -> Vec<String> {
    if ready.addr.ip().is_unspecified() {
        Vec::new()
    } else {
        vec![format!("https://{}", ready.addr)]
    }
}

/// What every server in this crate (the box and the reference cloud) starts from: the data
/// dir, the venue key, the store, and the identity.
pub(crate) struct Parts {
    pub token_key: TokenKey,
    pub store: Store,
    pub identity: Arc<Identity>,
    pub name: String,
    /// The box's hall clock, which stamps its receipts (`None` on the reference cloud).
    pub clock: Option<Arc<HallClock>>,
}

impl Parts {
    /// Creates the data dir (0700) if needed, then opens or creates the venue key, the store
    /// (which knows the appliance id, and so the default name) and the identity. With `clock`
    /// (a box), the hall clock resumes after the store's latest receipt and stamps its
    /// receipts.
    pub fn assemble(
        data_dir: &Path,
        venue_key_file: &Path,
        name: Option<String>,
        listen: SocketAddr,
        mut options: StoreOptions,
        clock: Option<ClockSettings>,
    ) -> Result<Self, ServeError> {
        hallrelay_durable::create_private_dir(data_dir).map_err(|source| ServeError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let token_key = TokenKey::load_or_create(venue_key_file)?;
        let file = StoreFile::open(&data_dir.join(STORE_FILE))?;
        let name = name.unwrap_or_else(|| default_name(file.appliance()));
        let ips: Vec<IpAddr> = Some(listen.ip())
            .filter(|ip| !ip.is_unspecified())
            .into_iter()
            .collect();
        let identity = Arc::new(Identity::load_or_create(
            data_dir,
            &[format!("{name}.local")],
            &ips,
        )?);
        let clock = match clock {
            Some(settings) => Some(Arc::new(HallClock::open(
                data_dir,
                file.last_received_ms()?,
                settings,
            )?)),
            None => None,
        };
        if let Some(clock) = &clock {
            options.hall = Some(Hall {
                pin: identity.pin().to_owned(),
                time: clock.clone(),
            });
        }
        let store = file.start(identity.signing_key(), options)?;
        Ok(Self {
            token_key,
            store,
            identity,
            name,
            clock,
        })
    }

    /// Binds the listener and logs the line that says the server is ready.
    pub async fn bind(&self, listen: SocketAddr) -> Result<(TcpListener, Ready), ServeError> {
        let bind_err = |source| ServeError::Bind {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let ready = Ready {
            addr,
            pin: self.identity.pin().to_owned(),
            name: self.name.clone(),
            appliance: self.store.appliance().to_owned(),
        };
        tracing::info!(%addr, pin = %ready.pin, name = %ready.name, appliance = %ready.appliance, "listening");
        Ok((listener, ready))
    }
}

/// The name a box has when none is configured: `hallrelay-` and four hex digits of its id.
pub fn default_name(appliance: &str) -> String {
    format!("hallrelay-{}", appliance.get(..4).unwrap_or(appliance))
}

/// Starts the hall clock's sources that the venue configured: the RTC, read once at start
/// (the clock then holds within the chip's drift), and the NTP servers in `ntp_servers`,
/// polled until shutdown. The cloud's time is synced beside them.
fn start_venue_clock(
    config: &ServeConfig,
    clock: &Arc<crate::clock::HallClock>,
    shutdown: &CancellationToken,
) {
    if let Some(rtc) = &config.rtc {
        crate::clock::set_from_rtc(clock.clone(), rtc.clone());
    }
    if !config.ntp_servers.is_empty() {
        let servers: Vec<String> = config.ntp_servers.iter().map(|s| s.to_string()).collect();
        tracing::info!(servers = %servers.join(" "), "syncing the hall clock from the configured NTP servers");
        tokio::spawn(crate::clock::sync_from_ntp(
            clock.clone(),
            config.ntp_servers.clone(),
            shutdown.clone(),
        ));
    }
}

/// A token that is cancelled on SIGTERM or SIGINT. The signal cancels it before anything
/// else happens (before the log line that says so), so that nothing can come between a
/// signal and the shutdown.
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
        cancel.cancel();
        tracing::info!(signal = which, "shutting down");
    });
    Ok(token)
}
