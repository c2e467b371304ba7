//! The Herald auth service: apps, users, session and channel tokens, rooms.
//!
//! * Users: `PUT/GET /v1/apps/{app}/users/{user_id}`,
//!   `POST /v1/apps/{app}/users/batch`, `GET /v1/apps/{app}/users?prefix=`
//!   (app credentials: HTTP Basic key:secret).
//! * Session tokens: `POST /v1/apps/{app}/users/{user_id}/session-tokens`,
//!   EdDSA (Ed25519) JWTs with a `kid`; public keys at
//!   `GET /.well-known/jwks.json`; rotation at `POST /v1/keys/rotate`
//!   (`Authorization: Bearer $HERALD_AUTH_ADMIN_TOKEN`, compared in constant
//!   time; disabled when unset).
//! * Verification for other services: `herald_server::token::Verifier`;
//!   this service verifies its own session tokens in-process
//!   ([`session`](crate::session)), against the same published keys.
//! * Channel authorization for pusher-js: `POST /pusher/auth`,
//!   `POST /pusher/user-auth`, and JWT channel tokens at
//!   `POST /v1/apps/{app}/channel-tokens` (Bearer session token; the token
//!   is bound to the first socket it authorizes, `herald_stream::TokenBindings`).
//! * Rooms, DMs and app-managed channel membership under
//!   `/v1/apps/{app}/rooms`, `/dms`, `/channels/{channel}/members`: every
//!   change is stored in Postgres and as an event on the channel's stream
//!   subject ([`membership`](crate::membership)).
//! * OpenAPI at `/v1/openapi.json`.
//!
//! Without a database URL (only [`Config::new`] in tests makes one) the
//! service serves health, readiness and metrics only.

mod channel_auth;
mod error;
mod keys;
mod membership;
mod rooms;
mod routes;
mod session;
mod tokens;
mod users;

pub use channel_auth::{BOUND_ELSEWHERE, CHANNEL_TOKEN_LIFE_SECS};
pub use error::ApiError;
pub use herald_proto::token::MAX_GRANTS;
pub use herald_server::token::{Jwk, JwkSet};
pub use rooms::{MAX_MEMBERS_PAGE, MAX_ROOMS_LISTED, MAX_ROOM_NAME_LEN, ROOM_CODE_LEN};
pub use routes::{ApiDoc, MAX_BODY_BYTES};
pub use users::{
    AVATAR_URL_PATTERN, MAX_AVATAR_URL_LEN, MAX_BATCH, MAX_LIMIT, MAX_METADATA_BYTES, MAX_NAME_LEN,
    NAME_PATTERN, PREFIX_PATTERN,
};

use anyhow::Context;
use axum::Router;
use clap::Parser;
use herald_config::{AppRegistry, AppsArgs, ConfigError, DatabaseArgs, ListenArgs, NatsArgs};
use herald_proto::Subjects;
use herald_stream::{StreamArgs, StreamSettings, TokenBindings};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};
use std::str::FromStr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

/// `herald-auth`: apps, users, session and channel tokens, rooms.
#[derive(Debug, Parser)]
#[command(name = "herald-auth", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub listen: ListenArgs,
    /// HTTP port.
    #[arg(long, env = "HERALD_PORT", default_value_t = 6002)]
    pub port: u16,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub apps: AppsArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The channel stream's settings (membership events are stored there;
    /// give every service that creates the stream the same ones).
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Default session-token lifetime, seconds.
    #[arg(long, env = "HERALD_SESSION_TOKEN_TTL_SECS", default_value_t = 900)]
    pub session_token_ttl_secs: u64,
    /// Longest session-token lifetime a request may ask for, seconds.
    #[arg(
        long,
        env = "HERALD_SESSION_TOKEN_MAX_TTL_SECS",
        default_value_t = 3600
    )]
    pub session_token_max_ttl_secs: u64,
    /// Bearer token that authorizes `POST /v1/keys/rotate`; rotation is
    /// disabled when unset or empty.
    #[arg(long, env = "HERALD_AUTH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Room joins by share code each user may try per minute (per auth
    /// instance): bounds guessing codes.
    #[arg(long, env = "HERALD_ROOM_JOINS_PER_MINUTE", default_value_t = DEFAULT_ROOM_JOINS_PER_MINUTE)]
    pub room_joins_per_minute: u32,
}

/// Room joins by code a user may try per minute, by default.
pub const DEFAULT_ROOM_JOINS_PER_MINUTE: u32 = 20;

/// The Postgres schema holding this service's tables.
pub const SCHEMA: &str = "auth";
/// Clock-skew allowance added to how long retired keys stay published.
pub const KEY_RETENTION_LEEWAY_SECS: u64 = 60;

/// Everything the service needs to start.
#[derive(Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub nats_url: String,
    pub subjects: Subjects,
    pub apps: AppRegistry,
    /// Postgres URL; `None` serves the ops routes only.
    pub database_url: Option<String>,
    pub db_max_connections: u32,
    pub session_token_ttl_secs: u64,
    pub session_token_max_ttl_secs: u64,
    pub admin_token: Option<String>,
    /// The channel stream's settings, as the gateway and history have them.
    pub stream: StreamSettings,
    /// Room joins by share code each user may try per minute.
    pub room_joins_per_minute: u32,
}

impl std::fmt::Debug for Config {
    /// Redacts the admin token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("nats_url", &self.nats_url)
            .field("database_url", &self.database_url.is_some())
            .field("session_token_ttl_secs", &self.session_token_ttl_secs)
            .field(
                "session_token_max_ttl_secs",
                &self.session_token_max_ttl_secs,
            )
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults for everything but the essentials (used by tests).
    pub fn new(nats_url: &str, subjects: Subjects, apps: AppRegistry) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 0,
            nats_url: nats_url.into(),
            subjects,
            apps,
            database_url: None,
            db_max_connections: 5,
            session_token_ttl_secs: 900,
            session_token_max_ttl_secs: 3600,
            admin_token: None,
            stream: StreamSettings::default(),
            room_joins_per_minute: DEFAULT_ROOM_JOINS_PER_MINUTE,
        }
    }

    /// With a database.
    pub fn with_database(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_owned());
        self
    }
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, Self::Error> {
        Ok(Self {
            host: cli.listen.host,
            port: cli.port,
            subjects: cli.nats.subjects()?,
            nats_url: cli.nats.nats_url,
            apps: cli.apps.registry()?,
            database_url: Some(cli.database.database_url),
            db_max_connections: cli.database.db_max_connections.max(2),
            session_token_max_ttl_secs: cli
                .session_token_max_ttl_secs
                .clamp(1, herald_proto::token::MAX_SESSION_TOKEN_LIFE_SECS),
            session_token_ttl_secs: cli.session_token_ttl_secs.clamp(
                1,
                cli.session_token_max_ttl_secs
                    .clamp(1, herald_proto::token::MAX_SESSION_TOKEN_LIFE_SECS),
            ),
            admin_token: cli.admin_token.filter(|t| !t.is_empty()),
            stream: cli.stream.settings(),
            room_joins_per_minute: cli.room_joins_per_minute.max(1),
        })
    }
}

/// State shared by the request handlers.
pub(crate) struct Shared {
    pub db: PgPool,
    pub apps: AppRegistry,
    pub token_ttl_secs: u64,
    pub token_max_ttl_secs: u64,
    pub admin_token: Option<String>,
    /// JetStream, where membership events are stored.
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    /// Single-use session tokens: jti -> the socket they are bound to.
    pub bindings: TokenBindings,
    /// Room joins by code per (app, user): a code is a secret of 50 bits,
    /// and this keeps one user from trying them by the thousand.
    pub room_joins: governor::DefaultKeyedRateLimiter<(String, String)>,
}

impl Shared {
    /// How long a retired key stays in the JWKS.
    pub fn key_retention_secs(&self) -> u64 {
        self.token_max_ttl_secs + KEY_RETENTION_LEEWAY_SECS
    }
}

pub(crate) type AppState = Arc<Shared>;

impl herald_server::auth::HasApps for Shared {
    fn apps(&self) -> &AppRegistry {
        &self.apps
    }
}

/// Connect to Postgres with this service's schema on the search path,
/// creating the schema, running the migrations and the first signing key.
pub async fn connect_database(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .context("parsing DATABASE_URL")?
        .options([("search_path", SCHEMA)]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("connecting to Postgres")?;
    pool.execute(format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}").as_str())
        .await?;
    sqlx::migrate!("../../sql/auth")
        .run(&pool)
        .await
        .context("running migrations")?;
    keys::ensure_key(&pool).await?;
    Ok(pool)
}

/// A built service, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    port: u16,
    router: Router,
    shutdown: CancellationToken,
}

impl Application {
    /// Connect to NATS and bind.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let nats = herald_server::connect_nats(&config.nats_url, "herald-auth").await?;
        let (listener, port) = herald_server::bind(&config.host, config.port).await?;
        let js = async_nats::jetstream::new(nats.clone());
        let mut checks = vec![("nats", herald_server::nats_ready(nats))];
        let api = match &config.database_url {
            Some(url) => {
                let db = connect_database(url, config.db_max_connections).await?;
                let pool = db.clone();
                let postgres_ready: herald_server::ReadyCheck = Arc::new(move || {
                    let pool = pool.clone();
                    Box::pin(async move {
                        pool.execute("SELECT 1")
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
                });
                checks.push(("postgres", postgres_ready));
                // Membership events go to the channel stream, which may not
                // exist yet when the auth service starts first.
                herald_stream::ensure_channels_stream(&js, &config.subjects, &config.stream)
                    .await?;
                let bindings =
                    TokenBindings::open(&js, &config.subjects, config.stream.replicas).await?;
                let state = Arc::new(Shared {
                    db,
                    apps: config.apps.clone(),
                    token_ttl_secs: config.session_token_ttl_secs,
                    token_max_ttl_secs: config.session_token_max_ttl_secs,
                    admin_token: config.admin_token.clone(),
                    js,
                    subjects: config.subjects.clone(),
                    bindings,
                    room_joins: governor::RateLimiter::keyed(governor::Quota::per_minute(
                        std::num::NonZeroU32::new(config.room_joins_per_minute)
                            .unwrap_or(std::num::NonZeroU32::MIN),
                    )),
                });
                herald_server::http::json_errors(routes::router().with_state(state))
            }
            None => Router::new(),
        };
        let router = api
            .layer(TraceLayer::new_for_http())
            .merge(herald_server::ops_router(checks));
        tracing::info!(port, apps = config.apps.iter().count(), "auth listening");
        Ok(Self {
            listener,
            port,
            router,
            shutdown: CancellationToken::new(),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl herald_server::Service for Application {
    fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    async fn run_until_stopped(self) -> anyhow::Result<()> {
        herald_server::serve(self.listener, self.router, self.shutdown).await?;
        tracing::info!("auth stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_reads_the_channel_stream_settings_like_the_other_services() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "herald-auth",
            "--dev",
            "--database-url",
            "postgres://db/herald",
            "--stream-max-age-secs",
            "60",
            "--stream-replicas",
            "3",
        ])
        .unwrap();
        let config = Config::try_from(cli).unwrap();
        assert_eq!(config.stream.max_age, std::time::Duration::from_secs(60));
        assert_eq!(config.stream.replicas, 3);
    }
}
