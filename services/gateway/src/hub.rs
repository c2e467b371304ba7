//! Local fan-out: which connections on this gateway are subscribed to which
//! channel, and one NATS subscription per channel that has any.
//!
//! A durable event arrives once per gateway on the channel's live subject; the
//! hub renders the client frame once and hands the same bytes to every
//! subscribed connection's bounded queue. A connection whose queue is full is
//! a slow consumer: it is told to close (it reconnects and resumes) rather
//! than letting it hold memory or slow everyone else down.

use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use herald_proto::{pusher, AppId, ChannelName, Subjects};
use herald_stream::LiveEvent;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, OnceCell};
use tokio_util::sync::CancellationToken;

/// What a connection's writer task is asked to send.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// A text frame, already serialized (shared between connections).
    Frame(Utf8Bytes),
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// How the hub reaches one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    pub id: u64,
    pub socket_id: Arc<str>,
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled by the hub when the connection cannot keep up.
    pub slow: CancellationToken,
}

impl ConnHandle {
    /// Queue a frame without waiting; a full queue marks the consumer slow.
    pub fn deliver(&self, frame: Utf8Bytes) {
        if self.tx.try_send(Outbound::Frame(frame)).is_err() && !self.slow.is_cancelled() {
            metrics::counter!("herald_gateway_slow_consumers_total").increment(1);
            self.slow.cancel();
        }
    }
}

type ChannelKey = (AppId, ChannelName);

struct ChannelEntry {
    /// Set once the NATS subscription is live (SUB flushed to the server).
    ready: OnceCell<()>,
    subscribers: RwLock<HashMap<u64, ConnHandle>>,
    /// Stops the fan-out task when the last local subscriber leaves.
    stop: CancellationToken,
}

/// The channel → connections index of one gateway.
pub(crate) struct Hub {
    nats: async_nats::Client,
    subjects: Subjects,
    channels: Mutex<HashMap<ChannelKey, Arc<ChannelEntry>>>,
}

impl Hub {
    pub fn new(nats: async_nats::Client, subjects: Subjects) -> Self {
        Self {
            nats,
            subjects,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// Add `conn` to a channel and queue `first` (the subscription-succeeded
    /// frame) for it. Returns only once the channel's live subscription is
    /// registered with the NATS server, so that any event stored after the
    /// client sees `first` is delivered, and `first` is always queued before
    /// the channel's first event.
    pub async fn subscribe(
        &self,
        app: &AppId,
        channel: &ChannelName,
        conn: ConnHandle,
        first: Utf8Bytes,
    ) -> Result<(), async_nats::Error> {
        let key = (app.clone(), channel.clone());
        loop {
            let entry = {
                let mut channels = self.channels.lock().expect("hub lock");
                channels
                    .entry(key.clone())
                    .or_insert_with(|| {
                        Arc::new(ChannelEntry {
                            ready: OnceCell::new(),
                            subscribers: RwLock::new(HashMap::new()),
                            stop: CancellationToken::new(),
                        })
                    })
                    .clone()
            };
            entry
                .ready
                .get_or_try_init(|| self.start_fanout(&key, &entry))
                .await?;
            let channels = self.channels.lock().expect("hub lock");
            // The entry may have been emptied and removed while we awaited the
            // subscription; then go round again with a fresh one.
            if channels.get(&key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                let mut subs = entry.subscribers.write().expect("subscribers lock");
                conn.deliver(first);
                subs.insert(conn.id, conn);
                return Ok(());
            }
        }
    }

    /// Remove `conn_id` from a channel; the last one out drops the NATS
    /// subscription. Returns whether it was subscribed.
    pub fn unsubscribe(&self, app: &AppId, channel: &ChannelName, conn_id: u64) -> bool {
        let key = (app.clone(), channel.clone());
        let mut channels = self.channels.lock().expect("hub lock");
        let Some(entry) = channels.get(&key) else {
            return false;
        };
        let mut subs = entry.subscribers.write().expect("subscribers lock");
        let was = subs.remove(&conn_id).is_some();
        if subs.is_empty() {
            drop(subs);
            if let Some(entry) = channels.remove(&key) {
                entry.stop.cancel();
            }
        }
        was
    }

    /// Number of channels with at least one local subscriber.
    #[allow(dead_code)]
    pub fn channel_count(&self) -> usize {
        self.channels.lock().expect("hub lock").len()
    }

    async fn start_fanout(
        &self,
        key: &ChannelKey,
        entry: &Arc<ChannelEntry>,
    ) -> Result<(), async_nats::Error> {
        let subject = self.subjects.live(&key.0, &key.1);
        let mut sub = self.nats.subscribe(subject).await?;
        // Make sure the server has registered the SUB before we report success.
        self.nats.flush().await?;
        let weak = Arc::downgrade(entry);
        let stop = entry.stop.clone();
        let channel = key.1.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    msg = sub.next() => match msg { Some(m) => m, None => break },
                };
                let Some(entry) = weak.upgrade() else { break };
                match LiveEvent::from_message(&msg) {
                    Ok(event) => fan_out(&entry, &channel, &event),
                    Err(err) => {
                        tracing::warn!(%err, subject = %msg.subject, "dropping unreadable live event")
                    }
                }
            }
            // Dropping `sub` unsubscribes from NATS.
        });
        Ok(())
    }
}

fn fan_out(entry: &ChannelEntry, channel: &ChannelName, event: &LiveEvent) {
    let env = &event.envelope;
    // Serialize once per channel; every connection shares these bytes.
    let frame = Utf8Bytes::from(pusher::channel_event(
        &env.event,
        channel.as_str(),
        &env.data,
        &env.id,
        event.seq,
        env.at,
    ));
    let subs = entry.subscribers.read().expect("subscribers lock");
    let mut delivered = 0u64;
    for conn in subs.values() {
        if event.exclude_socket.as_deref() == Some(&*conn.socket_id) {
            continue;
        }
        conn.deliver(frame.clone());
        delivered += 1;
    }
    metrics::counter!("herald_gateway_deliveries_total").increment(delivered);
}
