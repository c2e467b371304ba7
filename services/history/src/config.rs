//! History service configuration.

use clap::Parser;
use herald_config::{
    AppRegistry, AppsArgs, ConfigError, DatabaseArgs, ListenArgs, NatsArgs, TokenArgs,
};
use herald_proto::Subjects;
use herald_stream::{StreamArgs, StreamSettings};

/// `herald-history`: projects the channel stream into Postgres and serves
/// paginated history.
#[derive(Debug, Parser)]
#[command(name = "herald-history", version, about)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub listen: ListenArgs,
    /// HTTP port.
    #[arg(long, env = "HERALD_PORT", default_value_t = 6003)]
    pub port: u16,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub apps: AppsArgs,
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Most events applied in one Postgres transaction.
    #[arg(long, env = "HERALD_PROJECTION_BATCH", default_value_t = 500)]
    pub projection_batch: usize,
    #[command(flatten)]
    pub tokens: TokenArgs,
    /// Longest wait, in ms, of a read with `min_seq` for the projection to
    /// reach that seq (then 503 with the current position).
    #[arg(long, env = "HERALD_HISTORY_READ_WAIT_MS", default_value_t = 5000)]
    pub read_wait_ms: u64,
}

/// `herald-history <command>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve the REST API and run the projector (the default).
    Serve,
    /// Replay the channel stream into fresh tables and swap them in while
    /// a running service keeps serving (progress on a terminal).
    Rebuild {
        /// Compare the rebuilt tables with the live ones instead of
        /// swapping; exit 1 when any differs.
        #[arg(long)]
        verify: bool,
    },
}

/// Everything the history service needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub nats_url: String,
    pub subjects: Subjects,
    pub database_url: String,
    pub db_max_connections: u32,
    pub apps: AppRegistry,
    pub stream: StreamSettings,
    pub projection_batch: usize,
    /// `HERALD_AUTH_JWKS_URL`: accept users' session tokens (their view);
    /// `None` accepts app credentials only.
    pub auth_jwks_url: Option<String>,
    /// `HERALD_HISTORY_READ_WAIT_MS`: longest wait of a `min_seq` read.
    pub read_wait: std::time::Duration,
}

impl Config {
    /// Defaults for everything but the essentials (used by tests).
    pub fn new(nats_url: &str, subjects: Subjects, database_url: &str, apps: AppRegistry) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 0,
            nats_url: nats_url.into(),
            subjects,
            database_url: database_url.into(),
            db_max_connections: 5,
            apps,
            stream: StreamSettings::default(),
            projection_batch: 500,
            auth_jwks_url: None,
            read_wait: std::time::Duration::from_secs(5),
        }
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
            database_url: cli.database.database_url,
            db_max_connections: cli.database.db_max_connections.max(2),
            apps: cli.apps.registry()?,
            stream: cli.stream.settings(),
            projection_batch: cli.projection_batch.clamp(1, 10_000),
            auth_jwks_url: cli.tokens.auth_jwks_url.filter(|u| !u.is_empty()),
            read_wait: std::time::Duration::from_millis(cli.read_wait_ms.min(60_000)),
        })
    }
}
