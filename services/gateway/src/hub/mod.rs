//! Local fan-out: which connections on this gateway are subscribed to which
//! channel, and one set of NATS subscriptions per channel that has any.
//!
//! Per channel the hub holds up to three core-NATS subscriptions, all served
//! by one task: the stored events' live subject (every channel), the
//! ephemeral subject for client events (private and presence channels), and
//! the presence service's member events (presence channels). A message is
//! rendered into a client frame once and the same bytes are queued on every
//! subscribed connection. A connection whose queue holds more bytes than its
//! bound is a slow consumer: it is told to close (it reconnects and
//! resumes) rather than holding memory or slowing everyone else down.
//!
//! A presence subscriber starts *pending*: its frames are buffered until the
//! member list it is sent is known, so that it never sees a member event
//! older than that list, nor misses a newer one. A cache-channel subscriber
//! is pending likewise until the channel's last event is read, so that it
//! gets that event first and then only newer ones.
//!
//! * [`conn`] — how the hub reaches a connection (byte-bounded queue,
//!   control, slow flag).
//! * [`subscriber`] — one subscription and its hold/release rule.
//! * [`fanout`] — the per-channel task rendering and offering frames.
//! * [`users`] — signed-in users' connections.
//! * [`dedupe`] — de-duplicated multi-channel publishes.
//! * [`watchlist`] — connections watching users' online status.

mod conn;
mod dedupe;
mod fanout;
mod subscriber;
mod users;
mod watchlist;

pub(crate) use conn::{ConnHandle, Control, Next, Outbox};
pub(crate) use fanout::stored_frame;
pub(crate) use subscriber::Ready;

use axum::extract::ws::Utf8Bytes;
use dedupe::Dedupe;
use herald_proto::{AppId, ChannelKind, ChannelName, Subjects, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use subscriber::Subscriber;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use users::Users;

type ChannelKey = (AppId, ChannelName);

/// What this gateway's presence subscribers of a channel have been told:
/// the member list as of a KV revision, kept up to date by the member
/// events, so that after a NATS reconnect (member events are core NATS and
/// may have been missed) the difference to a fresh list can be sent.
///
/// The view starts from the first subscriber's member list and then follows
/// the member events only: a later subscriber's list must not move it ahead,
/// since events older than that list may still be on their way to the
/// subscribers who were there before (they need them).
#[derive(Debug, Default)]
pub(super) struct MemberView {
    /// Set once the first member list arrived.
    pub started: bool,
    /// The newest revision the view reflects.
    pub revision: u64,
    /// Member events at or below this revision came before a post-reconnect
    /// re-read whose differences were already sent: they are stale.
    pub repaired_up_to: u64,
    pub members: std::collections::BTreeMap<String, serde_json::Value>,
}

/// One channel with local subscribers.
struct ChannelEntry {
    /// Presence channels: the members as told to the subscribers.
    members: Mutex<MemberView>,
    /// Set once the NATS subscriptions are live (SUBs registered).
    ready: OnceCell<()>,
    subscribers: RwLock<HashMap<u64, Subscriber>>,
    /// Stops the fan-out task when the last local subscriber leaves.
    stop: CancellationToken,
    /// Whether this channel's occupancy is recorded ([`Join::record_occupancy`]).
    records_occupancy: bool,
}

/// The channel → connections and user → connections index of one gateway.
pub(crate) struct Hub {
    nats: async_nats::Client,
    js: async_nats::jetstream::Context,
    /// Counts NATS (re)connections (see `herald_server::connect_nats_watching`).
    reconnects: tokio::sync::watch::Receiver<u64>,
    subjects: Subjects,
    channels: Mutex<HashMap<ChannelKey, Arc<ChannelEntry>>>,
    users: Users,
    /// Signed-in connections' watchlists.
    pub watchlists: watchlist::Watchlists,
    dedupe: Arc<Dedupe>,
    presence: Arc<crate::presence::PresenceClient>,
    /// Records the channels this gateway has subscribers of (first in, last out).
    occupancy: crate::occupancy::Occupancy,
}

/// What a subscribe asks of the hub.
pub(crate) struct Join {
    pub conn: ConnHandle,
    /// For presence channels: the member's user id. The subscriber starts
    /// pending and `first` is not sent until [`Hub::presence_ready`].
    pub presence_user: Option<UserId>,
    /// The subscription-succeeded frame, for non-presence channels.
    pub first: Option<Utf8Bytes>,
    /// Start pending (frames held) until [`Hub::ready`], as for presence.
    pub hold: bool,
    /// Record the channel's occupancy (the same for every join of a
    /// channel: see `ws::subscribe`).
    pub record_occupancy: bool,
}

impl Hub {
    pub fn new(
        nats: async_nats::Client,
        reconnects: tokio::sync::watch::Receiver<u64>,
        subjects: Subjects,
        presence: Arc<crate::presence::PresenceClient>,
        occupancy: crate::occupancy::Occupancy,
    ) -> Self {
        Self {
            presence,
            occupancy,
            js: async_nats::jetstream::new(nats.clone()),
            nats,
            reconnects,
            subjects,
            channels: Mutex::new(HashMap::new()),
            users: Users::default(),
            watchlists: Default::default(),
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
                            members: Mutex::new(MemberView::default()),
                            ready: OnceCell::new(),
                            subscribers: RwLock::new(HashMap::new()),
                            stop: CancellationToken::new(),
                            records_occupancy: join.record_occupancy,
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
                let hold = join.presence_user.is_some() || join.hold;
                if let Some(first) = join.first {
                    join.conn.deliver(first);
                }
                let id = join.conn.id;
                subs.insert(id, Subscriber::new(join.conn, join.presence_user, hold));
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
        if let Some(sub) = subs.get_mut(&conn_id) {
            sub.go_live(ready);
        }
    }

    /// A presence subscriber got the member list as of `revision`: the
    /// channel's view starts from (or catches up to) it.
    pub fn member_list(
        &self,
        app: &AppId,
        channel: &ChannelName,
        revision: u64,
        members: &std::collections::BTreeMap<String, serde_json::Value>,
    ) {
        let key = (app.clone(), channel.clone());
        let channels = self.channels.lock().expect("hub lock");
        if let Some(entry) = channels.get(&key) {
            let mut view = entry.members.lock().expect("members lock");
            if !view.started {
                view.started = true;
                view.revision = revision;
                view.members = members.clone();
            }
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
                // Reported under the hub lock, before a new entry of the
                // channel can exist, so the recorder sees a channel's
                // changes in the order they happened.
                if entry.records_occupancy {
                    self.occupancy.vacated(app, channel);
                }
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
                    subs.values().filter(|s| s.is_live()).count() as u64,
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Record a signed-in connection of a user.
    pub fn add_user(&self, app: &AppId, user_id: &UserId, conn: ConnHandle) {
        self.users.add(app, user_id, conn);
    }

    /// Forget a signed-in connection.
    pub fn remove_user(&self, app: &AppId, user_id: &UserId, conn_id: u64) {
        self.users.remove(app, user_id, conn_id);
    }

    /// The local connections of a signed-in user.
    pub fn user_connections(&self, app: &AppId, user_id: &UserId) -> Vec<ConnHandle> {
        self.users.connections(app, user_id)
    }

    async fn start_fanout(
        &self,
        key: &ChannelKey,
        entry: &Arc<ChannelEntry>,
    ) -> Result<(), async_nats::Error> {
        let (app, channel) = key;
        let live = self
            .nats
            .subscribe(self.subjects.live(app, channel))
            .await?;
        let kind = channel.kind();
        let eph = match kind {
            ChannelKind::Public => None,
            _ => Some(
                self.nats
                    .subscribe(self.subjects.ephemeral(app, channel))
                    .await?,
            ),
        };
        let presence = match kind {
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
        let subs = fanout::ChannelSubscriptions {
            live,
            ephemeral: eph,
            presence,
        };
        // Where the channel stands now that the live subscription is
        // registered: any later stored event comes live, and a live event
        // whose previous sequence is newer than this reveals a gap.
        let last_seq =
            match herald_stream::replay::last_seq(&self.js, &self.subjects, app, channel).await {
                Ok(seq) => Some(seq),
                Err(err) => {
                    tracing::warn!(%err, %channel, "cannot read a channel's last sequence");
                    None
                }
            };
        let repairer = fanout::Repairer {
            js: self.js.clone(),
            subjects: self.subjects.clone(),
            app: app.clone(),
            reconnects: self.reconnects.clone(),
            last_seq,
            presence: (channel.kind() == ChannelKind::Presence).then(|| self.presence.clone()),
        };
        tokio::spawn(fanout::run(
            subs,
            Arc::downgrade(entry),
            channel.clone(),
            self.dedupe.clone(),
            repairer,
            entry.stop.clone(),
        ));
        // Once per entry, i.e. per first local subscriber (every subscriber
        // of the entry waits for this `ready`): the channel's occupancy key,
        // written before anyone is told they are subscribed.
        if entry.records_occupancy {
            self.occupancy.occupied(app, channel).await;
        }
        Ok(())
    }
}
