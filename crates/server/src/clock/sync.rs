//! Syncing the hall clock from the cloud: the cloud's time comes with every answer it gives
//! (`Hallrelay-Time` in milliseconds, or the standard `Date` to the second) over the box's
//! authenticated TLS connection, so a `GET /v1/health` timed on the monotonic clock is an
//! authenticated time sample ([`Sample`]), good to half its round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use tokio_util::sync::CancellationToken;

use super::{HallClock, Sample};
use hallrelay_client::Connection;
use hallrelay_protocol::clock::ClockSource;
use hallrelay_protocol::timefmt::unix_millis;
use hallrelay_protocol::v1::{HEALTH, headers};

/// How often the box asks the cloud for the time while its clock is synced.
const SYNCED_EVERY: Duration = Duration::from_secs(60);
/// How often while it is not: soon after the uplink returns, the clock is synced.
const UNSYNCED_EVERY: Duration = Duration::from_secs(2);

/// The time sample in an answer's headers, which arrived at `at` after `round_trip`.
pub fn cloud_sample(headers: &HeaderMap, round_trip: Duration, at: Instant) -> Option<Sample> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let (time_ms, precision_ms) = if let Some(ms) = text(headers::TIME) {
        (ms.trim().parse::<u64>().ok()?, 0)
    } else {
        let date = httpdate::parse_http_date(text(http::header::DATE)?).ok()?;
        (unix_millis(date), 1000)
    };
    Some(Sample {
        source: ClockSource::Cloud,
        time_ms,
        round_trip,
        precision_ms,
        at,
    })
}

/// Keeps the hall clock synced from the cloud until `shutdown`: one timed health request
/// every few seconds while the clock is not synced, every minute once it is.
pub async fn sync_from_cloud(
    clock: Arc<HallClock>,
    cloud: Connection,
    shutdown: CancellationToken,
) {
    loop {
        let sent = Instant::now();
        if let Ok(reply) = cloud.get(HEALTH).await {
            let arrived = Instant::now();
            if let Some(sample) = cloud_sample(&reply.headers, arrived - sent, arrived) {
                clock.observe(sample);
            }
        }
        if super::after_poll(&clock, (SYNCED_EVERY, UNSYNCED_EVERY), &shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn milliseconds_beat_the_date_header() {
        let at = Instant::now();
        let mut h = HeaderMap::new();
        h.insert(
            http::header::DATE,
            HeaderValue::from_static("Sat, 05 Dec 2026 08:00:00 GMT"),
        );
        let date = cloud_sample(&h, Duration::from_millis(30), at).unwrap();
        assert_eq!(date.precision_ms, 1000);
        assert_eq!(date.time_ms, 1_796_457_600_000);
        assert_eq!(date.estimate(), (1_796_457_600_000 + 15 + 500, 15 + 500));
        h.insert(headers::TIME, HeaderValue::from_static("1796457600123"));
        let ms = cloud_sample(&h, Duration::from_millis(30), at).unwrap();
        assert_eq!((ms.time_ms, ms.precision_ms), (1_796_457_600_123, 0));
        assert_eq!(ms.estimate(), (1_796_457_600_123 + 15, 15));
        assert!(cloud_sample(&HeaderMap::new(), Duration::ZERO, at).is_none());
    }
}
