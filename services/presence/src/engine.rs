//! The engine: the one task that owns the [`PresenceState`].
//!
//! It folds the presence KV bucket's watch into the state, publishes
//! `member_added` / `member_removed`, answers gateways' member queries and
//! the REST API's questions, and sweeps dead gateways — all from one loop,
//! so a member list answered at revision X is published before any event
//! with a revision above X (both go out in order on one NATS connection).
//!
//! **Start-up without false events.** The engine first reads the view
//! bucket (what subscribers were told before it stopped), then the presence
//! bucket's current state (last value per key) without emitting anything,
//! then diffs the two: only members who joined or left while it was down
//! produce events. From then on it follows the bucket live and keeps the
//! view up to date with every event it emits (one write per event).
//!
//! **Dead gateways.** Every sweep interval, each gateway whose heartbeat is
//! older than the TTL has its keys deleted from the bucket, conditionally on
//! the revision judged stale; the deletes come back through the watch and
//! produce the `member_removed` events like any other leave. Entry times
//! read at start-up come from the KV entries' own timestamps, so a gateway
//! that heartbeated just before a restart is neither expired early nor kept
//! alive longer than the TTL.

use crate::buckets;
use crate::state::{Change, PresenceState, UserPresence};
use crate::writer::WriteOp;
use async_nats::jetstream::kv;
use async_nats::{Client, Message};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use herald_proto::presence::{
    last_seen_key, GatewayHeartbeat, MembersReply, MembersRequest, PresenceEvent, PresenceKey,
    ViewKey,
};
use herald_proto::{now_ms, AppId, ChannelKind, ChannelName, Subjects, UserId};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A question from the REST API, answered from the state.
#[derive(Debug)]
pub enum Command {
    /// `user_id` → `user_info` of a channel's members.
    Members {
        app: AppId,
        channel: ChannelName,
        reply: oneshot::Sender<BTreeMap<String, Value>>,
    },
    /// Presence of several users of one app, in the order asked.
    Users {
        app: AppId,
        user_ids: Vec<UserId>,
        reply: oneshot::Sender<Vec<UserPresence>>,
    },
}

/// Member queries from gateways, tagged with the app their subject names.
pub type Queries = BoxStream<'static, (AppId, Message)>;

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub heartbeat_ttl: Duration,
    pub sweep_interval: Duration,
    pub query_timeout: Duration,
    /// How long a deleted socket key's marker stays in the bucket before it
    /// is purged (see [`Engine::reap`]).
    pub tombstone_age: Duration,
}

/// A member query waiting for the state to reach its `min_revision`.
struct Pending {
    app: AppId,
    channel: ChannelName,
    key: Option<String>,
    /// Page cursor (see `MembersRequest::after`).
    after: Option<String>,
    reply: async_nats::Subject,
    deadline: Instant,
}

/// Milliseconds on a monotonic clock started with the engine. KV entry
/// timestamps (wall clock) are turned into it once, as an age, so later
/// wall-clock jumps cannot make a gateway look dead.
struct Clock {
    start: Instant,
}

impl Clock {
    fn now(&self) -> i64 {
        self.start.elapsed().as_millis() as i64
    }

    /// When something written at wall-clock `created_ms` happened, on this
    /// clock. An entry stamped in the future (clock skew) counts as now.
    fn at_wall(&self, created_ms: i64) -> i64 {
        self.now() - (now_ms() - created_ms).max(0)
    }
}

fn created_ms(entry: &kv::Entry) -> i64 {
    (entry.created.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The owner of the presence state.
pub struct Engine {
    pub client: Client,
    pub subjects: Subjects,
    pub presence: kv::Store,
    pub view: kv::Store,
    pub state: PresenceState,
    pub writes: mpsc::Sender<WriteOp>,
    /// The REST API's questions. Shared across terms of office (see
    /// [`crate::leader`]): each engine run locks it for as long as it runs.
    pub commands: Arc<tokio::sync::Mutex<mpsc::Receiver<Command>>>,
    pub settings: EngineSettings,
    /// Set once the start-up diff is done: the readiness check.
    pub live: Arc<AtomicBool>,
}

/// The engine's working state besides the presence state.
struct Run {
    clock: Clock,
    pending: BTreeMap<(u64, u64), Pending>,
    next_pending: u64,
    /// Stale keys handed to the writer: key → (revision, when), so a slow
    /// writer is not handed the same delete again every sweep.
    sweeping: HashMap<String, (u64, i64)>,
    /// Gateways already warned about a heartbeat interval too long for the TTL.
    warned: HashSet<String>,
    /// Delete markers of socket keys, oldest first: (seen, key, revision).
    tombstones: VecDeque<(i64, String, u64)>,
}

/// Whether a deleted key's marker may be purged: socket keys only (`sub.`
/// and `conn.`; socket ids are never reused). `gw.` markers stay, since
/// gateways watch them to learn that a peer is gone.
fn reapable(key: &str) -> bool {
    matches!(
        herald_proto::presence::PresenceKey::parse(key),
        Ok(herald_proto::presence::PresenceKey::Subscription { .. }
            | herald_proto::presence::PresenceKey::Connection { .. })
    )
}

impl Engine {
    /// Load, reconcile, then follow the bucket and answer `queries` until
    /// `token` is cancelled. (`queries` is not `Sync`, so it is owned by this
    /// loop rather than borrowed through `self` by the handlers.)
    pub async fn run(
        mut self,
        mut queries: Queries,
        token: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut run = Run {
            clock: Clock {
                start: Instant::now(),
            },
            pending: BTreeMap::new(),
            next_pending: 0,
            sweeping: HashMap::new(),
            warned: HashSet::new(),
            tombstones: VecDeque::new(),
        };
        let commands = self.commands.clone();
        let mut commands = commands.lock().await;
        let told = buckets::read_all(&self.view).await?;
        let (messages, last_sequence) = buckets::bucket_extent(&self.presence).await?;
        let mut watch = self.presence.watch_with_history(">").await?;
        let mut hints = HashMap::new();
        if messages > 0 {
            // The initial state: last value of every key, no events.
            loop {
                let entry = tokio::select! {
                    _ = token.cancelled() => return Ok(()),
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
                if value.is_none() && reapable(&entry.key) {
                    run.tombstones
                        .push_back((seen, entry.key.clone(), entry.revision));
                }
                if value.is_none() {
                    // Deletes of `conn.` keys tell when users who went
                    // offline while the service was down were last seen.
                    if let Ok(herald_proto::presence::PresenceKey::Connection {
                        app,
                        user_id,
                        ..
                    }) = herald_proto::presence::PresenceKey::parse(&entry.key)
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
        self.reconcile(told, hints).await;
        self.live.store(true, Ordering::SeqCst);
        tracing::info!(
            revision = self.state.revision(),
            members = self.state.member_total(),
            channels = self.state.channel_count(),
            gateways = self.state.gateway_count(),
            "presence state loaded"
        );

        let mut sweep = tokio::time::interval(self.settings.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expiry = tokio::time::interval(Duration::from_millis(100));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        let seen = run.clock.now();
                        self.check_interval(&mut run, &entry);
                        self.apply_live(&entry, seen).await;
                        if entry.operation != kv::Operation::Put && reapable(&entry.key) {
                            run.tombstones.push_back((seen, entry.key.clone(), entry.revision));
                        }
                        self.answer_ready(&mut run).await;
                    }
                    Some(Err(err)) => {
                        tracing::warn!(%err, "presence bucket watch error");
                    }
                    None => {
                        tracing::warn!("presence bucket watch ended; resuming");
                        match self.resume_watch(&token).await {
                            Some(resumed) => watch = resumed,
                            None => break,
                        }
                    }
                },
                Some((app, msg)) = queries.next() => self.on_query(&mut run, app, msg).await,
                Some(command) = commands.recv() => self.on_command(command),
                _ = sweep.tick() => {
                    self.sweep(&mut run).await;
                    self.reap(&mut run).await;
                }
                _ = expiry.tick(), if !run.pending.is_empty() => self.expire_queries(&mut run).await,
            }
        }
        self.live.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Re-open the watch after the last applied revision, retrying until it
    /// works or the service stops.
    async fn resume_watch(&self, token: &CancellationToken) -> Option<kv::Watch> {
        loop {
            match self
                .presence
                .watch_all_from_revision(self.state.revision() + 1)
                .await
            {
                Ok(watch) => return Some(watch),
                Err(err) => tracing::warn!(%err, "cannot resume the presence watch"),
            }
            tokio::select! {
                _ = token.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Warn (once per gateway) when a gateway heartbeats so rarely that the
    /// TTL would expire it between two heartbeats: a misconfiguration that
    /// makes its members flap.
    fn check_interval(&self, run: &mut Run, entry: &kv::Entry) {
        let Some(gateway) = PresenceKey::heartbeat_gateway(&entry.key) else {
            return;
        };
        if entry.operation != kv::Operation::Put || run.warned.contains(gateway) {
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
            run.warned.insert(gateway.to_owned());
        }
    }

    async fn apply_live(&mut self, entry: &kv::Entry, seen: i64) {
        let value = matches!(entry.operation, kv::Operation::Put).then_some(entry.value.as_ref());
        let changes = self.state.apply(&entry.key, value, entry.revision, seen);
        let at = created_ms(entry);
        for change in changes {
            self.emit(change, entry.revision, at).await;
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        metrics::gauge!("herald_presence_members").set(self.state.member_total() as f64);
        metrics::gauge!("herald_presence_channels").set(self.state.channel_count() as f64);
        metrics::gauge!("herald_presence_gateways").set(self.state.gateway_count() as f64);
    }

    async fn write(&self, op: WriteOp) {
        if self.writes.send(op).await.is_err() {
            tracing::error!("the KV writer has stopped; a write is lost");
        }
    }

    async fn publish(&self, app: &AppId, channel: &ChannelName, event: &PresenceEvent) {
        let subject = self.subjects.presence_events(app, channel);
        let payload = Bytes::from(serde_json::to_vec(event).unwrap_or_default());
        if let Err(err) = self.client.publish(subject, payload).await {
            tracing::error!(%err, "cannot publish a presence event");
        }
    }

    /// Turn one change into its event, view update and last-seen record.
    /// `at` is when it happened (wall clock, ms).
    async fn emit(&self, change: Change, revision: u64, at: i64) {
        match change {
            Change::MemberAdded {
                app,
                channel,
                user_id,
                user_info,
            } => {
                // Publish first, record second: a crash in between repeats
                // the event after the restart rather than losing it.
                let key = ViewKey::Member {
                    app: app.clone(),
                    channel: channel.clone(),
                    user_id: user_id.clone(),
                }
                .render();
                let value = Bytes::from(serde_json::to_vec(&user_info).unwrap_or_default());
                let event = PresenceEvent::MemberAdded {
                    user_id,
                    user_info,
                    revision,
                };
                self.publish(&app, &channel, &event).await;
                metrics::counter!("herald_presence_events_total", "type" => "member_added")
                    .increment(1);
                self.write(WriteOp::ViewPut { key, value }).await;
            }
            Change::MemberRemoved {
                app,
                channel,
                user_id,
            } => {
                let key = ViewKey::Member {
                    app: app.clone(),
                    channel: channel.clone(),
                    user_id: user_id.clone(),
                }
                .render();
                let event = PresenceEvent::MemberRemoved { user_id, revision };
                self.publish(&app, &channel, &event).await;
                metrics::counter!("herald_presence_events_total", "type" => "member_removed")
                    .increment(1);
                self.write(WriteOp::ViewDelete { key }).await;
            }
            Change::ChannelOccupied { app, channel } => {
                // Webhooks will hang off these; for now a counter and a log.
                metrics::counter!("herald_presence_occupancy_total", "event" => "channel_occupied")
                    .increment(1);
                tracing::debug!(%app, %channel, "channel_occupied");
            }
            Change::ChannelVacated { app, channel } => {
                metrics::counter!("herald_presence_occupancy_total", "event" => "channel_vacated")
                    .increment(1);
                tracing::debug!(%app, %channel, "channel_vacated");
            }
            Change::UserOnline { app, user_id } => {
                let key = ViewKey::Online { app, user_id }.render();
                let value = Bytes::from(format!("{{\"at\":{at}}}"));
                self.write(WriteOp::ViewPut { key, value }).await;
            }
            Change::UserOffline { app, user_id } => {
                let key = ViewKey::Online {
                    app: app.clone(),
                    user_id: user_id.clone(),
                }
                .render();
                self.write(WriteOp::ViewDelete { key }).await;
                self.write(WriteOp::LastSeen {
                    key: last_seen_key(&app, &user_id),
                    at,
                })
                .await;
            }
        }
    }

    /// Diff what subscribers were told (the view) against the state rebuilt
    /// at start-up, and emit only the differences. `hints` holds, per user,
    /// the time of the latest `conn.` delete seen while loading.
    async fn reconcile(
        &mut self,
        told: HashMap<String, Bytes>,
        hints: HashMap<(AppId, String), i64>,
    ) {
        let revision = self.state.revision();
        let now = now_ms();
        let mut told_members = HashSet::new();
        let mut told_online = HashSet::new();
        for key in told.keys() {
            match ViewKey::parse(key) {
                Some(ViewKey::Member {
                    app,
                    channel,
                    user_id,
                }) => {
                    told_members.insert((app, channel, user_id));
                }
                Some(ViewKey::Online { app, user_id }) => {
                    told_online.insert((app, user_id));
                }
                None => tracing::warn!(key, "ignoring a foreign key in the view bucket"),
            }
        }
        let mut left: Vec<_> = told_members
            .iter()
            .filter(|(app, channel, user)| !self.state.is_member(app, channel, user))
            .cloned()
            .collect();
        left.sort();
        let mut joined: Vec<_> = self
            .state
            .all_members()
            .into_iter()
            .filter(|(app, channel, user, _)| {
                !told_members.contains(&(app.clone(), channel.clone(), user.clone()))
            })
            .collect();
        joined.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        let came: Vec<_> = self
            .state
            .online_users()
            .filter(|user| !told_online.contains(*user))
            .cloned()
            .collect();
        let mut went: Vec<_> = told_online
            .iter()
            .filter(|(app, user)| !self.state.is_online(app, user))
            .cloned()
            .collect();
        went.sort();
        tracing::info!(
            left = left.len(),
            joined = joined.len(),
            online = came.len(),
            offline = went.len(),
            "reconciled the member view with the rebuilt state"
        );
        for (app, channel, user_id) in left {
            self.emit(
                Change::MemberRemoved {
                    app,
                    channel,
                    user_id,
                },
                revision,
                now,
            )
            .await;
        }
        for (app, channel, user_id, user_info) in joined {
            self.emit(
                Change::MemberAdded {
                    app,
                    channel,
                    user_id,
                    user_info,
                },
                revision,
                now,
            )
            .await;
        }
        for (app, user_id) in came {
            self.emit(Change::UserOnline { app, user_id }, revision, now)
                .await;
        }
        for (app, user_id) in went {
            // Without a `conn.` delete to date it, the restart is the best
            // bound we have.
            let at = hints
                .get(&(app.clone(), user_id.clone()))
                .copied()
                .unwrap_or(now);
            self.emit(Change::UserOffline { app, user_id }, revision, at)
                .await;
        }
        self.update_gauges();
    }

    async fn reply(&self, to: async_nats::Subject, reply: &MembersReply) {
        let payload = Bytes::from(serde_json::to_vec(reply).unwrap_or_default());
        if let Err(err) = self.client.publish(to, payload).await {
            tracing::warn!(%err, "cannot answer a member query");
        }
    }

    async fn refuse(&self, to: async_nats::Subject, error: String) {
        metrics::counter!("herald_presence_member_queries_total", "outcome" => "error")
            .increment(1);
        let reply = MembersReply {
            members: BTreeMap::new(),
            revision: self.state.revision(),
            admitted: false,
            error: Some(error),
            next: None,
        };
        self.reply(to, &reply).await;
    }

    async fn on_query(&self, run: &mut Run, app: AppId, msg: Message) {
        let Some(reply) = msg.reply else {
            tracing::debug!("member query without a reply subject ignored");
            return;
        };
        let request: MembersRequest = match serde_json::from_slice(&msg.payload) {
            Ok(request) => request,
            Err(err) => return self.refuse(reply, format!("bad request: {err}")).await,
        };
        let channel = match ChannelName::parse(&request.channel) {
            Ok(channel) if channel.kind() == ChannelKind::Presence => channel,
            Ok(_) => {
                return self
                    .refuse(reply, "not a presence channel".to_owned())
                    .await
            }
            Err(err) => return self.refuse(reply, err.to_string()).await,
        };
        let pending = Pending {
            app,
            channel,
            key: request.key,
            after: request.after,
            reply,
            deadline: Instant::now() + self.settings.query_timeout,
        };
        if request.min_revision <= self.state.revision() {
            self.answer(pending).await;
        } else {
            run.pending
                .insert((request.min_revision, run.next_pending), pending);
            run.next_pending += 1;
        }
    }

    async fn answer(&self, pending: Pending) {
        let admitted = match &pending.key {
            Some(key) => self.state.admitted(key, &pending.app, &pending.channel),
            None => true,
        };
        let (members, next) = self.state.members_page(
            &pending.app,
            &pending.channel,
            pending.after.as_deref(),
            herald_proto::presence::MEMBERS_PAGE,
        );
        let reply = MembersReply {
            members,
            revision: self.state.revision(),
            admitted,
            error: None,
            next,
        };
        metrics::counter!("herald_presence_member_queries_total", "outcome" => "answered")
            .increment(1);
        self.reply(pending.reply, &reply).await;
    }

    /// Answer every waiting query whose revision has been reached.
    async fn answer_ready(&self, run: &mut Run) {
        let revision = self.state.revision();
        while let Some(entry) = run.pending.first_entry() {
            if entry.key().0 > revision {
                break;
            }
            self.answer(entry.remove()).await;
        }
    }

    async fn expire_queries(&self, run: &mut Run) {
        let now = Instant::now();
        let expired: Vec<(u64, u64)> = run
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(pending) = run.pending.remove(&key) {
                tracing::warn!(
                    min_revision = key.0,
                    revision = self.state.revision(),
                    "member query timed out waiting for its revision"
                );
                self.refuse(
                    pending.reply,
                    format!(
                        "presence state has not reached revision {} (at {})",
                        key.0,
                        self.state.revision()
                    ),
                )
                .await;
            }
        }
    }

    fn on_command(&self, command: Command) {
        match command {
            Command::Members {
                app,
                channel,
                reply,
            } => {
                let _ = reply.send(self.state.members(&app, &channel));
            }
            Command::Users {
                app,
                user_ids,
                reply,
            } => {
                let _ = reply.send(
                    user_ids
                        .iter()
                        .map(|user| self.state.user(&app, user.as_str()))
                        .collect(),
                );
            }
        }
    }

    /// Hand the keys of dead gateways to the writer for deletion.
    /// Purge the delete markers of socket keys once they are older than the
    /// tombstone age. Every socket leaves one marker per key, and with one
    /// value kept per key they would pile up for ever, each read again at
    /// every start-up. By then every watcher has seen the delete, and a key
    /// that is absent means the same as a deleted one. The purge is bounded
    /// by the marker's revision, so a newer write of the key would survive.
    async fn reap(&self, run: &mut Run) {
        let age = self.settings.tombstone_age.as_millis() as i64;
        let now = run.clock.now();
        while let Some((seen, _, _)) = run.tombstones.front() {
            if now - seen < age {
                break;
            }
            let (_, key, revision) = run.tombstones.pop_front().expect("front exists");
            self.write(WriteOp::Reap { key, revision }).await;
        }
    }

    async fn sweep(&self, run: &mut Run) {
        let now = run.clock.now();
        let stale = self.state.stale_keys(now, self.settings.heartbeat_ttl);
        // Forget hand-offs that are no longer stale (done or superseded).
        let current: HashSet<&str> = stale.iter().map(|k| k.key.as_str()).collect();
        run.sweeping.retain(|key, _| current.contains(key.as_str()));
        // A hand-off older than this is retried (its delete failed).
        let retry_after = (self.settings.sweep_interval.as_millis() as i64 * 3).max(30_000);
        let mut gateways = HashSet::new();
        for key in stale {
            if let Some((revision, when)) = run.sweeping.get(&key.key) {
                if *revision == key.revision && now - when < retry_after {
                    continue;
                }
            }
            run.sweeping.insert(key.key.clone(), (key.revision, now));
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
}
