//! The engine: the one task that owns the [`PresenceState`].
//!
//! It folds the presence KV bucket's watch into the state, publishes
//! `member_added` / `member_removed`, answers gateways' member queries and
//! the REST API's questions, and sweeps dead gateways — all from one loop,
//! so a member list answered at revision X is published before any event
//! with a revision above X (both go out in order on one NATS connection).
//! The loop is here; each thing it does has a module of its own:
//!
//! * [`load`] and [`reconcile`] — start-up without false events: read what
//!   subscribers were told and the bucket's current state, emit only the
//!   differences;
//! * [`emit`] — a state change turned into its event, view update and
//!   last-seen record;
//! * [`queries`] — gateways' member queries, held until the state reaches
//!   their revision;
//! * [`sweep`] — dead gateways' keys deleted;
//! * [`tombstones`] — old delete markers purged;
//! * [`clock`] — the monotonic clock every time is measured on.

mod clock;
mod emit;
mod load;
mod queries;
mod reconcile;
mod sweep;
mod tombstones;

use crate::state::{PresenceState, UserPresence};
use crate::writer::WriteOp;
use async_nats::jetstream::kv;
use async_nats::{Client, Message};
use clock::{created_ms, Clock};
use futures::stream::BoxStream;
use futures::StreamExt;
use herald_proto::{AppId, ChannelName, Subjects, UserId};
use load::Loaded;
use queries::Waiting;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use sweep::Sweeping;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tombstones::Tombstones;

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
    /// A gateway heartbeat older than this means the gateway is dead.
    pub heartbeat_ttl: Duration,
    /// Time between two sweeps for dead gateways (and marker purges).
    pub sweep_interval: Duration,
    /// Longest a member query is held for its revision.
    pub query_timeout: Duration,
    /// How long a deleted socket key's marker stays in the bucket before it
    /// is purged (see [`tombstones`]).
    pub tombstone_age: Duration,
    /// How long `channel_vacated` / `member_removed` webhooks are held (see
    /// [`emit`]); zero sends them at once.
    pub vacate_delay: Duration,
}

/// The owner of the presence state.
pub struct Engine {
    pub client: Client,
    /// The apps, for their webhook settings.
    pub apps: herald_config::AppRegistry,
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
    /// Vacated / removed webhooks held for the vacate delay.
    pub held: std::sync::Mutex<emit::Held>,
}

/// The engine's working state besides the presence state, one part per
/// concern.
struct Run {
    clock: Clock,
    /// Member queries waiting for their revision.
    queries: Waiting,
    /// The dead-gateway sweep's memory.
    sweeping: Sweeping,
    /// Delete markers waiting to be purged.
    tombstones: Tombstones,
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
            clock: Clock::start(),
            queries: Waiting::default(),
            sweeping: Sweeping::default(),
            tombstones: Tombstones::default(),
        };
        let commands = self.commands.clone();
        let mut commands = commands.lock().await;
        let Some(Loaded {
            mut watch,
            told,
            hints,
        }) = self.load(&mut run, &token).await?
        else {
            return Ok(());
        };
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
                        self.check_interval(&mut run.sweeping, &entry);
                        self.apply_live(&entry, seen).await;
                        run.tombstones.note(seen, &entry);
                        self.answer_ready(&mut run.queries).await;
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
                Some((app, msg)) = queries.next() => self.on_query(&mut run.queries, app, msg).await,
                Some(command) = commands.recv() => self.on_command(command),
                _ = sweep.tick() => {
                    self.sweep(&mut run).await;
                    self.reap(&mut run).await;
                }
                _ = expiry.tick(), if !run.queries.is_empty() || self.holds_any() => {
                    self.expire_queries(&mut run.queries).await;
                    self.release_held().await;
                }
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

    /// Apply one live entry and emit what it changed.
    async fn apply_live(&mut self, entry: &kv::Entry, seen: i64) {
        let value = matches!(entry.operation, kv::Operation::Put).then_some(entry.value.as_ref());
        let changes = self.state.apply(&entry.key, value, entry.revision, seen);
        let at = created_ms(entry);
        for change in changes {
            self.emit(change, entry.revision, at).await;
        }
        self.update_gauges();
    }

    /// The state's size, as gauges.
    fn update_gauges(&self) {
        metrics::gauge!("herald_presence_members").set(self.state.member_total() as f64);
        metrics::gauge!("herald_presence_channels").set(self.state.channel_count() as f64);
        metrics::gauge!("herald_presence_gateways").set(self.state.gateway_count() as f64);
    }

    /// Queue a KV write (waits only while the writer's queue is full).
    async fn write(&self, op: WriteOp) {
        if self.writes.send(op).await.is_err() {
            tracing::error!("the KV writer has stopped; a write is lost");
        }
    }

    /// Answer a question from the REST API.
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
}
