//! Local fan-out: which connections on this gateway are subscribed to which
//! channel, and one set of NATS subscriptions per channel that has any.
//!
//! Per channel the hub holds up to three core-NATS subscriptions, all served
//! by one task: the stored events' live subject (every channel), the
//! ephemeral subject for client events (private and presence channels), and
//! the presence service's member events (presence channels). A message is
//! rendered into a client frame once and the same bytes are queued on every
//! subscribed connection. A connection whose bounded queue is full is a slow
//! consumer: it is told to close (it reconnects and resumes) rather than
//! holding memory or slowing everyone else down.
//!
//! A presence subscriber starts *pending*: its frames are buffered until the
//! member list it is sent is known, so that it never sees a member event
//! older than that list, nor misses a newer one. A cache-channel subscriber
//! is pending likewise until the channel's last event is read, so that it
//! gets that event first and then only newer ones.

use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use herald_proto::control::EphemeralEvent;
use herald_proto::presence::PresenceEvent;
use herald_proto::{pusher, AppId, ChannelKind, ChannelName, Subjects};
use herald_stream::LiveEvent;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
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

/// What the control plane asks of a connection.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// Close the connection (`terminate_connections`).
    Terminate,
    /// Subscribe on the server's authority.
    Subscribe(ChannelName),
    /// Unsubscribe on the server's authority.
    Unsubscribe(ChannelName),
}

/// How the hub reaches one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    pub id: u64,
    pub socket_id: Arc<str>,
    pub tx: mpsc::Sender<Outbound>,
    pub ctl: mpsc::Sender<Control>,
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
/// A signed-in user of one app.
type UserKey = (AppId, Arc<str>);

/// A frame waiting for a pending presence subscriber.
struct Held {
    /// Presence events carry their KV revision; others are always delivered.
    revision: Option<u64>,
    /// Stored events carry their stream sequence.
    seq: Option<u64>,
    /// The member the event is about (not sent to that member's own sockets).
    about_user: Option<Arc<str>>,
    frame: Utf8Bytes,
}

struct Subscriber {
    conn: ConnHandle,
    /// On presence channels: the user this socket is a member as.
    user_id: Option<Arc<str>>,
    /// Member events at or below this revision are already reflected in the
    /// member list the socket got.
    since_revision: u64,
    /// Stored events at or below this sequence are older than (or are) the
    /// cached event the socket got.
    since_seq: u64,
    /// `Some` while a presence subscriber waits for its member list.
    pending: Option<Vec<Held>>,
}

impl Subscriber {
    fn offer(
        &mut self,
        revision: Option<u64>,
        seq: Option<u64>,
        about_user: Option<&Arc<str>>,
        frame: &Utf8Bytes,
    ) {
        if let (Some(me), Some(about)) = (&self.user_id, about_user) {
            if me == about {
                return;
            }
        }
        if let Some(held) = &mut self.pending {
            held.push(Held {
                revision,
                seq,
                about_user: about_user.cloned(),
                frame: frame.clone(),
            });
            return;
        }
        if revision.is_some_and(|r| r <= self.since_revision)
            || seq.is_some_and(|s| s <= self.since_seq)
        {
            return;
        }
        self.conn.deliver(frame.clone());
    }
}

struct ChannelEntry {
    /// Set once the NATS subscriptions are live (SUBs flushed to the server).
    ready: OnceCell<()>,
    subscribers: RwLock<HashMap<u64, Subscriber>>,
    /// Stops the fan-out task when the last local subscriber leaves.
    stop: CancellationToken,
}

/// The channel → connections and user → connections index of one gateway.
pub(crate) struct Hub {
    nats: async_nats::Client,
    subjects: Subjects,
    channels: Mutex<HashMap<ChannelKey, Arc<ChannelEntry>>>,
    users: Mutex<HashMap<UserKey, HashMap<u64, ConnHandle>>>,
    dedupe: Arc<Dedupe>,
}

/// Connections that already got an event of a de-duplicated multi-channel
/// publish, kept for a short while per publish.
#[derive(Default)]
struct Dedupe {
    groups: Mutex<HashMap<String, (Instant, HashSet<u64>)>>,
}

/// How long a de-duplication group is remembered: the channels of one
/// publish arrive within milliseconds of each other.
const DEDUPE_TTL: Duration = Duration::from_secs(30);

impl Dedupe {
    /// Whether `conn` may receive an event of `group` (and remember it did).
    fn first_time(&self, group: &str, conn: u64) -> bool {
        let mut groups = self.groups.lock().expect("dedupe lock");
        let now = Instant::now();
        if groups.len() > 1024 {
            groups.retain(|_, (at, _)| now.duration_since(*at) < DEDUPE_TTL);
        }
        groups
            .entry(group.to_owned())
            .or_insert_with(|| (now, HashSet::new()))
            .1
            .insert(conn)
    }
}

/// What a subscribe asks of the hub.
pub(crate) struct Join {
    pub conn: ConnHandle,
    /// For presence channels: the member's user id. The subscriber starts
    /// pending and `first` is not sent until [`Hub::presence_ready`].
    pub presence_user: Option<Arc<str>>,
    /// The subscription-succeeded frame, for non-presence channels.
    pub first: Option<Utf8Bytes>,
    /// Start pending (frames held) until [`Hub::ready`], as for presence.
    pub hold: bool,
}

/// What a pending subscriber is sent when it goes live.
pub(crate) struct Ready {
    /// Member events at or below this KV revision are not sent.
    pub revision: u64,
    /// Stored events at or below this stream sequence are not sent.
    pub seq: u64,
    /// Sent first, in order (subscription succeeded, the cached event).
    pub frames: Vec<Utf8Bytes>,
}

impl Hub {
    pub fn new(nats: async_nats::Client, subjects: Subjects) -> Self {
        Self {
            nats,
            subjects,
            channels: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            dedupe: Arc::default(),
        }
    }

    /// Add a connection to a channel. Returns only once the channel's NATS
    /// subscriptions are registered with the server, so that any event stored
    /// after the client sees its subscription succeed is delivered, and the
    /// `first` frame is always queued before the channel's first event.
    pub async fn subscribe(
        &self,
        app: &AppId,
        channel: &ChannelName,
        join: Join,
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
                let pending = (join.presence_user.is_some() || join.hold).then(Vec::new);
                if let Some(first) = join.first {
                    join.conn.deliver(first);
                }
                subs.insert(
                    join.conn.id,
                    Subscriber {
                        conn: join.conn,
                        user_id: join.presence_user,
                        since_revision: 0,
                        since_seq: 0,
                        pending,
                    },
                );
                return Ok(());
            }
        }
    }

    /// A pending subscriber is ready (it got its member list, its cached
    /// event): queue `ready.frames`, then every held frame newer than them,
    /// and go live.
    pub fn ready(&self, app: &AppId, channel: &ChannelName, conn_id: u64, ready: Ready) {
        let key = (app.clone(), channel.clone());
        let channels = self.channels.lock().expect("hub lock");
        let Some(entry) = channels.get(&key) else {
            return;
        };
        let mut subs = entry.subscribers.write().expect("subscribers lock");
        let Some(sub) = subs.get_mut(&conn_id) else {
            return;
        };
        sub.since_revision = ready.revision;
        sub.since_seq = ready.seq;
        for frame in ready.frames {
            sub.conn.deliver(frame);
        }
        for held in sub.pending.take().unwrap_or_default() {
            sub.offer(
                held.revision,
                held.seq,
                held.about_user.as_ref(),
                &held.frame,
            );
        }
    }

    /// Remove `conn_id` from a channel; the last one out drops the NATS
    /// subscriptions. Returns whether it was subscribed.
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

    /// Local subscription counts of an app's channels (live subscribers only).
    pub fn occupancy(&self, app: &AppId, filter: impl Fn(&str) -> bool) -> Vec<(String, u64)> {
        let channels = self.channels.lock().expect("hub lock");
        channels
            .iter()
            .filter(|((a, c), _)| a == app && filter(c.as_str()))
            .map(|((_, c), entry)| {
                let subs = entry.subscribers.read().expect("subscribers lock");
                (
                    c.to_string(),
                    subs.values().filter(|s| s.pending.is_none()).count() as u64,
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Record a signed-in connection of a user.
    pub fn add_user(&self, app: &AppId, user_id: &Arc<str>, conn: ConnHandle) {
        let mut users = self.users.lock().expect("users lock");
        users
            .entry((app.clone(), user_id.clone()))
            .or_default()
            .insert(conn.id, conn);
    }

    /// Forget a signed-in connection.
    pub fn remove_user(&self, app: &AppId, user_id: &Arc<str>, conn_id: u64) {
        let mut users = self.users.lock().expect("users lock");
        let key = (app.clone(), user_id.clone());
        if let Some(conns) = users.get_mut(&key) {
            conns.remove(&conn_id);
            if conns.is_empty() {
                users.remove(&key);
            }
        }
    }

    /// The local connections of a signed-in user.
    pub fn user_connections(&self, app: &AppId, user_id: &str) -> Vec<ConnHandle> {
        let users = self.users.lock().expect("users lock");
        users
            .get(&(app.clone(), Arc::from(user_id)))
            .map(|conns| conns.values().cloned().collect())
            .unwrap_or_default()
    }

    async fn start_fanout(
        &self,
        key: &ChannelKey,
        entry: &Arc<ChannelEntry>,
    ) -> Result<(), async_nats::Error> {
        let (app, channel) = key;
        let mut live = self
            .nats
            .subscribe(self.subjects.live(app, channel))
            .await?;
        let kind = channel.kind();
        let mut eph = match kind {
            ChannelKind::Public => None,
            _ => Some(
                self.nats
                    .subscribe(self.subjects.ephemeral(app, channel))
                    .await?,
            ),
        };
        let mut presence = match kind {
            ChannelKind::Presence => Some(
                self.nats
                    .subscribe(self.subjects.presence_events(app, channel))
                    .await?,
            ),
            _ => None,
        };
        // Make sure the server has registered the SUBs before we report
        // success (a flush alone only empties our socket buffer).
        herald_stream::server_barrier(&self.nats).await?;
        let weak = Arc::downgrade(entry);
        let stop = entry.stop.clone();
        let channel = channel.clone();
        let dedupe = self.dedupe.clone();
        tokio::spawn(async move {
            loop {
                let (msg, source) = tokio::select! {
                    _ = stop.cancelled() => break,
                    msg = live.next() => (msg, Source::Live),
                    Some(msg) = next_opt(&mut eph) => (Some(msg), Source::Ephemeral),
                    Some(msg) = next_opt(&mut presence) => (Some(msg), Source::Presence),
                };
                let Some(msg) = msg else { break };
                let Some(entry) = weak.upgrade() else { break };
                match source {
                    Source::Live => match LiveEvent::from_message(&msg) {
                        Ok(event) => fan_out_stored(&entry, &channel, &event, &dedupe),
                        Err(err) => {
                            tracing::warn!(%err, subject = %msg.subject, "dropping unreadable live event")
                        }
                    },
                    Source::Ephemeral => {
                        match serde_json::from_slice::<EphemeralEvent>(&msg.payload) {
                            Ok(event) => fan_out_ephemeral(&entry, &channel, &event),
                            Err(err) => tracing::warn!(%err, "dropping unreadable ephemeral event"),
                        }
                    }
                    Source::Presence => match serde_json::from_slice::<PresenceEvent>(&msg.payload)
                    {
                        Ok(event) => fan_out_presence(&entry, &channel, &event),
                        Err(err) => tracing::warn!(%err, "dropping unreadable presence event"),
                    },
                }
            }
            // Dropping the subscribers unsubscribes from NATS.
        });
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Source {
    Live,
    Ephemeral,
    Presence,
}

async fn next_opt(sub: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match sub {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}

fn fan_out_stored(entry: &ChannelEntry, channel: &ChannelName, event: &LiveEvent, dedupe: &Dedupe) {
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
    let mut subs = entry.subscribers.write().expect("subscribers lock");
    let mut delivered = 0u64;
    for sub in subs.values_mut() {
        if event.exclude_socket.as_deref() == Some(&*sub.conn.socket_id) {
            continue;
        }
        if let Some(group) = &event.dedupe_group {
            if !dedupe.first_time(group, sub.conn.id) {
                continue;
            }
        }
        sub.offer(None, Some(event.seq), None, &frame);
        delivered += 1;
    }
    metrics::counter!("herald_gateway_deliveries_total").increment(delivered);
}

fn fan_out_ephemeral(entry: &ChannelEntry, channel: &ChannelName, event: &EphemeralEvent) {
    let mut frame = serde_json::json!({ "event": event.event, "channel": channel.as_str(), "data": event.data });
    if let Some(user) = &event.user_id {
        frame["user_id"] = serde_json::Value::String(user.clone());
    }
    let frame = Utf8Bytes::from(frame.to_string());
    let mut subs = entry.subscribers.write().expect("subscribers lock");
    for sub in subs.values_mut() {
        if event.socket_id.as_deref() == Some(&*sub.conn.socket_id) {
            continue;
        }
        sub.offer(None, None, None, &frame);
    }
}

fn fan_out_presence(entry: &ChannelEntry, channel: &ChannelName, event: &PresenceEvent) {
    let (name, data, user, revision) = match event {
        PresenceEvent::MemberAdded {
            user_id,
            user_info,
            revision,
        } => (
            "pusher_internal:member_added",
            serde_json::json!({ "user_id": user_id, "user_info": user_info }),
            user_id,
            *revision,
        ),
        PresenceEvent::MemberRemoved { user_id, revision } => (
            "pusher_internal:member_removed",
            serde_json::json!({ "user_id": user_id }),
            user_id,
            *revision,
        ),
    };
    let frame = Utf8Bytes::from(
        serde_json::json!({ "event": name, "channel": channel.as_str(), "data": data.to_string() })
            .to_string(),
    );
    let user: Arc<str> = Arc::from(user.as_str());
    let mut subs = entry.subscribers.write().expect("subscribers lock");
    for sub in subs.values_mut() {
        sub.offer(Some(revision), None, Some(&user), &frame);
    }
}
