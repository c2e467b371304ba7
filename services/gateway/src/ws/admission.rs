//! What is decided at the WebSocket upgrade, before a connection is served:
//! which address the client connects from (believing `X-Forwarded-For` only
//! from configured proxies), how many connections that address holds, and
//! whether the page that opens the connection (`Origin`) may use the app.

use super::connection::Refusal;
use crate::config::IpRange;
use crate::AppState;
use axum::http::{header, HeaderMap};
use herald_config::AppConfig;
use herald_proto::pusher::codes;
use std::net::IpAddr;

/// The client's address: the peer's, unless the peer is a trusted proxy.
/// Then `X-Forwarded-For` is read from the right (each proxy appends the
/// address it got the request from), skipping trusted proxies; the first
/// address that is not one is the client. Anything left of it was written
/// by the client itself and could be anything.
pub(super) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpRange]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return client;
    }
    let values: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    for value in values.into_iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                // Malformed: the last trusted hop is all we can vouch for.
                return client;
            };
            client = ip.to_canonical();
            if !is_trusted(client) {
                return client;
            }
        }
    }
    client
}

/// Counts a connection against its client address's limit for as long as
/// it lives.
pub(crate) struct IpSlot {
    state: AppState,
    ip: IpAddr,
}

impl IpSlot {
    /// Take a slot for `ip`, or `None` when the address is at the limit.
    fn acquire(state: &AppState, ip: IpAddr, limit: usize) -> Option<Self> {
        let mut counts = state.ip_connections.lock().expect("ip count lock");
        let count = counts.entry(ip).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Self {
            state: state.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.state.ip_connections.lock().expect("ip count lock");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Check the upgrade request against the app's allowed origins and the
/// per-address limit. `Ok(None)` when no per-address limit is configured.
pub(super) fn admit(
    state: &AppState,
    app: Option<&AppConfig>,
    headers: &HeaderMap,
    client: IpAddr,
) -> Result<Option<IpSlot>, Refusal> {
    if let Some(app) = app {
        // Browsers always send `Origin` on a WebSocket upgrade; a client
        // without one is not a browser page, and could claim any origin.
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            if !app.allows_origin(origin) {
                metrics::counter!("herald_gateway_connections_refused_total", "cause" => "origin")
                    .increment(1);
                return Err(Refusal {
                    code: codes::UNAUTHORIZED,
                    message: format!("Origin {origin:?} is not allowed for this app"),
                });
            }
        }
    }
    let limit = state.config.max_connections_per_ip;
    if limit == 0 {
        return Ok(None);
    }
    match IpSlot::acquire(state, client, limit) {
        Some(slot) => Ok(Some(slot)),
        None => {
            metrics::counter!("herald_gateway_connections_refused_total", "cause" => "per_ip")
                .increment(1);
            Err(Refusal {
                code: codes::OVER_CAPACITY,
                message: format!(
                    "Too many connections from this address (the limit is {limit}); retry later"
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted: Vec<IpRange> = vec!["10.0.0.0/8".parse().unwrap()];
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("198.51.100.1"), &headers, &trusted),
            ip("198.51.100.1"),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &[]),
            ip("10.0.0.1"),
            "no proxies trusted: never read"
        );
    }

    #[test]
    fn the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy() {
        let trusted: Vec<IpRange> = vec!["10.0.0.0/8".parse().unwrap()];
        // The client forged the first entry; proxies appended the rest.
        let headers = forwarded(&["1.1.1.1, 203.0.113.9", "10.0.0.2"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("203.0.113.9")
        );
        let garbage = forwarded(&["1.1.1.1, not-an-ip, 10.0.0.2"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &garbage, &trusted),
            ip("10.0.0.2")
        );
        let all_proxies = forwarded(&["10.0.0.3"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &all_proxies, &trusted),
            ip("10.0.0.3")
        );
    }
}
