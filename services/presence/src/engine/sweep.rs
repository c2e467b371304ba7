//! Dead gateways. Every sweep interval, each gateway whose heartbeat is
//! older than the TTL has its keys deleted from the bucket, conditionally on
//! the revision judged stale; the deletes come back through the watch and
//! produce the `member_removed` events like any other leave. Entry times
//! read at start-up come from the KV entries' own timestamps, so a gateway
//! that heartbeated just before a restart is neither expired early nor kept
//! alive longer than the TTL.
//!
//! Which keys are stale is decided by the pure state ([`crate::liveness`]);
//! this module hands them to the writer, once each, and warns about
//! gateways configured to heartbeat too rarely for the TTL.

use super::{Engine, Run};
use crate::writer::WriteOp;
use async_nats::jetstream::kv;
use herald_proto::presence::{GatewayHeartbeat, PresenceKey};
use std::collections::{HashMap, HashSet};

/// What the sweep remembers between two runs.
#[derive(Debug, Default)]
pub(super) struct Sweeping {
    /// Stale keys handed to the writer: key → (revision, when), so a slow
    /// writer is not handed the same delete again every sweep.
    handed: HashMap<String, (u64, i64)>,
    /// Gateways already warned about a heartbeat interval too long for the TTL.
    warned: HashSet<String>,
}

impl Engine {
    /// Hand the keys of dead gateways to the writer for deletion.
    pub(super) async fn sweep(&self, run: &mut Run) {
        let now = run.clock.now();
        let sweeping = &mut run.sweeping;
        let stale = self.state.stale_keys(now, self.settings.heartbeat_ttl);
        // Forget hand-offs that are no longer stale (done or superseded).
        let current: HashSet<&str> = stale.iter().map(|k| k.key.as_str()).collect();
        sweeping
            .handed
            .retain(|key, _| current.contains(key.as_str()));
        // A hand-off older than this is retried (its delete failed).
        let retry_after = (self.settings.sweep_interval.as_millis() as i64 * 3).max(30_000);
        let mut gateways = HashSet::new();
        for key in stale {
            if let Some((revision, when)) = sweeping.handed.get(&key.key) {
                if *revision == key.revision && now - when < retry_after {
                    continue;
                }
            }
            sweeping.handed.insert(key.key.clone(), (key.revision, now));
            gateways.insert(key.gateway.clone());
            self.write(WriteOp::Expire {
                key: key.key,
                revision: key.revision,
            })
            .await;
        }
        if !gateways.is_empty() {
            let mut gateways: Vec<_> = gateways.into_iter().collect();
            gateways.sort();
            tracing::info!(?gateways, "expiring keys of dead gateways");
        }
    }

    /// Warn (once per gateway) when a gateway heartbeats so rarely that the
    /// TTL would expire it between two heartbeats: a misconfiguration that
    /// makes its members flap.
    pub(super) fn check_interval(&self, sweeping: &mut Sweeping, entry: &kv::Entry) {
        let Some(gateway) = PresenceKey::heartbeat_gateway(&entry.key) else {
            return;
        };
        if entry.operation != kv::Operation::Put || sweeping.warned.contains(gateway) {
            return;
        }
        let Ok(beat) = serde_json::from_slice::<GatewayHeartbeat>(&entry.value) else {
            return;
        };
        let ttl = self.settings.heartbeat_ttl.as_millis() as u64;
        if beat.interval_ms.saturating_mul(2) > ttl {
            tracing::warn!(
                gateway,
                interval_ms = beat.interval_ms,
                ttl_ms = ttl,
                "gateway heartbeat interval is more than half the presence heartbeat TTL: \
                 its members may be expired while it is alive"
            );
            sweeping.warned.insert(gateway.to_owned());
        }
    }
}
