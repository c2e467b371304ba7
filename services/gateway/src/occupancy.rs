//! Channel occupancy across gateways: this gateway records, in the presence
//! KV bucket, one `occ.` key per channel it has local subscribers of (any
//! channel type), put when the first local subscriber joins and deleted
//! when the last one leaves. The presence service folds these keys into
//! `channel_occupied` / `channel_vacated` (first gateway in, last out); a
//! dead gateway's keys go with its heartbeat, like its presence keys.
//!
//! The hub reports each change of a channel's local emptiness without
//! waiting ([`Occupancy::occupied`], [`Occupancy::vacated`]); one recorder
//! task ([`run`]) applies them. It takes every change queued, keeps the
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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type ChannelKey = (AppId, ChannelName);

/// How long the recorder waits before retrying writes that failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The hub's handle on the recorder.
pub(crate) struct Occupancy {
    tx: mpsc::UnboundedSender<(ChannelKey, bool)>,
}

/// The recorder's end of the queue.
pub(crate) struct Changes(mpsc::UnboundedReceiver<(ChannelKey, bool)>);

impl Occupancy {
    /// A handle and the queue [`run`] reads.
    pub fn new() -> (Self, Changes) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, Changes(rx))
    }

    /// The channel got its first local subscriber.
    pub fn occupied(&self, app: &AppId, channel: &ChannelName) {
        let _ = self.tx.send(((app.clone(), channel.clone()), true));
    }

    /// The channel's last local subscriber left.
    pub fn vacated(&self, app: &AppId, channel: &ChannelName) {
        let _ = self.tx.send(((app.clone(), channel.clone()), false));
    }
}

/// Apply the hub's changes until shutdown, then once more for what the
/// closing connections reported (what is left is swept by the presence
/// service once this gateway's heartbeat is gone).
pub(crate) async fn run(changes: Changes, presence: Arc<PresenceClient>, token: CancellationToken) {
    let Changes(mut rx) = changes;
    let mut recorded: HashSet<ChannelKey> = HashSet::new();
    let mut wanted: HashMap<ChannelKey, bool> = HashMap::new();
    loop {
        if wanted.is_empty() {
            tokio::select! {
                _ = token.cancelled() => break,
                change = rx.recv() => match change {
                    Some((key, occupied)) => { wanted.insert(key, occupied); }
                    None => return,
                },
            }
        }
        while let Ok((key, occupied)) = rx.try_recv() {
            wanted.insert(key, occupied);
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
    while let Ok((key, occupied)) = rx.try_recv() {
        wanted.insert(key, occupied);
    }
    record(&presence, &mut recorded, wanted).await;
}

/// Write every change that differs from `recorded`, concurrently; returns
/// the ones that failed (to retry).
async fn record(
    presence: &PresenceClient,
    recorded: &mut HashSet<ChannelKey>,
    wanted: HashMap<ChannelKey, bool>,
) -> HashMap<ChannelKey, bool> {
    let writes = wanted
        .into_iter()
        .filter(|(key, occupied)| recorded.contains(key) != *occupied)
        .map(|(key, occupied)| async move {
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
            (key, occupied, ok)
        });
    let mut failed = HashMap::new();
    for (key, occupied, ok) in futures::future::join_all(writes).await {
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
            (false, _) => {
                failed.insert(key, occupied);
            }
        }
    }
    failed
}
