//! Gateway liveness: which gateways are alive, judged by their heartbeat
//! keys, and which keys the dead-gateway sweep must delete.
//!
//! Part of the pure presence state ([`crate::state`]), fed the same entries
//! in revision order, with times on the engine's monotonic clock:
//!
//! * a gateway with a heartbeat (`gw.` key) is alive while the heartbeat is
//!   no older than the TTL; after that every key it owns is stale, its
//!   `gw.` key last (so a sweep stopped half-way leaves the heartbeat stale
//!   and the next one finishes the job);
//! * a gateway without a heartbeat (it deleted it on shutdown) has each of
//!   its keys judged by the key's own age.

use herald_proto::presence::{GatewayHeartbeat, PresenceKey};
use std::collections::HashMap;
use std::time::Duration;

/// A key the dead-gateway sweep should delete, at the revision judged stale.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StaleKey {
    /// The presence KV key.
    pub key: String,
    /// Its revision when judged: the delete is conditional on it, so a key
    /// re-put meanwhile by a revived gateway survives.
    pub revision: u64,
    /// The gateway owning it.
    pub gateway: String,
}

/// When a key was last written, for the sweep.
#[derive(Debug, Clone, Copy)]
struct KeyTrack {
    revision: u64,
    seen: i64,
}

/// A gateway's last heartbeat.
#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    revision: u64,
    seen: i64,
}

/// What is known of one gateway.
#[derive(Debug, Default)]
struct Gateway {
    heartbeat: Option<Heartbeat>,
    keys: HashMap<String, KeyTrack>,
}

/// Every gateway seen, by its heartbeat and the keys it owns.
#[derive(Debug, Default)]
pub struct Liveness {
    gateways: HashMap<String, Gateway>,
}

impl Liveness {
    /// A key of `gateway` was put at `revision` (a put refreshes it).
    pub fn track(&mut self, gateway: &str, key: &str, revision: u64, seen: i64) {
        self.gateways
            .entry(gateway.to_owned())
            .or_default()
            .keys
            .insert(key.to_owned(), KeyTrack { revision, seen });
    }

    /// A key of `gateway` was deleted.
    pub fn forget(&mut self, gateway: &str, key: &str) {
        if let Some(gw) = self.gateways.get_mut(gateway) {
            gw.keys.remove(key);
            if gw.keys.is_empty() && gw.heartbeat.is_none() {
                self.gateways.remove(gateway);
            }
        }
    }

    /// The heartbeat key of `gateway` was put (`value` is `Some`) or deleted.
    pub fn heartbeat(&mut self, gateway: &str, value: Option<&[u8]>, revision: u64, seen: i64) {
        match value {
            Some(bytes) => {
                if let Err(err) = serde_json::from_slice::<GatewayHeartbeat>(bytes) {
                    // Still a sign of life: the gateway wrote it.
                    tracing::warn!(gateway, %err, "malformed gateway heartbeat");
                }
                self.gateways
                    .entry(gateway.to_owned())
                    .or_default()
                    .heartbeat = Some(Heartbeat { revision, seen });
            }
            None => {
                // A gateway shutting down deletes its heartbeat last; any key
                // it left behind is now judged by its own age.
                if let Some(gw) = self.gateways.get_mut(gateway) {
                    gw.heartbeat = None;
                    if gw.keys.is_empty() {
                        self.gateways.remove(gateway);
                    }
                }
            }
        }
    }

    /// Gateways known (by heartbeat or by keys).
    pub fn count(&self) -> usize {
        self.gateways.len()
    }

    /// Keys of dead gateways at `now`: every key of a gateway whose
    /// heartbeat is older than `ttl` (its `gw.` key last), and, for a gateway
    /// without a heartbeat, every key of its own older than `ttl`.
    pub fn stale_keys(&self, now: i64, ttl: Duration) -> Vec<StaleKey> {
        let ttl = ttl.as_millis() as i64;
        let mut out = Vec::new();
        let mut names: Vec<&String> = self.gateways.keys().collect();
        names.sort();
        for name in names {
            let gw = &self.gateways[name];
            let expired = |seen: i64| now - seen > ttl;
            let dead = gw.heartbeat.is_some_and(|hb| expired(hb.seen));
            if gw.heartbeat.is_some() && !dead {
                continue;
            }
            let mut keys: Vec<(&String, &KeyTrack)> = gw
                .keys
                .iter()
                .filter(|(_, track)| dead || expired(track.seen))
                .collect();
            keys.sort_by_key(|(_, track)| track.revision);
            out.extend(keys.into_iter().map(|(key, track)| StaleKey {
                key: key.clone(),
                revision: track.revision,
                gateway: name.clone(),
            }));
            if let (true, Some(hb)) = (dead, gw.heartbeat) {
                out.push(StaleKey {
                    key: PresenceKey::Gateway {
                        gateway: name.clone(),
                    }
                    .render(),
                    revision: hb.revision,
                    gateway: name.clone(),
                });
            }
        }
        out
    }

    /// Gateways known.
    #[cfg(test)]
    pub fn gateways(&self) -> std::collections::HashSet<&str> {
        self.gateways.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::state::fixtures::*;
    use std::time::Duration;

    #[test]
    fn a_gateway_with_a_stale_heartbeat_loses_every_key_and_a_live_one_none() {
        let mut s = state(100);
        let ttl = Duration::from_millis(1000);
        s.apply("gw.dead", Some(&heartbeat()), 1, 0);
        s.apply(&sub_key("dead", "1.1"), Some(&sub_value("a")), 2, 0);
        s.apply(&conn_key("a", "dead", "1.1"), Some(b"{\"at\":0}"), 3, 0);
        s.apply("gw.live", Some(&heartbeat()), 4, 0);
        s.apply(&sub_key("live", "2.1"), Some(&sub_value("b")), 5, 0);
        s.apply("gw.live", Some(&heartbeat()), 6, 1500);
        assert!(s.stale_keys(900, ttl).is_empty());
        let stale = s.stale_keys(1600, ttl);
        let keys: Vec<&str> = stale.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                sub_key("dead", "1.1").as_str(),
                conn_key("a", "dead", "1.1").as_str(),
                "gw.dead"
            ]
        );
        assert_eq!(
            stale.iter().map(|k| k.revision).collect::<Vec<_>>(),
            [2, 3, 1]
        );
    }

    #[test]
    fn keys_of_a_gateway_without_heartbeat_expire_by_their_own_age() {
        let mut s = state(100);
        let ttl = Duration::from_millis(1000);
        s.apply(&sub_key("quiet", "1.1"), Some(&sub_value("a")), 1, 0);
        s.apply(&sub_key("quiet", "1.2"), Some(&sub_value("b")), 2, 800);
        let stale = s.stale_keys(1500, ttl);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].key, sub_key("quiet", "1.1"));
        s.apply(&sub_key("quiet", "1.1"), None, 3, 1500);
        s.apply(&sub_key("quiet", "1.2"), None, 4, 1500);
        assert!(s.gateways().is_empty());
    }
}
