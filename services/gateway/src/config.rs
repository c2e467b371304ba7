//! Gateway configuration: the clap command line (every flag also an env var)
//! and the plain [`Config`] that tests build directly.

use clap::Parser;
use herald_config::{AppRegistry, AppsArgs, ConfigError, ListenArgs, NatsArgs};
use herald_proto::Subjects;
use herald_stream::{StreamArgs, StreamSettings};
use std::time::Duration;

/// `herald-gateway`: WebSocket connections (Pusher protocol 7) and the
/// Pusher HTTP API.
#[derive(Debug, Parser)]
#[command(name = "herald-gateway", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub listen: ListenArgs,
    /// HTTP and WebSocket port.
    #[arg(long, env = "HERALD_PORT", default_value_t = 6001)]
    pub port: u16,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub apps: AppsArgs,
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Seconds of silence after which the server pings a client (sent to
    /// clients as `activity_timeout`).
    #[arg(long, env = "HERALD_ACTIVITY_TIMEOUT_SECS", default_value_t = 120)]
    pub activity_timeout_secs: u64,
    /// Seconds to wait for a pong before closing with 4201.
    #[arg(long, env = "HERALD_PONG_TIMEOUT_SECS", default_value_t = 30)]
    pub pong_timeout_secs: u64,
    /// Most WebSocket connections this gateway holds, all apps together.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Frames queued for one connection before it counts as a slow consumer
    /// and is closed (it reconnects and resumes).
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE", default_value_t = 512)]
    pub outbound_queue: usize,
    /// Worker threads of the delivery runtime that writes to the sockets,
    /// apart from the one serving the HTTP API, NATS and client frames
    /// (default: one per CPU; 0 writes on that same runtime).
    #[arg(long, env = "HERALD_DELIVERY_THREADS")]
    pub delivery_threads: Option<usize>,
    /// This gateway's id in presence keys (random when not given). Letters,
    /// digits and '-'.
    #[arg(long, env = "HERALD_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Seconds between this gateway's presence heartbeats.
    #[arg(long, env = "HERALD_HEARTBEAT_SECS", default_value_t = 5)]
    pub heartbeat_secs: u64,
    /// A gateway whose heartbeat is older than this many seconds counts as
    /// gone (must match the presence service's TTL).
    #[arg(long, env = "HERALD_GATEWAY_TTL_SECS", default_value_t = 15)]
    pub gateway_ttl_secs: u64,
}

/// Everything the gateway needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub nats_url: String,
    pub subjects: Subjects,
    pub apps: AppRegistry,
    pub stream: StreamSettings,
    pub activity_timeout: Duration,
    pub pong_timeout: Duration,
    pub max_connections: usize,
    pub outbound_queue: usize,
    /// Writer threads (0: writers share the main runtime).
    pub delivery_threads: usize,
    pub gateway_id: String,
    pub heartbeat_interval: Duration,
    pub gateway_ttl: Duration,
}

fn random_gateway_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
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
            stream: StreamSettings::default(),
            activity_timeout: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            max_connections: 100_000,
            outbound_queue: 512,
            delivery_threads: 1,
            gateway_id: random_gateway_id(),
            heartbeat_interval: Duration::from_secs(5),
            gateway_ttl: Duration::from_secs(15),
        }
    }
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, Self::Error> {
        if cli.activity_timeout_secs == 0 || cli.pong_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "activity and pong timeouts must be positive".into(),
            ));
        }
        let gateway_id = cli.gateway_id.unwrap_or_else(random_gateway_id);
        if !herald_proto::presence::is_valid_gateway_id(&gateway_id) {
            return Err(ConfigError::Invalid(
                "HERALD_GATEWAY_ID must be 1-64 letters, digits or '-'".into(),
            ));
        }
        if cli.heartbeat_secs == 0 || cli.gateway_ttl_secs <= cli.heartbeat_secs {
            return Err(ConfigError::Invalid(
                "HERALD_HEARTBEAT_SECS must be positive and below HERALD_GATEWAY_TTL_SECS".into(),
            ));
        }
        Ok(Self {
            host: cli.listen.host,
            port: cli.port,
            subjects: cli.nats.subjects()?,
            nats_url: cli.nats.nats_url,
            apps: cli.apps.registry()?,
            stream: cli.stream.settings(),
            activity_timeout: Duration::from_secs(cli.activity_timeout_secs),
            pong_timeout: Duration::from_secs(cli.pong_timeout_secs),
            max_connections: cli.max_connections,
            outbound_queue: cli.outbound_queue.max(8),
            delivery_threads: cli
                .delivery_threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            gateway_id,
            heartbeat_interval: Duration::from_secs(cli.heartbeat_secs),
            gateway_ttl: Duration::from_secs(cli.gateway_ttl_secs),
        })
    }
}
