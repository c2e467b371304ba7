//! Machine ceilings for Herald's benchmarks: the limits of this machine that
//! a Herald number should be read next to.
//!
//! * `herald-ceiling-jetstream` — the raw JetStream publish rate with
//!   async-nats, awaiting each ack and pipelined, against a private
//!   `nats-server -js` it starts itself.
//! * `herald-ceiling-ws` — a minimal Pusher-speaking WebSocket broadcast
//!   server (no persistence, no NATS), to measure the fan-out ceiling with
//!   the same load generator (`herald-loadgen fanout`).
//!
//! This library holds what both share: a private NATS server, the loopback
//! check, and the `RESULT {json}` output convention.

use anyhow::bail;
use std::net::IpAddr;

/// Accept only loopback hosts (127.0.0.0/8, `::1`, `localhost`).
pub fn loopback_ip(host: &str) -> anyhow::Result<IpAddr> {
    let bare = host.trim().trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    }
    match bare.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(ip),
        _ => bail!("refusing {host:?}: only loopback addresses are allowed"),
    }
}

/// The test kit's private `nats-server` (a free loopback port, its own
/// store, killed on drop) serves the JetStream ceiling too.
pub use herald_testkit::NatsServer;

/// Median of some samples (mean of the two middle ones for an even count).
pub fn median(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len() % 2 == 0 {
        (s[mid - 1] + s[mid]) / 2.0
    } else {
        s[mid]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback() {
        assert!(loopback_ip("127.0.0.1").is_ok());
        assert!(loopback_ip("[::1]").is_ok());
        assert!(loopback_ip("localhost").is_ok());
        assert!(loopback_ip("0.0.0.0").is_err());
        assert!(loopback_ip("10.1.1.1").is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
