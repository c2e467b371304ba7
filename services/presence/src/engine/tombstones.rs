//! Purging old delete markers. Every socket leaves one marker per key, and
//! with one value kept per key they would pile up for ever, each read again
//! at every start-up. Once a marker is older than the tombstone age every
//! watcher has seen the delete, and a key that is absent means the same as a
//! deleted one, so the engine hands it to the writer to purge.

use super::{Engine, Run};
use crate::writer::WriteOp;
use async_nats::jetstream::kv;
use herald_proto::presence::PresenceKey;
use std::collections::VecDeque;

/// Delete markers of socket keys waiting to be purged, oldest first.
#[derive(Debug, Default)]
pub(super) struct Tombstones {
    /// (seen on the engine's clock, key, revision of the marker)
    queue: VecDeque<(i64, String, u64)>,
}

impl Tombstones {
    /// Remember `entry` if it is a purgeable delete marker seen at `seen`.
    pub(super) fn note(&mut self, seen: i64, entry: &kv::Entry) {
        if entry.operation != kv::Operation::Put && reapable(&entry.key) {
            self.queue
                .push_back((seen, entry.key.clone(), entry.revision));
        }
    }

    /// The oldest marker, as (key, revision), if it was seen at least `age`
    /// ms before `now`.
    fn pop_older(&mut self, now: i64, age: i64) -> Option<(String, u64)> {
        let (seen, _, _) = self.queue.front()?;
        if now - seen < age {
            return None;
        }
        self.queue
            .pop_front()
            .map(|(_, key, revision)| (key, revision))
    }
}

/// Whether a deleted key's marker may be purged: socket keys (`sub.` and
/// `conn.`; socket ids are never reused) and occupancy keys (`occ.`, reused
/// when a channel is occupied again, which the purge's revision bound
/// spares). `gw.` markers stay, since gateways watch them to learn that a
/// peer is gone.
fn reapable(key: &str) -> bool {
    matches!(
        PresenceKey::parse(key),
        Ok(PresenceKey::Subscription { .. }
            | PresenceKey::Connection { .. }
            | PresenceKey::Occupancy { .. })
    )
}

impl Engine {
    /// Purge the delete markers of socket keys once they are older than the
    /// tombstone age. The purge is bounded by the marker's revision, so a
    /// newer write of the key would survive.
    pub(super) async fn reap(&self, run: &mut Run) {
        let age = self.settings.tombstone_age.as_millis() as i64;
        let now = run.clock.now();
        while let Some((key, revision)) = run.tombstones.pop_older(now, age) {
            self.write(WriteOp::Reap { key, revision }).await;
        }
    }
}
