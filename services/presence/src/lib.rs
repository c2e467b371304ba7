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
pub mod webhooks;
mod writer;

pub use buckets::LastSeen;
pub use config::{Cli, Config, WebhookSettings};
pub use error::ApiError;
pub use typing::{TYPING_EVENT, TYPING_STOPPED_EVENT};

use async_nats::jetstream::kv;
use axum::Router;
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
    /// Verifies users' session tokens; `None` without `HERALD_AUTH_JWKS_URL`.
    pub verifier: Option<herald_server::token::Verifier>,
}

pub(crate) type AppState = Arc<Shared>;

impl herald_server::auth::HasApps for Shared {
    fn apps(&self) -> &AppRegistry {
        &self.apps
    }
}

impl herald_server::auth::HasVerifier for Shared {
    fn verifier(&self) -> Option<&herald_server::token::Verifier> {
        self.verifier.as_ref()
    }
}

/// A built presence service, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    port: u16,
    router: Router,
    /// What every term of office needs to start its engine.
    terms: leader::Terms,
    shutdown: CancellationToken,
}

impl Application {
    /// Connect to NATS, open the buckets, subscribe, and bind.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let nats = herald_server::connect_nats(&config.nats_url, "herald-presence").await?;
        let js = async_nats::jetstream::new(nats.clone());
        let presence =
            herald_stream::ensure_presence_bucket(&js, &config.subjects, config.kv_replicas)
                .await?;
        webhooks::check_targets(&config.apps)?;
        herald_stream::ensure_webhook_streams(&js, &config.subjects, config.kv_replicas).await?;
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
            verifier: config
                .auth_jwks_url
                .as_deref()
                .map(herald_server::token::Verifier::new),
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
            terms: leader::Terms {
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
            self.terms.run(token.clone()),
        );
        served?;
        active?;
        tracing::info!("presence stopped");
        Ok(())
    }
}
