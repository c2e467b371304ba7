//! The Herald presence service: who is online in which presence channel
//! across gateways and devices, join/leave events, last-seen, typing
//! timeouts.
//!
//! Gateways write the facts to the presence KV bucket (see
//! `herald_proto::presence`, the contract); this service folds the bucket
//! into its state ([`state`]) in one task ([`engine`]) that
//!
//! * publishes `member_added` / `member_removed` (first device in, last
//!   device out) on each channel's presence-events subject,
//! * answers gateways' member queries at a revision at least their own write,
//! * deletes the keys of gateways whose heartbeat is older than the TTL,
//! * records when a user's last connection went (the last-seen bucket),
//! * keeps a view of what subscribers were told, so a restart emits only
//!   real differences.
//!
//! A second task ([`typing`]) turns quiet `client-typing` senders into
//! `herald:typing_stopped`, and a REST API serves members and user presence.
//!
//! Several instances may run for availability: one is active and the
//! others stand by, decided by a lease in a KV bucket ([`leader`]). A
//! standby instance takes over within the lease TTL when the active one
//! stops or dies, rebuilding its state and diffing it against the view the
//! way a restart does.

mod buckets;
mod config;
mod engine;
mod error;
pub mod leader;
mod liveness;
mod routes;
mod state;
mod typing;
mod writer;

pub use buckets::LastSeen;
pub use config::{Cli, Config};
pub use error::ApiError;
pub use typing::{TYPING_EVENT, TYPING_STOPPED_EVENT};

use anyhow::Context;
use async_nats::jetstream::kv;
use axum::Router;
use futures::StreamExt;
use herald_config::AppRegistry;
use herald_stream::BucketSpec;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

/// State shared by the request handlers.
pub(crate) struct Shared {
    pub apps: AppRegistry,
    /// Questions to the engine.
    pub commands: mpsc::Sender<engine::Command>,
    /// The last-seen bucket, read directly.
    pub last_seen: kv::Store,
    /// Longest wait for the engine's answer.
    pub timeout: Duration,
    /// Whether this instance holds the lease (a standby answers 503 at once).
    pub active: Arc<AtomicBool>,
}

pub(crate) type AppState = Arc<Shared>;

impl herald_server::auth::HasApps for Shared {
    fn apps(&self) -> &AppRegistry {
        &self.apps
    }
}

/// A built presence service, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    port: u16,
    router: Router,
    /// What every term of office needs to start its engine.
    parts: Parts,
    shutdown: CancellationToken,
}

/// The connections, buckets and settings a term of office is built from.
struct Parts {
    nats: async_nats::Client,
    config: Config,
    presence: kv::Store,
    view: kv::Store,
    last_seen: kv::Store,
    lease: kv::Store,
    lease_settings: leader::LeaseSettings,
    instance: String,
    commands: Arc<tokio::sync::Mutex<mpsc::Receiver<engine::Command>>>,
    live: Arc<AtomicBool>,
    active: Arc<AtomicBool>,
}

impl Application {
    /// Connect to NATS, open the buckets, subscribe, and bind.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let nats = herald_server::connect_nats(&config.nats_url, "herald-presence").await?;
        let js = async_nats::jetstream::new(nats.clone());
        let presence =
            herald_stream::ensure_presence_bucket(&js, &config.subjects, config.kv_replicas)
                .await?;
        let view = herald_stream::ensure_bucket(
            &js,
            BucketSpec {
                name: config.subjects.presence_view_bucket(),
                description:
                    "Herald presence: members and online users subscribers were told about",
                replicas: config.kv_replicas,
                max_age: Duration::ZERO,
            },
        )
        .await?;
        let last_seen = herald_stream::ensure_bucket(
            &js,
            BucketSpec {
                name: config.subjects.last_seen_bucket(),
                description: "Herald presence: when each user's last connection went",
                replicas: config.kv_replicas,
                max_age: Duration::ZERO,
            },
        )
        .await?;

        let mut lease_settings = leader::LeaseSettings::new(config.lease_ttl);
        let lease = leader::open_bucket(
            &js,
            &config.subjects,
            &mut lease_settings,
            config.kv_replicas,
        )
        .await?;
        let (commands_tx, commands) = mpsc::channel(1024);
        let live = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicBool::new(false));

        let (listener, port) = herald_server::bind(&config.host, config.port).await?;
        let state = Arc::new(Shared {
            apps: config.apps.clone(),
            commands: commands_tx,
            last_seen: last_seen.clone(),
            timeout: config.query_timeout,
            active: active.clone(),
        });
        let flag = |flag: &Arc<AtomicBool>, reason: &'static str| -> herald_server::ReadyCheck {
            let flag = flag.clone();
            Arc::new(move || {
                let up = flag.load(Ordering::SeqCst);
                Box::pin(async move { up.then_some(()).ok_or_else(|| reason.to_owned()) })
            })
        };
        let router = routes::router()
            .with_state(state)
            .layer(TraceLayer::new_for_http())
            .merge(herald_server::ops_router(vec![
                ("nats", herald_server::nats_ready(nats.clone())),
                // A standby instance is alive but not ready: it answers no
                // queries until it holds the lease.
                (
                    "active_instance",
                    flag(&active, "standing by: another instance is active"),
                ),
                ("presence_state", flag(&live, "presence state not loaded")),
            ]));
        tracing::info!(
            port,
            apps = config.apps.iter().count(),
            ttl_ms = config.heartbeat_ttl.as_millis() as u64,
            "presence listening"
        );
        Ok(Self {
            listener,
            port,
            router,
            parts: Parts {
                nats,
                instance: uuid::Uuid::new_v4().to_string(),
                config,
                presence,
                view,
                last_seen,
                lease,
                lease_settings,
                commands: Arc::new(tokio::sync::Mutex::new(commands)),
                live,
                active,
            },
            shutdown: CancellationToken::new(),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl herald_server::Service for Application {
    /// Cancelling this token stops every loop and the HTTP server.
    fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serve HTTP, and take turns at being the active instance, until the
    /// shutdown token is cancelled.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        let token = self.shutdown.clone();
        let (served, active) = tokio::join!(
            herald_server::serve(self.listener, self.router, token.clone()),
            self.parts.run(token.clone()),
        );
        served?;
        active?;
        tracing::info!("presence stopped");
        Ok(())
    }
}

impl Parts {
    /// Stand by until this instance holds the lease, be the active instance
    /// until it stops or loses the lease, and start over.
    async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        loop {
            let Some(mut lease) =
                leader::Lease::acquire(&self.lease, &self.instance, self.lease_settings, &token)
                    .await
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
            queries.push(subscription.map(move |msg| (app_id.clone(), msg)));
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
            },
            live: self.live.clone(),
        };
        let typing = typing::Typing {
            client: self.nats.clone(),
            subjects: config.subjects.clone(),
            subscription: ephemeral,
            timeout: config.typing_timeout,
        };
        let writer = writer::Writer {
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
        let (engine, typing, written) =
            tokio::join!(engine, typing.run(term.clone()), writer.run(writes),);
        engine?;
        typing?;
        written?;
        Ok(())
    }
}
