//! Presence service configuration: the clap [`Cli`] (every flag also an
//! environment variable) and the plain [`Config`] it turns into, which tests
//! build directly with [`Config::new`].

use clap::Parser;
use herald_config::{
    AppRegistry, AppsArgs, ConfigError, ListenArgs, NatsArgs, PresenceTtlArgs,
    DEFAULT_PRESENCE_TTL_SECS,
};
use herald_proto::Subjects;
use std::time::Duration;

/// Default HTTP port.
pub const DEFAULT_PORT: u16 = 6004;
/// Default replicas of the KV buckets this service creates.
pub const DEFAULT_KV_REPLICAS: usize = 1;
/// Default heartbeat TTL: three missed 5 s gateway heartbeats (the shared
/// `HERALD_PRESENCE_TTL_SECS`, which gateways read too).
pub const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(DEFAULT_PRESENCE_TTL_SECS);
/// Default time between two sweeps for dead gateways. TTL + sweep interval is
/// the bound on how long a dead gateway's members linger (20 s by default).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Default silence after which a `client-typing` sender counts as stopped.
pub const DEFAULT_TYPING_TIMEOUT: Duration = Duration::from_millis(3000);
/// Default longest wait for the state to reach a member query's revision.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the active instance's lease lasts without renewal: the longest a
/// standby waits to take over from a crashed instance.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// How long the delete marker of a socket's presence key is kept.
pub const DEFAULT_TOMBSTONE_AGE: Duration = Duration::from_secs(60);

/// `herald-presence`: presence channels, join/leave across devices, last-seen.
#[derive(Debug, Parser)]
#[command(name = "herald-presence", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub listen: ListenArgs,
    /// HTTP port.
    #[arg(long, env = "HERALD_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub apps: AppsArgs,
    /// A gateway whose heartbeat is older than this is dead: its members are
    /// removed. The same setting as the gateways' (`HERALD_PRESENCE_TTL_SECS`).
    #[command(flatten)]
    pub presence_ttl: PresenceTtlArgs,
    /// How often to look for dead gateways, in seconds.
    #[arg(long, env = "HERALD_PRESENCE_SWEEP_INTERVAL_SECS", default_value_t = DEFAULT_SWEEP_INTERVAL.as_secs())]
    pub sweep_interval_secs: u64,
    /// After a `client-typing`, this many ms without another one from the
    /// same sender publish `herald:typing_stopped`.
    #[arg(long, env = "HERALD_TYPING_TIMEOUT_MS", default_value_t = millis(DEFAULT_TYPING_TIMEOUT))]
    pub typing_timeout_ms: u64,
    /// Longest wait, in ms, for the state to catch up with a gateway's
    /// member query before answering with an error.
    #[arg(long, env = "HERALD_PRESENCE_QUERY_TIMEOUT_MS", default_value_t = millis(DEFAULT_QUERY_TIMEOUT))]
    pub query_timeout_ms: u64,
    /// Seconds the active instance's lease lasts without renewal; a standby
    /// takes over at most this long after the active instance dies.
    #[arg(long, env = "HERALD_PRESENCE_LEASE_SECS", default_value_t = DEFAULT_LEASE_TTL.as_secs())]
    pub lease_secs: u64,
    /// Seconds a socket's deleted presence keys stay in the bucket as delete
    /// markers before they are purged.
    #[arg(long, env = "HERALD_PRESENCE_TOMBSTONE_SECS", default_value_t = DEFAULT_TOMBSTONE_AGE.as_secs())]
    pub tombstone_secs: u64,
    /// Replicas of the KV buckets this service creates (3 on a NATS cluster).
    #[arg(long, env = "HERALD_KV_REPLICAS", default_value_t = DEFAULT_KV_REPLICAS)]
    pub kv_replicas: usize,
    #[command(flatten)]
    pub tokens: herald_config::TokenArgs,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

/// The webhook dispatcher's flags (see [`crate::webhooks`]).
#[derive(Debug, clap::Args)]
pub struct WebhookArgs {
    /// Most events in one webhook request.
    #[arg(long, env = "HERALD_WEBHOOK_BATCH_MAX", default_value_t = 100)]
    pub webhook_batch_max: usize,
    /// Longest wait, in ms, for more events to fill a webhook request.
    #[arg(long, env = "HERALD_WEBHOOK_BATCH_DELAY_MS", default_value_t = 250)]
    pub webhook_batch_delay_ms: u64,
    /// How long, in seconds, a failing webhook request is retried before
    /// its events are dead-lettered (Pusher's 5 minutes by default).
    #[arg(long, env = "HERALD_WEBHOOK_RETRY_SECS", default_value_t = 300)]
    pub webhook_retry_secs: u64,
    /// First retry delay in ms; it doubles up to `HERALD_WEBHOOK_BACKOFF_MAX_MS`.
    #[arg(long, env = "HERALD_WEBHOOK_BACKOFF_MS", default_value_t = 1000)]
    pub webhook_backoff_ms: u64,
    /// Longest retry delay in ms.
    #[arg(long, env = "HERALD_WEBHOOK_BACKOFF_MAX_MS", default_value_t = 60_000)]
    pub webhook_backoff_max_ms: u64,
    /// Timeout of one webhook request, in ms.
    #[arg(long, env = "HERALD_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// Most webhook requests in flight per app.
    #[arg(long, env = "HERALD_WEBHOOK_CONCURRENCY", default_value_t = 4)]
    pub webhook_concurrency: usize,
    /// Hold `channel_vacated` and `member_removed` webhooks this many ms; a
    /// channel occupied (a member back) meanwhile sends neither event of the
    /// pair. 0 (the default) sends them at once.
    #[arg(long, env = "HERALD_WEBHOOK_VACATE_DELAY_MS", default_value_t = 0)]
    pub webhook_vacate_delay_ms: u64,
    /// PEM file of certificate authorities trusted for `https://` webhooks
    /// besides the system's (a private CA).
    #[arg(long, env = "HERALD_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<std::path::PathBuf>,
}

/// The webhook dispatcher's settings.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Most events in one request.
    pub batch_max: usize,
    /// Longest wait for more events to fill a request.
    pub batch_delay: Duration,
    /// How long a failing request is retried before dead-lettering.
    pub retry_for: Duration,
    /// First retry delay (doubling, with jitter).
    pub backoff: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Most requests in flight per app.
    pub concurrency: usize,
    /// Delay of `channel_vacated` / `member_removed` (zero: none).
    pub vacate_delay: Duration,
    /// Certificate authorities trusted for `https://` webhooks besides the
    /// system's (a PEM file).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            batch_max: 100,
            batch_delay: Duration::from_millis(250),
            retry_for: Duration::from_secs(300),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            concurrency: 4,
            vacate_delay: Duration::ZERO,
            ca_file: None,
        }
    }
}

impl TryFrom<WebhookArgs> for WebhookSettings {
    type Error = ConfigError;

    fn try_from(a: WebhookArgs) -> Result<Self, Self::Error> {
        Ok(Self {
            batch_max: positive("HERALD_WEBHOOK_BATCH_MAX", a.webhook_batch_max as u64)? as usize,
            batch_delay: Duration::from_millis(positive(
                "HERALD_WEBHOOK_BATCH_DELAY_MS",
                a.webhook_batch_delay_ms,
            )?),
            retry_for: Duration::from_secs(a.webhook_retry_secs),
            backoff: Duration::from_millis(positive(
                "HERALD_WEBHOOK_BACKOFF_MS",
                a.webhook_backoff_ms,
            )?),
            backoff_max: Duration::from_millis(a.webhook_backoff_max_ms.max(a.webhook_backoff_ms)),
            timeout: Duration::from_millis(positive(
                "HERALD_WEBHOOK_TIMEOUT_MS",
                a.webhook_timeout_ms,
            )?),
            concurrency: positive("HERALD_WEBHOOK_CONCURRENCY", a.webhook_concurrency as u64)?
                as usize,
            vacate_delay: Duration::from_millis(a.webhook_vacate_delay_ms),
            ca_file: a.webhook_ca_file,
        })
    }
}

/// A default duration as the whole milliseconds its flag takes.
const fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

/// Everything the presence service needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind.
    pub host: String,
    /// HTTP port (0 picks a free one).
    pub port: u16,
    /// NATS server URL(s).
    pub nats_url: String,
    /// Subject and bucket names.
    pub subjects: Subjects,
    /// Configured apps (credentials and `max_presence_members`).
    pub apps: AppRegistry,
    /// A gateway heartbeat older than this means the gateway is dead.
    pub heartbeat_ttl: Duration,
    /// Time between sweeps for dead gateways.
    pub sweep_interval: Duration,
    /// Silence after a `client-typing` that ends the typing state.
    pub typing_timeout: Duration,
    /// Longest wait for a member query's `min_revision`.
    pub query_timeout: Duration,
    /// Replicas of the buckets this service creates.
    pub kv_replicas: usize,
    /// The active instance's lease TTL (see [`crate::leader`]).
    pub lease_ttl: Duration,
    /// How long a socket key's delete marker is kept before it is purged.
    pub tombstone_age: Duration,
    /// `HERALD_AUTH_JWKS_URL`: accept users' session tokens (their view);
    /// `None` accepts app credentials only.
    pub auth_jwks_url: Option<String>,
    /// The webhook dispatcher's settings.
    pub webhooks: WebhookSettings,
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
            heartbeat_ttl: DEFAULT_HEARTBEAT_TTL,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            typing_timeout: DEFAULT_TYPING_TIMEOUT,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            kv_replicas: DEFAULT_KV_REPLICAS,
            lease_ttl: DEFAULT_LEASE_TTL,
            tombstone_age: DEFAULT_TOMBSTONE_AGE,
            auth_jwks_url: None,
            webhooks: WebhookSettings::default(),
        }
    }
}

fn positive(name: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        Err(ConfigError::Invalid(format!("{name} must be positive")))
    } else {
        Ok(value)
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
            heartbeat_ttl: Duration::from_secs(positive(
                "HERALD_PRESENCE_TTL_SECS",
                cli.presence_ttl.presence_ttl_secs,
            )?),
            sweep_interval: Duration::from_secs(positive(
                "HERALD_PRESENCE_SWEEP_INTERVAL_SECS",
                cli.sweep_interval_secs,
            )?),
            typing_timeout: Duration::from_millis(positive(
                "HERALD_TYPING_TIMEOUT_MS",
                cli.typing_timeout_ms,
            )?),
            query_timeout: Duration::from_millis(positive(
                "HERALD_PRESENCE_QUERY_TIMEOUT_MS",
                cli.query_timeout_ms,
            )?),
            kv_replicas: positive("HERALD_KV_REPLICAS", cli.kv_replicas as u64)? as usize,
            lease_ttl: Duration::from_secs(positive("HERALD_PRESENCE_LEASE_SECS", cli.lease_secs)?),
            tombstone_age: Duration::from_secs(cli.tombstone_secs),
            auth_jwks_url: cli.tokens.auth_jwks_url.filter(|u| !u.is_empty()),
            webhooks: cli.webhooks.try_into()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_the_documented_defaults() {
        let cli = Cli::try_parse_from(["herald-presence", "--dev"]).unwrap();
        let config = Config::try_from(cli).unwrap();
        assert_eq!(config.heartbeat_ttl, DEFAULT_HEARTBEAT_TTL);
        assert_eq!(config.sweep_interval, DEFAULT_SWEEP_INTERVAL);
        assert_eq!(config.typing_timeout, DEFAULT_TYPING_TIMEOUT);
        assert_eq!(config.query_timeout, DEFAULT_QUERY_TIMEOUT);
        assert_eq!(config.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(config.tombstone_age, DEFAULT_TOMBSTONE_AGE);
        assert_eq!(config.port, DEFAULT_PORT);
        assert_eq!(config.kv_replicas, DEFAULT_KV_REPLICAS);
        assert_eq!(config.webhooks.retry_for, Duration::from_secs(300));
        assert_eq!(config.webhooks.vacate_delay, Duration::ZERO);
        assert!(config.heartbeat_ttl + config.sweep_interval <= Duration::from_secs(30));
    }

    #[test]
    fn a_zero_ttl_is_refused() {
        let cli =
            Cli::try_parse_from(["herald-presence", "--dev", "--presence-ttl-secs", "0"]).unwrap();
        assert!(Config::try_from(cli).is_err());
    }
}
