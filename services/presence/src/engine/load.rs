//! Start-up without false events, part one: read the view bucket (what
//! subscribers were told before the service stopped), then the presence
//! bucket's current state (last value per key) into the state without
//! emitting anything. [`super::reconcile`] then diffs the two; from then on
//! the engine follows the same watch live.

use super::clock::created_ms;
use super::{Engine, Run};
use crate::buckets;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use herald_proto::presence::PresenceKey;
use herald_proto::AppId;
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

/// Per user, the time (wall clock, ms) of the latest `conn.` delete seen
/// while loading: when a user who went offline while the service was down
/// was last seen.
pub(super) type Hints = HashMap<(AppId, String), i64>;

/// What the load leaves for the reconciliation and the live loop.
pub(super) struct Loaded {
    /// The presence bucket's watch, positioned after the initial state.
    pub watch: kv::Watch,
    /// The view bucket's keys and values.
    pub told: HashMap<String, Bytes>,
    /// See [`Hints`].
    pub hints: Hints,
}

impl Engine {
    /// Read the view and fold the presence bucket's current state into the
    /// state; `None` if `token` is cancelled first.
    pub(super) async fn load(
        &mut self,
        run: &mut Run,
        token: &CancellationToken,
    ) -> anyhow::Result<Option<Loaded>> {
        let told = buckets::read_all(&self.view).await?;
        let (messages, last_sequence) = buckets::bucket_extent(&self.presence).await?;
        let mut watch = self.presence.watch_with_history(">").await?;
        let mut hints = HashMap::new();
        if messages > 0 {
            // The initial state: last value of every key, no events.
            loop {
                let entry = tokio::select! {
                    _ = token.cancelled() => return Ok(None),
                    entry = watch.next() => entry,
                };
                let Some(entry) = entry else {
                    anyhow::bail!("the presence bucket watch ended during start-up");
                };
                let entry = entry?;
                let seen = run.clock.at_wall(created_ms(&entry));
                let value = matches!(entry.operation, kv::Operation::Put).then_some(&entry.value);
                // Changes while loading are not events: the diff with the
                // view decides what subscribers must hear.
                self.state
                    .apply(&entry.key, value.map(|v| v.as_ref()), entry.revision, seen);
                run.tombstones.note(seen, &entry);
                if value.is_none() {
                    // Deletes of `conn.` keys tell when users who went
                    // offline while the service was down were last seen.
                    if let Ok(PresenceKey::Connection { app, user_id, .. }) =
                        PresenceKey::parse(&entry.key)
                    {
                        let at = hints.entry((app, user_id)).or_insert(0);
                        *at = created_ms(&entry).max(*at);
                    }
                }
                // Done when the consumer has nothing pending, or once it has
                // passed the bucket's last revision from before the watch
                // (everything up to it is delivered or superseded), which
                // also ends the load under a steady stream of writes.
                if entry.delta == 0 || entry.revision >= last_sequence {
                    break;
                }
            }
        }
        self.state.note_revision(last_sequence);
        Ok(Some(Loaded { watch, told, hints }))
    }
}
