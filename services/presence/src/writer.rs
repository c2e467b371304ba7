//! The writer: one FIFO queue of KV writes the engine hands off so that its
//! loop never waits for a JetStream acknowledgement.
//!
//! Order matters and is kept: view updates of one key are applied in the
//! order the events were emitted, and a dead gateway's keys are deleted
//! before its `gw.` key (so a crash half-way leaves the heartbeat stale and
//! the next sweep finishes the job). A webhook event is queued before the
//! view update of the same change, so it is stored in the webhook stream
//! before the view says the change was announced: a crash in between makes
//! the restarted service announce it again (same id, so JetStream's
//! duplicate window usually stores it once) rather than lose it.

use crate::buckets::LastSeen;
use async_nats::jetstream;
use async_nats::jetstream::kv;
use bytes::Bytes;
use herald_proto::webhook::WebhookEvent;
use herald_proto::{AppId, Subjects};
use std::time::Duration;
use tokio::sync::mpsc;

/// How many writes may wait in the queue before the engine waits for room.
pub const QUEUE: usize = 65_536;

/// Attempts for a view or last-seen write before it is given up (logged).
const ATTEMPTS: u32 = 3;

/// Attempts to store a webhook event before it is given up (logged and
/// counted): more than for a view write, since a lost one is never sent.
const WEBHOOK_ATTEMPTS: u32 = 20;

/// One KV write.
#[derive(Debug)]
pub enum WriteOp {
    /// Set a view key.
    ViewPut { key: String, value: Bytes },
    /// Remove a view key.
    ViewDelete { key: String },
    /// Record when a user's last connection went.
    LastSeen { key: String, at: i64 },
    /// Delete a dead gateway's presence key, only if still at `revision`.
    Expire { key: String, revision: u64 },
    /// Purge a presence key's delete marker at `revision` (and anything
    /// older), leaving any newer write.
    Reap { key: String, revision: u64 },
    /// Store a webhook event in the webhook stream.
    Webhook { app: AppId, event: WebhookEvent },
}

/// The three buckets written, and the webhook stream.
pub struct Writer {
    pub js: jetstream::Context,
    /// Names the presence bucket's stream subjects (for purges).
    pub subjects: Subjects,
    pub presence: kv::Store,
    pub view: kv::Store,
    pub last_seen: kv::Store,
}

impl Writer {
    /// Apply writes in order until every sender is gone, which drains the
    /// queue on a graceful shutdown.
    pub async fn run(self, mut rx: mpsc::Receiver<WriteOp>) -> anyhow::Result<()> {
        while let Some(op) = rx.recv().await {
            self.apply(op).await;
        }
        Ok(())
    }

    async fn apply(&self, op: WriteOp) {
        match op {
            WriteOp::Expire { key, revision } => {
                // No retry: a failure is usually a newer revision (the gateway
                // is alive after all); otherwise the next sweep tries again.
                match self
                    .presence
                    .delete_expect_revision(&key, Some(revision))
                    .await
                {
                    Ok(()) => metrics::counter!("herald_presence_keys_expired_total").increment(1),
                    Err(err) => tracing::debug!(key, %err, "expiring a key skipped"),
                }
            }
            WriteOp::Reap { key, revision } => {
                // No retry: a marker left behind costs little and is read,
                // and scheduled again, at the next start-up.
                let subject = self.subjects.presence_key_subject(&key);
                match self
                    .presence
                    .stream
                    .purge()
                    .filter(subject)
                    .sequence(revision + 1)
                    .await
                {
                    Ok(_) => metrics::counter!("herald_presence_markers_purged_total").increment(1),
                    Err(err) => tracing::debug!(key, %err, "purging a delete marker skipped"),
                }
            }
            WriteOp::Webhook { app, event } => {
                for attempt in 1..=WEBHOOK_ATTEMPTS {
                    let stored = match herald_stream::publish_webhook(
                        &self.js,
                        &self.subjects,
                        &app,
                        &event,
                    )
                    .await
                    {
                        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                        Err(err) => Err(err.to_string()),
                    };
                    match stored {
                        Ok(()) => {
                            metrics::counter!("herald_presence_webhooks_stored_total", "name" => event.name.as_str())
                                .increment(1);
                            return;
                        }
                        Err(err) if attempt == WEBHOOK_ATTEMPTS => {
                            metrics::counter!("herald_presence_webhook_store_failures_total")
                                .increment(1);
                            tracing::error!(%err, id = event.id, name = event.name.as_str(), "cannot store a webhook event; giving up");
                        }
                        Err(err) => {
                            tracing::warn!(%err, attempt, "cannot store a webhook event; retrying");
                            let wait = 100 * u64::from(attempt.min(10));
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                        }
                    }
                }
            }
            WriteOp::ViewPut { key, value } => {
                self.retry("view put", &key, || self.view.put(&key, value.clone()))
                    .await
            }
            WriteOp::ViewDelete { key } => {
                self.retry("view delete", &key, || self.view.delete(&key))
                    .await
            }
            WriteOp::LastSeen { key, at } => {
                let value = Bytes::from(serde_json::to_vec(&LastSeen { at }).unwrap_or_default());
                self.retry("last-seen put", &key, || {
                    self.last_seen.put(&key, value.clone())
                })
                .await
            }
        }
    }

    async fn retry<T, E, F, Fut>(&self, what: &str, key: &str, mut op: F)
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        for attempt in 1..=ATTEMPTS {
            match op().await {
                Ok(_) => return,
                Err(err) if attempt == ATTEMPTS => {
                    metrics::counter!("herald_presence_write_failures_total").increment(1);
                    tracing::error!(what, key, %err, "KV write failed; giving up");
                }
                Err(err) => {
                    tracing::warn!(what, key, %err, attempt, "KV write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
    }
}
