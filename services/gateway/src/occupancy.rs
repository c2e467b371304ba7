//! Channel occupancy across gateways: this gateway records, in the presence
//! KV bucket, one `occ.` key per channel it has local subscribers of (any
//! channel type), put when the first local subscriber joins and deleted
//! when the last one leaves. The presence service folds these keys into
//! `channel_occupied` / `channel_vacated` (first gateway in, last out); a
//! dead gateway's keys go with its heartbeat, like its presence keys.
//!
//! The hub reports each change of a channel's local emptiness
//! ([`Occupancy::occupied`], [`Occupancy::vacated`]); one recorder task
//! ([`run`]) applies them. The first local subscriber of a channel waits
//! until the channel's key is written (bounded by [`OCCUPIED_WAIT`]) before
//! it is told it is subscribed: otherwise a subscriber that has seen its
//! subscription succeed on this gateway, while the last one on another
//! gateway leaves, could see the channel announced vacated. Later
//! subscribers wait for nothing, and leaving never waits. It takes every change queued, keeps the
//! last one per channel, and writes only those that differ from what it
//! recorded, all at once: writes of one channel stay in order (one round
//! finishes before the next begins), a subscribe to a channel this gateway
//! already serves costs no write at all, and an unsubscribe followed by a
//! resubscribe within one round costs none either.

use crate::presence::PresenceClient;
use herald_proto::{AppId, ChannelName};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

type ChannelKey = (AppId, ChannelName);

/// How long the recorder waits before retrying writes that failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Longest a channel's first local subscriber waits for its key to be
/// written (NATS trouble must not hold subscribes for ever).
pub(crate) const OCCUPIED_WAIT: Duration = Duration::from_secs(2);

/// One change: the channel, whether it is occupied, who waits for it.
type Change = (ChannelKey, bool, Option<oneshot::Sender<()>>);

/// The latest wanted state of a channel and everyone waiting for it.
type Wanted = HashMap<ChannelKey, (bool, Vec<oneshot::Sender<()>>)>;

/// The hub's handle on the recorder.
pub(crate) struct Occupancy {
    tx: mpsc::UnboundedSender<Change>,
}

/// The recorder's end of the queue.
pub(crate) struct Changes(mpsc::UnboundedReceiver<Change>);

impl Occupancy {
    /// A handle and the queue [`run`] reads.
    pub fn new() -> (Self, Changes) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, Changes(rx))
    }

    /// The channel got its first local subscriber: returns once its key is
    /// written (or superseded by a later vacated), or after [`OCCUPIED_WAIT`].
    pub async fn occupied(&self, app: &AppId, channel: &ChannelName) {
        let (done, written) = oneshot::channel();
        if self
            .tx
            .send(((app.clone(), channel.clone()), true, Some(done)))
            .is_ok()
            && tokio::time::timeout(OCCUPIED_WAIT, written).await.is_err()
        {
            tracing::warn!(%channel, "a channel's occupancy is not recorded yet; subscribing anyway");
        }
    }

    /// The channel's last local subscriber left (never waits).
    pub fn vacated(&self, app: &AppId, channel: &ChannelName) {
        let _ = self.tx.send(((app.clone(), channel.clone()), false, None));
    }
}

/// Apply the hub's changes until shutdown, then once more for what the
/// closing connections reported (what is left is swept by the presence
/// service once this gateway's heartbeat is gone).
pub(crate) async fn run(changes: Changes, presence: Arc<PresenceClient>, token: CancellationToken) {
    let Changes(mut rx) = changes;
    let mut recorded: HashSet<ChannelKey> = HashSet::new();
    let mut wanted: Wanted = HashMap::new();
    fn want(wanted: &mut Wanted, (key, occupied, waiter): Change) {
        let entry = wanted.entry(key).or_default();
        entry.0 = occupied;
        entry.1.extend(waiter);
    }
    loop {
        if wanted.is_empty() {
            tokio::select! {
                _ = token.cancelled() => break,
                change = rx.recv() => match change {
                    Some(change) => want(&mut wanted, change),
                    None => return,
                },
            }
        }
        while let Ok(change) = rx.try_recv() {
            want(&mut wanted, change);
        }
        let failed = record(&presence, &mut recorded, std::mem::take(&mut wanted)).await;
        if !failed.is_empty() {
            wanted = failed;
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(RETRY_DELAY) => {}
            }
        }
    }
    // Connections close as the gateway stops: give their reports a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(change) = rx.try_recv() {
        want(&mut wanted, change);
    }
    record(&presence, &mut recorded, wanted).await;
}

/// Write every change that differs from `recorded`, concurrently, and tell
/// the waiters; returns the ones that failed (to retry, waiters kept).
async fn record(
    presence: &PresenceClient,
    recorded: &mut HashSet<ChannelKey>,
    wanted: Wanted,
) -> Wanted {
    let mut writes = Vec::new();
    for (key, (occupied, waiters)) in wanted {
        if recorded.contains(&key) == occupied {
            // Already so (or changed back within the round): nothing to write.
            waiters.into_iter().for_each(|w| {
                let _ = w.send(());
            });
        } else {
            writes.push((key, occupied, waiters));
        }
    }
    let writes = writes
        .into_iter()
        .map(|(key, occupied, waiters)| async move {
            let ok = if occupied {
                match presence.announce_occupancy(&key.0, &key.1).await {
                    Ok(_) => true,
                    Err(err) => {
                        tracing::warn!(%err, channel = %key.1, "cannot record a channel's occupancy; retrying");
                        false
                    }
                }
            } else {
                // A failed delete is retried by the presence client itself.
                presence.forget(&presence.occupancy_key(&key.0, &key.1)).await;
                true
            };
            (key, occupied, waiters, ok)
        });
    let mut failed = HashMap::new();
    for (key, occupied, waiters, ok) in futures::future::join_all(writes).await {
        if !ok {
            failed.insert(key, (occupied, waiters));
            continue;
        }
        waiters.into_iter().for_each(|w| {
            let _ = w.send(());
        });
        match (ok, occupied) {
            (true, true) => {
                metrics::counter!("herald_gateway_occupancy_writes_total", "op" => "put")
                    .increment(1);
                recorded.insert(key);
            }
            (true, false) => {
                metrics::counter!("herald_gateway_occupancy_writes_total", "op" => "delete")
                    .increment(1);
                recorded.remove(&key);
            }
            (false, _) => {}
        }
    }
    failed
}
