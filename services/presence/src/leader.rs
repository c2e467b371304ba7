//! Which presence instance is active: a lease in a JetStream KV bucket.
//!
//! Every instance may run, but only one may fold the presence bucket into
//! events, answer member queries and sweep dead gateways: two would each
//! publish every `member_added`. The active one holds the lease, a key in a
//! bucket whose entries expire after the lease TTL (the bucket's `max_age`)
//! and that it rewrites every renew interval, conditionally on its own last
//! revision. The others try to create the key every renew interval; they
//! succeed once the holder has released it (a clean stop) or the key has
//! expired (a crash, or an instance cut off from NATS).
//!
//! An instance steps down when a renewal is refused (someone else holds the
//! key) or when it has not managed to renew for the TTL minus one renew
//! interval, so it stops acting before its key can expire and another take
//! over. Everything an active instance does goes through NATS, so one that
//! cannot reach NATS cannot act on its stale belief either.
//!
//! [`Terms`] is the loop around it: stand by until the lease is ours, serve
//! a term of office (engine, typing timeouts, writer and webhook dispatcher) until it stops or
//! the lease is lost, and start over. Taking over is a restart: the engine
//! loads the bucket and diffs it against the view.

use crate::{engine, state, typing, webhooks, writer, Config};
use anyhow::Context;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use herald_proto::presence::LEASE_KEY as KEY;
use herald_proto::Subjects;
use herald_stream::BucketSpec;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a lease lasts without renewal, and how often it is renewed (and
/// how often a standby instance tries to take it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    pub ttl: Duration,
    pub renew: Duration,
}

impl LeaseSettings {
    /// A lease of `ttl`, renewed five times per TTL.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            renew: ttl / 5,
        }
    }
}

/// Open (or create) the lease bucket. Its `max_age` is the lease TTL; a
/// bucket made earlier with another TTL keeps its own, which then wins.
pub async fn open_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: &mut LeaseSettings,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    let bucket = subjects.presence_lease_bucket();
    let store = herald_stream::ensure_bucket(
        js,
        BucketSpec {
            name: bucket.clone(),
            description: "Herald presence: the active instance's lease",
            replicas,
            max_age: settings.ttl,
        },
    )
    .await?;
    let age = store
        .status()
        .await
        .with_context(|| format!("reading KV bucket {bucket}"))?
        .max_age();
    if age != settings.ttl && !age.is_zero() {
        tracing::warn!(
            bucket,
            configured_ms = settings.ttl.as_millis() as u64,
            bucket_ms = age.as_millis() as u64,
            "the lease bucket has another TTL; using the bucket's"
        );
        *settings = LeaseSettings::new(age);
    }
    Ok(store)
}

/// Wait for the next change of the lease key: `true` when it was deleted or
/// purged (released), waiting on for other changes; `false` if the watch
/// ended. Without a watch, never resolves.
async fn next_change(watch: &mut Option<kv::Watch>) -> bool {
    let Some(watch) = watch else {
        return std::future::pending().await;
    };
    while let Some(entry) = futures::StreamExt::next(watch).await {
        match entry {
            Ok(entry) if entry.operation != kv::Operation::Put => return true,
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "presence lease watch error"),
        }
    }
    false
}

/// The lease, held by this instance.
pub struct Lease {
    store: kv::Store,
    id: String,
    revision: u64,
    /// When the last successful write was sent (no later than the server
    /// stamped it, so the key expires no earlier than this plus the TTL).
    renewed: Instant,
    settings: LeaseSettings,
}

impl Lease {
    /// Wait until this instance (`id`) holds the lease; `None` if `token` is
    /// cancelled first.
    pub async fn acquire(
        store: &kv::Store,
        id: &str,
        settings: LeaseSettings,
        token: &CancellationToken,
    ) -> Option<Lease> {
        let mut waiting = false;
        // A released lease shows up on a watch of the key, so a standby takes
        // over at once after a clean stop; an expired one does not (expiry
        // leaves no marker), hence the polling as well.
        let mut watch = match store.watch(KEY).await {
            Ok(watch) => Some(watch),
            Err(err) => {
                tracing::warn!(%err, "cannot watch the presence lease; polling only");
                None
            }
        };
        loop {
            let sent = Instant::now();
            match store.create(KEY, Bytes::from(id.to_owned())).await {
                Ok(revision) => {
                    return Some(Lease {
                        store: store.clone(),
                        id: id.to_owned(),
                        revision,
                        renewed: sent,
                        settings,
                    })
                }
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if !waiting {
                        tracing::info!("another presence instance is active: standing by");
                        waiting = true;
                    }
                }
                Err(err) => tracing::warn!(%err, "could not try to take the presence lease"),
            }
            tokio::select! {
                _ = token.cancelled() => return None,
                _ = tokio::time::sleep(settings.renew) => {}
                released = next_change(&mut watch) => {
                    if !released {
                        // The watch ended: poll from now on.
                        watch = None;
                    }
                }
            }
        }
    }

    /// Renew the lease until `term` is cancelled; cancel `term` when the
    /// lease is lost or could not be renewed in time.
    pub async fn keep(&mut self, term: &CancellationToken) {
        let give_up_after = self.settings.ttl.saturating_sub(self.settings.renew);
        loop {
            tokio::select! {
                _ = term.cancelled() => return,
                _ = tokio::time::sleep(self.settings.renew) => {}
            }
            let sent = Instant::now();
            let update = self
                .store
                .update(KEY, Bytes::from(self.id.clone()), self.revision);
            // A slow renewal (a busy server) is waited for as long as the
            // lease is still safely ours.
            let deadline = self.renewed + give_up_after;
            match tokio::time::timeout_at(deadline.max(sent + self.settings.renew), update).await {
                Ok(Ok(revision)) => {
                    self.revision = revision;
                    self.renewed = sent;
                    continue;
                }
                Ok(Err(err)) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!("the presence lease was taken over: stepping down");
                    metrics::counter!("herald_presence_lease_lost_total").increment(1);
                    term.cancel();
                    return;
                }
                Ok(Err(err)) => tracing::warn!(%err, "could not renew the presence lease"),
                Err(_) => tracing::warn!("renewing the presence lease timed out"),
            }
            if self.renewed.elapsed() >= give_up_after {
                tracing::warn!("presence lease not renewed in time: stepping down");
                metrics::counter!("herald_presence_lease_lost_total").increment(1);
                term.cancel();
                return;
            }
        }
    }

    /// Give the lease up (on a clean stop), so that a standby instance takes
    /// over at once rather than after the TTL.
    pub async fn release(self) {
        if let Err(err) = self
            .store
            .delete_expect_revision(KEY, Some(self.revision))
            .await
        {
            tracing::warn!(%err, "could not release the presence lease");
        }
    }
}

/// The connections, buckets and settings a term of office is built from.
pub(crate) struct Terms {
    pub(crate) nats: async_nats::Client,
    pub(crate) config: Config,
    /// The presence, view and last-seen buckets the engine and writer use.
    pub(crate) presence: kv::Store,
    pub(crate) view: kv::Store,
    pub(crate) last_seen: kv::Store,
    /// The lease bucket and its timing.
    pub(crate) lease: kv::Store,
    pub(crate) lease_settings: LeaseSettings,
    /// This instance's id, the lease's value while it is active.
    pub(crate) instance: String,
    /// The REST API's questions, handed from one term's engine to the next.
    pub(crate) commands: Arc<tokio::sync::Mutex<mpsc::Receiver<engine::Command>>>,
    /// Readiness flags: state loaded, and this instance active.
    pub(crate) live: Arc<AtomicBool>,
    pub(crate) active: Arc<AtomicBool>,
}

impl Terms {
    /// Stand by until this instance holds the lease, be the active instance
    /// until it stops or loses the lease, and start over.
    pub(crate) async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        loop {
            let Some(mut lease) =
                Lease::acquire(&self.lease, &self.instance, self.lease_settings, &token).await
            else {
                return Ok(());
            };
            tracing::info!(instance = %self.instance, "this presence instance is active");
            self.active.store(true, Ordering::SeqCst);
            let term = token.child_token();
            let (result, ()) = tokio::join!(self.serve_term(term.clone()), async {
                lease.keep(&term).await
            });
            self.active.store(false, Ordering::SeqCst);
            self.live.store(false, Ordering::SeqCst);
            if let Err(err) = result {
                tracing::error!(error = %format!("{err:#}"), "presence engine failed");
                lease.release().await;
                // Without its engine the service is useless: stop it all.
                token.cancel();
                return Err(err);
            }
            if token.is_cancelled() {
                lease.release().await;
                return Ok(());
            }
            // The lease was lost: stand by again.
        }
    }

    /// One term of office: subscribe, then run the engine, the typing task
    /// and the writer until `term` is cancelled.
    ///
    /// They all run inside this one future rather than as spawned tasks, so
    /// aborting it (a crash, in tests) stops everything at once, and a
    /// graceful stop drains the writer: it ends when the engine, its only
    /// sender, is gone.
    async fn serve_term(&self, term: CancellationToken) -> anyhow::Result<()> {
        let config = &self.config;
        // Subscribe first, so queries sent while the state loads wait in the
        // subscription instead of being lost.
        let mut queries = Vec::new();
        for app in config.apps.iter() {
            let app_id = app.id.clone();
            let subscription = self
                .nats
                .subscribe(config.subjects.presence_members(&app_id))
                .await
                .context("subscribing to member queries")?;
            queries.push(subscription.map(move |msg| (app_id.clone(), msg)).boxed());
            // Watchlists' online queries share the loop (and its order
            // with the online events).
            let app_id = app.id.clone();
            let subscription = self
                .nats
                .subscribe(config.subjects.presence_online_query(&app_id))
                .await
                .context("subscribing to online queries")?;
            queries.push(subscription.map(move |msg| (app_id.clone(), msg)).boxed());
        }
        let queries: engine::Queries = futures::stream::select_all(queries).boxed();
        let ephemeral = self
            .nats
            .subscribe(config.subjects.ephemeral_filter())
            .await
            .context("subscribing to ephemeral events")?;

        let (writes_tx, writes) = mpsc::channel(writer::QUEUE);
        let engine = engine::Engine {
            client: self.nats.clone(),
            apps: config.apps.clone(),
            subjects: config.subjects.clone(),
            presence: self.presence.clone(),
            view: self.view.clone(),
            state: state::PresenceState::new(config.apps.clone()),
            writes: writes_tx,
            commands: self.commands.clone(),
            settings: engine::EngineSettings {
                heartbeat_ttl: config.heartbeat_ttl,
                sweep_interval: config.sweep_interval,
                query_timeout: config.query_timeout,
                tombstone_age: config.tombstone_age,
                vacate_delay: config.webhooks.vacate_delay,
            },
            held: Default::default(),
            live: self.live.clone(),
        };
        let typing = typing::Typing {
            client: self.nats.clone(),
            subjects: config.subjects.clone(),
            subscription: ephemeral,
            timeout: config.typing_timeout,
        };
        let writer = writer::Writer {
            js: async_nats::jetstream::new(self.nats.clone()),
            subjects: config.subjects.clone(),
            presence: self.presence.clone(),
            view: self.view.clone(),
            last_seen: self.last_seen.clone(),
        };
        let engine = async {
            let result = engine.run(queries, term.clone()).await;
            // Whatever ended the engine ends the term.
            term.cancel();
            result
        };
        let dispatcher = webhooks::Dispatcher::new(
            self.nats.clone(),
            config.subjects.clone(),
            config.webhooks.clone(),
        )?;
        let (engine, typing, written, ()) = tokio::join!(
            engine,
            typing.run(term.clone()),
            writer.run(writes),
            dispatcher.run(&config.apps, term.clone()),
        );
        engine?;
        typing?;
        written?;
        Ok(())
    }
}
