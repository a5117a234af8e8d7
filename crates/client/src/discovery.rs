//! Finding boxes on the hall network over mDNS (DNS-SD).
//!
//! A box advertises [`SERVICE_TYPE`] with its name as the instance, a `NAME.local` host
//! record, and TXT records `v` (this format's version), `id` (appliance id), `pin` and `path`
//! (the API's prefix); the server's `mdns` module is that side. Clients browse for the type. mDNS is for finding only: the pin
//! in the TXT record is a hint that lets a client skip boxes it would refuse anyway; trust
//! comes from the pin the client already holds, checked in the TLS handshake.
//!
//! mdns-sd enables every interface by default, loopback included. Both sides here start from
//! no interface and enable only what was asked for (by name), or what the box listens on, so
//! a box bound to one address is never announced on another interface.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mdns_sd::{IfKind, ScopedIp, ServiceDaemon, ServiceEvent};
use tokio_util::sync::CancellationToken;

use hallrelay_protocol::v1::SERVICE_TYPE;

/// mDNS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("mDNS: {0}")]
pub struct MdnsError(#[from] mdns_sd::Error);

/// An mDNS daemon on the named interfaces only, or on `default` when the list is empty:
/// mdns-sd alone would use every interface. The box's advertiser starts from it too.
pub fn daemon(interfaces: &[String], default: IfKind) -> Result<ServiceDaemon, MdnsError> {
    let daemon = ServiceDaemon::new()?;
    daemon.disable_interface(IfKind::All)?;
    if interfaces.is_empty() {
        daemon.enable_interface(default)?;
    } else {
        let named: Vec<IfKind> = interfaces.iter().map(IfKind::from).collect();
        daemon.enable_interface(named)?;
    }
    Ok(daemon)
}

/// A box found on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The instance name: the box's configured name.
    pub name: String,
    /// Its `NAME.local.` host name.
    pub host: String,
    /// Every address it announced, with its port; IPv4 first.
    pub addrs: Vec<SocketAddr>,
    /// The pin from its TXT record: a hint, never a reason to trust.
    pub pin_hint: Option<String>,
    pub appliance: Option<String>,
}

impl Found {
    /// `https://ADDR:PORT` for each announced address.
    pub fn urls(&self) -> Vec<String> {
        self.addrs.iter().map(|a| format!("https://{a}")).collect()
    }

    fn from_resolved(service: &mdns_sd::ResolvedService) -> Self {
        let name = service
            .fullname
            .strip_suffix(SERVICE_TYPE)
            .map(|n| n.trim_end_matches('.'))
            .unwrap_or(&service.fullname)
            .to_owned();
        let txt = |key| service.get_property_val_str(key).map(str::to_owned);
        let mut addrs: Vec<SocketAddr> = service
            .addresses
            .iter()
            .map(|scoped| socket_addr(scoped, service.port))
            .collect();
        addrs.sort_by_key(|a| (a.is_ipv6(), a.ip()));
        Self {
            name,
            host: service.host.clone(),
            addrs,
            pin_hint: txt("pin"),
            appliance: txt("id"),
        }
    }
}

/// A socket address for an announced address; an IPv6 link-local one keeps the interface it
/// was seen on, without which it cannot be reached.
fn socket_addr(scoped: &ScopedIp, port: u16) -> SocketAddr {
    match scoped {
        ScopedIp::V6(v6) if v6.addr().is_unicast_link_local() => {
            SocketAddr::V6(SocketAddrV6::new(*v6.addr(), port, 0, v6.scope_id().index))
        }
        other => SocketAddr::new(other.to_ip_addr(), port),
    }
}

/// A running browse for boxes: what has been found so far, kept current as boxes come and go.
/// Cheap to clone; the browse stops when the last clone is dropped.
#[derive(Clone)]
pub struct Browser {
    inner: Arc<BrowserInner>,
}

struct BrowserInner {
    daemon: ServiceDaemon,
    started: tokio::time::Instant,
    found: Arc<Mutex<HashMap<String, Found>>>,
    changed: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
}

impl Drop for BrowserInner {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = self.daemon.shutdown();
    }
}

impl Browser {
    /// Starts browsing on `interfaces` (by name; empty means every interface).
    pub fn start(interfaces: &[String]) -> Result<Self, MdnsError> {
        let daemon = daemon(interfaces, IfKind::All)?;
        let events = daemon.browse(SERVICE_TYPE)?;
        let found = Arc::new(Mutex::new(HashMap::new()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let stop = CancellationToken::new();
        let (map, notify, stopped) = (found.clone(), changed.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stopped.cancelled() => break,
                    event = events.recv_async() => match event {
                        Ok(event) => event,
                        Err(_) => break,
                    },
                };
                let mut boxes = map.lock().unwrap_or_else(|p| p.into_inner());
                match event {
                    ServiceEvent::ServiceResolved(service) if service.is_valid() => {
                        let found = Found::from_resolved(&service);
                        tracing::debug!(name = %found.name, addrs = ?found.addrs, "found a box");
                        boxes.insert(service.fullname.clone(), found);
                    }
                    ServiceEvent::ServiceRemoved(_, fullname) => {
                        boxes.remove(&fullname);
                    }
                    _ => continue,
                }
                drop(boxes);
                notify.notify_waiters();
            }
        });
        Ok(Self {
            inner: Arc::new(BrowserInner {
                daemon,
                started: tokio::time::Instant::now(),
                found,
                changed,
                stop,
            }),
        })
    }

    /// The boxes found so far, by name.
    pub fn found(&self) -> Vec<Found> {
        let boxes = self.inner.found.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<Found> = boxes.values().cloned().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Waits until at least one box that `wanted` accepts is found, or until the browse has
    /// been running for `timeout` (so a browse started long ago does not wait at all), and
    /// returns every box found so far that `wanted` accepts (possibly none).
    pub async fn wait_for(&self, timeout: Duration, wanted: impl Fn(&Found) -> bool) -> Vec<Found> {
        let deadline = self.inner.started + timeout;
        loop {
            let changed = self.inner.changed.notified();
            let matching: Vec<Found> = self.found().into_iter().filter(|f| wanted(f)).collect();
            if !matching.is_empty() {
                return matching;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return matching;
            }
        }
    }
}

/// Browses for `timeout` and returns every box found, by name: what `hallrelay discover`
/// prints.
pub async fn discover(interfaces: &[String], timeout: Duration) -> Result<Vec<Found>, MdnsError> {
    let browser = Browser::start(interfaces)?;
    tokio::time::sleep(timeout).await;
    Ok(browser.found())
}
