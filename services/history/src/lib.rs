//! The Herald history service.
//!
//! A projector folds the `CHANNELS` stream into Postgres (exactly-once in
//! effect: the checkpoint is written in the same transaction as the rows), and
//! a REST API serves each channel's history newest first, keyset-paginated by
//! stream sequence.
//!
//! Any number of instances may run: all serve reads, and one at a time (the
//! holder of a Postgres advisory lock) runs the projector, so events are
//! applied in stream order.

mod config;
mod error;
mod model;
mod projector;
pub mod rebuild;
mod routes;

pub use config::{Cli, Command, Config};
pub use error::ApiError;
pub use routes::ApiDoc;

use anyhow::Context;
use axum::Router;
use herald_config::AppRegistry;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor, PgPool};
use std::str::FromStr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

/// The Postgres schema holding this service's tables (and its migration
/// bookkeeping), so services sharing a database never collide.
pub const SCHEMA: &str = "history";

/// State shared by the request handlers.
pub(crate) struct Shared {
    pub db: PgPool,
    pub apps: AppRegistry,
    /// Verifies users' session tokens; `None` without `HERALD_AUTH_JWKS_URL`.
    pub verifier: Option<herald_server::token::Verifier>,
    /// Sends go to the channel stream through JetStream.
    pub js: async_nats::jetstream::Context,
    pub subjects: herald_proto::Subjects,
    /// The projection's checkpoint row (`min_seq` waits on it).
    pub projection: String,
    /// Longest wait of a `min_seq` read.
    pub read_wait: std::time::Duration,
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

/// A built history service, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    port: u16,
    router: Router,
    projector: projector::Projector,
    shutdown: CancellationToken,
}

/// Connect to Postgres with this service's schema first on the search path,
/// creating the schema and running the migrations.
pub async fn connect_database(url: &str, max_connections: u32) -> anyhow::Result<PgOptionsAndPool> {
    let options = PgConnectOptions::from_str(url)
        .context("parsing DATABASE_URL")?
        // A session that dies without closing its socket (a crashed or
        // partitioned projector) must not hold the checkpoint row lock for
        // ever: the server ends it once it idles inside a transaction.
        .options([
            ("search_path", SCHEMA),
            ("idle_in_transaction_session_timeout", "5s"),
        ])
        .log_statements(tracing::log::LevelFilter::Debug);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options.clone())
        .await
        .context("connecting to Postgres")?;
    pool.execute(format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}").as_str())
        .await?;
    sqlx::migrate!("../../sql/history")
        .run(&pool)
        .await
        .context("running migrations")?;
    Ok(PgOptionsAndPool { options, pool })
}

/// Rebuild the read model from the stream (see [`rebuild`]) with the
/// service's configuration: its NATS, stream and database.
pub async fn rebuild_with(config: &Config, verify: bool) -> anyhow::Result<rebuild::RebuildReport> {
    let nats = herald_server::connect_nats(&config.nats_url, "herald-history-rebuild").await?;
    let js = async_nats::jetstream::new(nats);
    herald_stream::ensure_channels_stream(&js, &config.subjects, &config.stream).await?;
    // The live schema must exist and be migrated (a rebuild of a fresh
    // install is simply a first projection).
    let db = connect_database(&config.database_url, 2).await?;
    db.pool.close().await;
    let options =
        PgConnectOptions::from_str(&config.database_url).context("parsing DATABASE_URL")?;
    rebuild::rebuild(&js, &config.subjects, &options, verify).await
}

/// A pool plus the options it was built from (the projector opens a
/// dedicated connection with them for its advisory lock).
pub struct PgOptionsAndPool {
    pub options: PgConnectOptions,
    pub pool: PgPool,
}

impl Application {
    /// Connect to NATS and Postgres, migrate, and bind.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let nats = herald_server::connect_nats(&config.nats_url, "herald-history").await?;
        let js = async_nats::jetstream::new(nats.clone());
        herald_stream::ensure_channels_stream(&js, &config.subjects, &config.stream).await?;
        let db = connect_database(&config.database_url, config.db_max_connections).await?;

        let (listener, port) = herald_server::bind(&config.host, config.port).await?;
        let shutdown = CancellationToken::new();
        let projector = projector::Projector::new(
            js.clone(),
            config.subjects.clone(),
            db.pool.clone(),
            db.options.clone(),
            config.projection_batch,
        );
        let state = Arc::new(Shared {
            db: db.pool.clone(),
            apps: config.apps.clone(),
            verifier: config
                .auth_jwks_url
                .as_deref()
                .map(herald_server::token::Verifier::new),
            js,
            subjects: config.subjects.clone(),
            projection: projector.name().to_owned(),
            read_wait: config.read_wait,
        });
        let pool = db.pool.clone();
        let postgres_ready: herald_server::ReadyCheck = Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                pool.execute("SELECT 1")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        });
        let stalled = projector.stalled();
        let projection_ready: herald_server::ReadyCheck = Arc::new(move || {
            let stalled = stalled.lock().expect("stalled lock").clone();
            Box::pin(async move { stalled.map_or(Ok(()), Err) })
        });
        let router = routes::router()
            .with_state(state)
            .layer(TraceLayer::new_for_http())
            .merge(herald_server::ops_router_explained(
                vec![
                    ("nats", herald_server::nats_ready(nats)),
                    ("postgres", postgres_ready),
                ],
                vec![("projection", projection_ready)],
            ));
        tracing::info!(port, "history listening");
        Ok(Self {
            listener,
            port,
            router,
            projector,
            shutdown,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl herald_server::Service for Application {
    /// Cancelling this token stops the projector and the HTTP server.
    fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Run the projector and serve HTTP until the shutdown token is cancelled.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        let token = self.shutdown.clone();
        // Both run inside this future (not spawned), so that aborting it
        // stops the projector too, as a crash would.
        let (served, projected) = tokio::join!(
            herald_server::serve(self.listener, self.router, token.clone()),
            self.projector.run(token.clone()),
        );
        served?;
        projected?;
        tracing::info!("history stopped");
        Ok(())
    }
}
