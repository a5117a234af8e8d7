//! Being found: the box's mDNS (DNS-SD) advertisement on the hall network.
//!
//! The box announces [`SERVICE_TYPE`] with its name as the instance, a `NAME.local` host
//! record, and TXT records `v`, `id`, `pin` and `path` (docs/discovery.md); clients browse for
//! it with the client crate's `discovery`. It advertises only on the interfaces it was given, or
//! the one its listener is bound to, never on every interface by default.

use std::net::SocketAddr;
use std::time::Duration;

use hallrelay_client::discovery::{MdnsError, daemon};
use hallrelay_protocol::v1::{API_PATH, SERVICE_TYPE, TXT_VERSION};
use mdns_sd::{DaemonEvent, IfKind, ServiceDaemon, ServiceInfo};

/// What a box says about itself.
#[derive(Clone, Debug)]
pub struct Advert {
    pub name: String,
    pub appliance: String,
    pub pin: String,
    /// The address the box's listener is bound to.
    pub listen: SocketAddr,
}

/// A running advertisement; [`Advertiser::stop`] says goodbye.
pub struct Advertiser {
    daemon: ServiceDaemon,
    fullname: String,
    monitor: tokio::task::JoinHandle<()>,
}

impl Advertiser {
    /// Announces the box on `interfaces` (by name; empty means every interface, or only the
    /// listen address's interface when the box listens on one address). The host record
    /// carries the addresses the listener can be reached on: A records for an IPv4 listener,
    /// A and AAAA for `[::]`. A box listening on every address follows the interfaces: when
    /// their addresses change, mdns-sd re-announces, and each change is logged.
    pub fn start(advert: &Advert, interfaces: &[String]) -> Result<Self, MdnsError> {
        let ip = advert.listen.ip();
        let default = if ip.is_unspecified() {
            IfKind::All
        } else {
            IfKind::Addr(ip)
        };
        for name in interfaces {
            if !std::path::Path::new("/sys/class/net").join(name).exists() {
                tracing::warn!(
                    interface = %name,
                    "no such network interface (yet): the box is announced there once it appears"
                );
            }
        }
        let daemon = daemon(interfaces, default)?;
        if ip.is_ipv4() {
            // An IPv4 listener is reachable only over IPv4: announce no AAAA record for it.
            // Listen on [::] for both.
            daemon.disable_interface(IfKind::IPv6)?;
        }
        let txt = [
            ("v", TXT_VERSION),
            ("id", advert.appliance.as_str()),
            ("pin", advert.pin.as_str()),
            ("path", API_PATH),
        ];
        let host = format!("{}.local.", advert.name);
        let info = if ip.is_unspecified() {
            ServiceInfo::new(
                SERVICE_TYPE,
                &advert.name,
                &host,
                (),
                advert.listen.port(),
                &txt[..],
            )?
            .enable_addr_auto()
        } else {
            ServiceInfo::new(
                SERVICE_TYPE,
                &advert.name,
                &host,
                ip,
                advert.listen.port(),
                &txt[..],
            )?
        };
        let fullname = info.get_fullname().to_owned();
        let events = daemon.monitor()?;
        daemon.register(info)?;
        let monitor = tokio::spawn(async move {
            while let Ok(event) = events.recv_async().await {
                match event {
                    DaemonEvent::IpAdd(ip) => {
                        tracing::info!(%ip, "address added: re-announcing over mDNS")
                    }
                    DaemonEvent::IpDel(ip) => {
                        tracing::info!(%ip, "address removed: re-announcing over mDNS")
                    }
                    DaemonEvent::NameChange(change) => tracing::warn!(
                        original = %change.original,
                        new = %change.new_name,
                        "another device on the network uses this name: mDNS renamed it"
                    ),
                    DaemonEvent::Error(error) => tracing::warn!(%error, "mDNS"),
                    _ => {}
                }
            }
        });
        tracing::info!(service = %fullname, host = %host, "advertised over mDNS");
        Ok(Self {
            daemon,
            fullname,
            monitor,
        })
    }

    /// Says goodbye (a zero-TTL announcement) and stops the daemon, waiting at most a second.
    pub async fn stop(self) {
        let wait = Duration::from_secs(1);
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = tokio::time::timeout(wait, done.recv_async()).await;
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(wait, done.recv_async()).await;
        }
        self.monitor.abort();
        tracing::info!(service = %self.fullname, "mDNS goodbye sent");
    }
}
