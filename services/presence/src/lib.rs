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
//! Run one instance per NATS deployment: two would each publish every event.

mod buckets;
mod config;
mod engine;
mod error;
mod routes;
mod state;
mod typing;
mod writer;

pub use buckets::{last_seen_bucket, view_bucket, LastSeen};
pub use config::{Cli, Config};
pub use error::ApiError;
pub use typing::{TYPING_EVENT, TYPING_STOPPED_EVENT};

use anyhow::Context;
use async_nats::jetstream::kv;
use axum::Router;
use futures::StreamExt;
use herald_config::AppRegistry;
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
}

pub(crate) type AppState = Arc<Shared>;

/// A built presence service, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    port: u16,
    router: Router,
    engine: engine::Engine,
    queries: engine::Queries,
    typing: typing::Typing,
    writer: writer::Writer,
    writes: mpsc::Receiver<writer::WriteOp>,
    shutdown: CancellationToken,
}

impl Application {
    /// Connect to NATS, open the buckets, subscribe, and bind.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let nats = herald_telemetry::connect_nats(&config.nats_url, "herald-presence").await?;
        let js = async_nats::jetstream::new(nats.clone());
        let presence =
            herald_stream::ensure_presence_bucket(&js, &config.subjects, config.kv_replicas)
                .await?;
        let view = buckets::ensure_bucket(
            &js,
            &view_bucket(&config.subjects),
            "Herald presence: members and online users subscribers were told about",
            config.kv_replicas,
        )
        .await?;
        let last_seen = buckets::ensure_bucket(
            &js,
            &last_seen_bucket(&config.subjects),
            "Herald presence: when each user's last connection went",
            config.kv_replicas,
        )
        .await?;

        // Subscribe now, so queries sent while the state loads wait in the
        // subscription instead of being lost.
        let mut queries = Vec::new();
        for app in config.apps.iter() {
            let app_id = app.id.clone();
            let subscription = nats
                .subscribe(config.subjects.presence_members(&app_id))
                .await
                .context("subscribing to member queries")?;
            queries.push(subscription.map(move |msg| (app_id.clone(), msg)));
        }
        let queries: engine::Queries = futures::stream::select_all(queries).boxed();
        let ephemeral = nats
            .subscribe(config.subjects.ephemeral_filter())
            .await
            .context("subscribing to ephemeral events")?;

        let (writes_tx, writes) = mpsc::channel(writer::QUEUE);
        let (commands_tx, commands) = mpsc::channel(1024);
        let live = Arc::new(AtomicBool::new(false));
        let engine = engine::Engine {
            client: nats.clone(),
            subjects: config.subjects.clone(),
            presence: presence.clone(),
            view: view.clone(),
            state: state::PresenceState::new(config.apps.clone()),
            writes: writes_tx,
            commands,
            settings: engine::EngineSettings {
                heartbeat_ttl: config.heartbeat_ttl,
                sweep_interval: config.sweep_interval,
                query_timeout: config.query_timeout,
            },
            live: live.clone(),
        };
        let typing = typing::Typing {
            client: nats.clone(),
            subjects: config.subjects.clone(),
            subscription: ephemeral,
            timeout: config.typing_timeout,
        };
        let writer = writer::Writer {
            presence,
            view,
            last_seen: last_seen.clone(),
        };

        let (listener, port) = herald_telemetry::bind(&config.host, config.port).await?;
        let state = Arc::new(Shared {
            apps: config.apps.clone(),
            commands: commands_tx,
            last_seen,
            timeout: config.query_timeout,
        });
        let loaded: herald_telemetry::ReadyCheck = Arc::new(move || {
            let live = live.clone();
            Box::pin(async move {
                if live.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("presence state not loaded".to_owned())
                }
            })
        });
        let router = routes::router()
            .with_state(state)
            .layer(TraceLayer::new_for_http())
            .merge(herald_telemetry::ops_router(vec![
                ("nats", herald_telemetry::nats_ready(nats)),
                ("presence_state", loaded),
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
            engine,
            queries,
            typing,
            writer,
            writes,
            shutdown: CancellationToken::new(),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl herald_telemetry::Service for Application {
    /// Cancelling this token stops every loop and the HTTP server.
    fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Run the engine, the typing task, the writer and the HTTP server until
    /// the shutdown token is cancelled.
    ///
    /// They all run inside this one future rather than as spawned tasks, so
    /// aborting it (a crash, in tests) stops everything at once, and a
    /// graceful stop drains the writer: it ends when the engine, its only
    /// sender, is gone.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        let token = self.shutdown.clone();
        let engine = {
            let token = token.clone();
            async move {
                let result = self.engine.run(self.queries, token.clone()).await;
                if let Err(err) = &result {
                    tracing::error!(error = %format!("{err:#}"), "presence engine failed");
                    // Without its engine the service is useless: stop it all.
                    token.cancel();
                }
                result
            }
        };
        let (served, engine, typing, written) = tokio::join!(
            herald_telemetry::serve(self.listener, self.router, token.clone()),
            engine,
            self.typing.run(token.clone()),
            self.writer.run(self.writes),
        );
        served?;
        engine?;
        typing?;
        written?;
        tracing::info!("presence stopped");
        Ok(())
    }
}
