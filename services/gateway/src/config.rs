//! Gateway configuration: the clap command line (every flag also an env var)
//! and the plain [`Config`] that tests build directly.

use clap::Parser;
use herald_config::{
    AppRegistry, AppsArgs, ConfigError, ListenArgs, NatsArgs, PresenceTtlArgs, TokenArgs,
    DEFAULT_PRESENCE_TTL_SECS,
};
use herald_proto::Subjects;
use herald_server::ServeLimits;
use herald_stream::{StreamArgs, StreamSettings};
use std::net::IpAddr;
use std::time::Duration;

/// Default HTTP and WebSocket port.
pub const DEFAULT_PORT: u16 = 6001;
/// Default seconds of silence before the server pings a client.
pub const DEFAULT_ACTIVITY_TIMEOUT_SECS: u64 = 120;
/// Default seconds to wait for a pong.
pub const DEFAULT_PONG_TIMEOUT_SECS: u64 = 30;
/// Default cap on connections per gateway.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default bound of a connection's outbound queue, in bytes (1 MiB).
pub const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 1024 * 1024;
/// Smallest outbound queue bound accepted, in bytes.
pub const MIN_OUTBOUND_QUEUE_BYTES: usize = 4 * 1024;
/// Default seconds a socket write may take before the client counts as
/// stuck and is dropped.
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 10;
/// Default bound on the events one `resume_from` replays.
pub const DEFAULT_RESUME_MAX_EVENTS: u64 = 10_000;
/// Default seconds between presence heartbeats.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 5;
/// Default age up to which a cache channel's last event is sent to a new
/// subscriber: Pusher keeps cached events for 30 minutes.
pub const DEFAULT_CACHE_MAX_AGE_SECS: u64 = 30 * 60;

/// `herald-gateway`: WebSocket connections (Pusher protocol 7) and the
/// Pusher HTTP API.
#[derive(Debug, Parser)]
#[command(name = "herald-gateway", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub listen: ListenArgs,
    /// HTTP and WebSocket port.
    #[arg(long, env = "HERALD_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub apps: AppsArgs,
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Seconds of silence after which the server pings a client (sent to
    /// clients as `activity_timeout`).
    #[arg(long, env = "HERALD_ACTIVITY_TIMEOUT_SECS", default_value_t = DEFAULT_ACTIVITY_TIMEOUT_SECS)]
    pub activity_timeout_secs: u64,
    /// Seconds to wait for a pong before closing with 4201.
    #[arg(long, env = "HERALD_PONG_TIMEOUT_SECS", default_value_t = DEFAULT_PONG_TIMEOUT_SECS)]
    pub pong_timeout_secs: u64,
    /// Most WebSocket connections this gateway holds, all apps together.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Bytes queued for one connection, not yet taken by its socket, before
    /// it counts as a slow consumer and is closed with 4200 (it reconnects
    /// and resumes). Replaces the frame count `HERALD_OUTBOUND_QUEUE`.
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE_BYTES", default_value_t = DEFAULT_OUTBOUND_QUEUE_BYTES)]
    pub outbound_queue_bytes: usize,
    /// Seconds one socket write may take; a client that does not read for
    /// that long is dropped (and everything it held released).
    #[arg(long, env = "HERALD_WRITE_TIMEOUT_SECS", default_value_t = DEFAULT_WRITE_TIMEOUT_SECS)]
    pub write_timeout_secs: u64,
    /// Seconds a client may take to send an HTTP request head (also the
    /// WebSocket upgrade request, and the idle time of a kept-alive
    /// connection).
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT_SECS", default_value_t = herald_server::serve::DEFAULT_HEADER_READ_TIMEOUT_SECS)]
    pub header_read_timeout_secs: u64,
    /// Most connections that have not finished their first request head;
    /// more are closed as they arrive.
    #[arg(long, env = "HERALD_MAX_PENDING_CONNECTIONS", default_value_t = herald_server::serve::DEFAULT_MAX_PENDING_CONNECTIONS)]
    pub max_pending_connections: usize,
    /// Seconds the switch to WebSocket may take once it was answered.
    #[arg(long, env = "HERALD_HANDSHAKE_TIMEOUT_SECS", default_value_t = herald_server::serve::DEFAULT_HANDSHAKE_TIMEOUT_SECS)]
    pub handshake_timeout_secs: u64,
    /// Kernel send buffer (`SO_SNDBUF`) of every socket, in bytes; 0 leaves
    /// it to the kernel's autotuning (up to 4 MiB per socket on Linux, all
    /// of it held by a client that stops reading).
    #[arg(long, env = "HERALD_SOCKET_SEND_BUFFER_BYTES", default_value_t = 0)]
    pub socket_send_buffer_bytes: usize,
    /// Most WebSocket connections from one client address (0: no limit).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// Proxies whose `X-Forwarded-For` is believed, as a comma-separated
    /// list of addresses or CIDR ranges (e.g. `10.0.0.0/8,::1`). A
    /// connection from anywhere else counts as its peer address.
    #[arg(long, env = "HERALD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpRange>,
    /// Worker threads of the delivery runtime that writes to the sockets,
    /// apart from the one serving the HTTP API, NATS and client frames
    /// (default: half the CPUs, at least one; 0 writes on that same
    /// runtime).
    #[arg(long, env = "HERALD_DELIVERY_THREADS")]
    pub delivery_threads: Option<usize>,
    /// Worker threads of the runtime serving the HTTP API, NATS and client
    /// frames (default: the CPUs the writers leave, at least one; every CPU
    /// when the writers are off).
    #[arg(long, env = "HERALD_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// This gateway's id in presence keys (random when not given). Letters,
    /// digits and '-'.
    #[arg(long, env = "HERALD_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Seconds between this gateway's presence heartbeats.
    #[arg(long, env = "HERALD_HEARTBEAT_SECS", default_value_t = DEFAULT_HEARTBEAT_SECS)]
    pub heartbeat_secs: u64,
    #[command(flatten)]
    pub presence_ttl: PresenceTtlArgs,
    /// Most events one `resume_from` replays; a client further behind gets
    /// `herald:resume_failed` (reason `too_far_behind`) and reloads history.
    #[arg(long, env = "HERALD_RESUME_MAX_EVENTS", default_value_t = DEFAULT_RESUME_MAX_EVENTS)]
    pub resume_max_events: u64,
    /// Seconds a cache channel's last event stays young enough to be sent
    /// to a new subscriber (older: `pusher:cache_miss`).
    #[arg(long, env = "HERALD_CACHE_MAX_AGE_SECS", default_value_t = DEFAULT_CACHE_MAX_AGE_SECS)]
    pub cache_max_age_secs: u64,
    #[command(flatten)]
    pub tokens: TokenArgs,
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
    /// Bound of a connection's outbound queue, in bytes.
    pub outbound_queue_bytes: usize,
    /// How long one socket write may take before the client is dropped.
    pub write_timeout: Duration,
    /// Header read timeout, pending-connection cap and handshake timeout
    /// of the HTTP server.
    pub http: ServeLimits,
    /// Most WebSocket connections per client address (0: no limit).
    pub max_connections_per_ip: usize,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpRange>,
    /// Writer threads (0: writers share the main runtime).
    pub delivery_threads: usize,
    /// Threads of the main runtime, for a binary that builds it
    /// ([`Config::threads`] chooses both counts).
    pub worker_threads: usize,
    pub gateway_id: String,
    pub heartbeat_interval: Duration,
    /// `HERALD_PRESENCE_TTL_SECS`: a peer silent this long is gone.
    pub gateway_ttl: Duration,
    /// Most events one `resume_from` replays.
    pub resume_max_events: u64,
    /// `HERALD_CACHE_MAX_AGE_SECS`: the oldest cached event sent on subscribe.
    pub cache_max_age: Duration,
    /// `HERALD_AUTH_JWKS_URL`: where session and channel tokens' keys are;
    /// `None` refuses tokens (`?token=`, a subscribe's `token`).
    pub auth_jwks_url: Option<String>,
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
            activity_timeout: Duration::from_secs(DEFAULT_ACTIVITY_TIMEOUT_SECS),
            pong_timeout: Duration::from_secs(DEFAULT_PONG_TIMEOUT_SECS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            write_timeout: Duration::from_secs(DEFAULT_WRITE_TIMEOUT_SECS),
            http: ServeLimits::default(),
            max_connections_per_ip: 0,
            trusted_proxies: Vec::new(),
            delivery_threads: 1,
            worker_threads: 1,
            gateway_id: random_gateway_id(),
            heartbeat_interval: Duration::from_secs(DEFAULT_HEARTBEAT_SECS),
            gateway_ttl: Duration::from_secs(DEFAULT_PRESENCE_TTL_SECS),
            resume_max_events: DEFAULT_RESUME_MAX_EVENTS,
            cache_max_age: Duration::from_secs(DEFAULT_CACHE_MAX_AGE_SECS),
            auth_jwks_url: None,
        }
    }
}

/// The delivery runtime's and the main runtime's thread counts on `cpus`
/// CPUs, where not given: one thread per CPU in all, half of them (at least
/// one) writing to the sockets and the rest (at least one) for the main
/// runtime; with the writers off (`0`), every CPU for the main runtime.
/// More busy threads than cores cost context switches on every wake-up:
/// with one main thread per CPU next to the writers, 2 + 1 threads on two
/// cores, the gateway spent ~14 µs of CPU per acknowledged publish where
/// 1 + 1 spent ~11, and fanned out no faster (BENCHMARKS.md, 2026-12-03).
fn thread_counts(cpus: usize, delivery: Option<usize>, workers: Option<usize>) -> (usize, usize) {
    let cpus = cpus.max(1);
    let delivery = delivery.unwrap_or((cpus / 2).max(1));
    let workers = workers.unwrap_or(cpus.saturating_sub(delivery).max(1));
    (delivery, workers)
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, Self::Error> {
        if cli.activity_timeout_secs == 0 || cli.pong_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "activity and pong timeouts must be positive".into(),
            ));
        }
        if cli.worker_threads == Some(0) {
            return Err(ConfigError::Invalid(
                "HERALD_WORKER_THREADS must be positive".into(),
            ));
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (delivery_threads, worker_threads) =
            thread_counts(cpus, cli.delivery_threads, cli.worker_threads);
        if cli.write_timeout_secs == 0
            || cli.header_read_timeout_secs == 0
            || cli.handshake_timeout_secs == 0
        {
            return Err(ConfigError::Invalid(
                "HERALD_WRITE_TIMEOUT_SECS, HERALD_HEADER_READ_TIMEOUT_SECS and \
                 HERALD_HANDSHAKE_TIMEOUT_SECS must be positive"
                    .into(),
            ));
        }
        let gateway_id = cli.gateway_id.unwrap_or_else(random_gateway_id);
        if !herald_proto::presence::is_valid_gateway_id(&gateway_id) {
            return Err(ConfigError::Invalid(
                "HERALD_GATEWAY_ID must be 1-64 letters, digits or '-'".into(),
            ));
        }
        let ttl_secs = cli.presence_ttl.presence_ttl_secs;
        if cli.heartbeat_secs == 0 || ttl_secs <= cli.heartbeat_secs {
            return Err(ConfigError::Invalid(
                "HERALD_HEARTBEAT_SECS must be positive and below HERALD_PRESENCE_TTL_SECS".into(),
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
            outbound_queue_bytes: cli.outbound_queue_bytes.max(MIN_OUTBOUND_QUEUE_BYTES),
            write_timeout: Duration::from_secs(cli.write_timeout_secs),
            http: ServeLimits {
                header_read_timeout: Duration::from_secs(cli.header_read_timeout_secs),
                max_pending_connections: cli.max_pending_connections.max(1),
                handshake_timeout: Duration::from_secs(cli.handshake_timeout_secs),
                socket_send_buffer: (cli.socket_send_buffer_bytes > 0)
                    .then_some(cli.socket_send_buffer_bytes),
            },
            max_connections_per_ip: cli.max_connections_per_ip,
            trusted_proxies: cli.trusted_proxies,
            delivery_threads,
            worker_threads,
            gateway_id,
            heartbeat_interval: Duration::from_secs(cli.heartbeat_secs),
            gateway_ttl: Duration::from_secs(ttl_secs),
            resume_max_events: cli.resume_max_events,
            cache_max_age: Duration::from_secs(cli.cache_max_age_secs),
            auth_jwks_url: cli.tokens.auth_jwks_url.filter(|u| !u.is_empty()),
        })
    }
}

/// An address or a CIDR range of addresses (`10.0.0.0/8`, `::1`), for
/// `HERALD_TRUSTED_PROXIES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` is in the range. IPv4 addresses written as IPv6
    /// (`::ffff:10.0.0.1`) count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network = addr
            .parse::<IpAddr>()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?
            .to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0-{max}"))?,
        };
        Ok(Self { network, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtimes_thread_counts_follow_the_cpus_unless_given() {
        assert_eq!(thread_counts(1, None, None), (1, 1));
        assert_eq!(thread_counts(2, None, None), (1, 1));
        assert_eq!(thread_counts(3, None, None), (1, 2));
        assert_eq!(thread_counts(8, None, None), (4, 4));
        assert_eq!(thread_counts(8, Some(0), None), (0, 8));
        assert_eq!(thread_counts(8, Some(6), None), (6, 2));
        assert_eq!(thread_counts(8, Some(8), None), (8, 1));
        assert_eq!(thread_counts(8, None, Some(2)), (4, 2));
        assert_eq!(thread_counts(2, Some(2), Some(1)), (2, 1));
        let zero = Cli::try_parse_from(["herald-gateway", "--dev", "--worker-threads", "0"]);
        assert!(Config::try_from(zero.unwrap()).is_err());
    }

    #[test]
    fn the_command_line_defaults_are_the_config_defaults() {
        let cli = Cli::try_parse_from(["herald-gateway", "--dev"]).unwrap();
        let from_cli = Config::try_from(cli).unwrap();
        let defaults = Config::new("nats://x", from_cli.subjects.clone(), from_cli.apps.clone());
        assert_eq!(from_cli.port, DEFAULT_PORT);
        assert_eq!(from_cli.activity_timeout, defaults.activity_timeout);
        assert_eq!(from_cli.pong_timeout, defaults.pong_timeout);
        assert_eq!(from_cli.max_connections, defaults.max_connections);
        assert_eq!(from_cli.outbound_queue_bytes, defaults.outbound_queue_bytes);
        assert_eq!(from_cli.write_timeout, defaults.write_timeout);
        assert_eq!(from_cli.http, defaults.http);
        assert_eq!(from_cli.max_connections_per_ip, 0);
        assert!(from_cli.trusted_proxies.is_empty());
        assert_eq!(from_cli.heartbeat_interval, defaults.heartbeat_interval);
        assert_eq!(from_cli.gateway_ttl, defaults.gateway_ttl);
        assert_eq!(from_cli.resume_max_events, defaults.resume_max_events);
        assert_eq!(from_cli.cache_max_age, defaults.cache_max_age);
    }

    #[test]
    fn a_heartbeat_not_below_the_presence_ttl_is_refused() {
        let cli = Cli::try_parse_from([
            "herald-gateway",
            "--dev",
            "--heartbeat-secs",
            "15",
            "--presence-ttl-secs",
            "15",
        ])
        .unwrap();
        let err = Config::try_from(cli).unwrap_err();
        assert!(err.to_string().contains("HERALD_PRESENCE_TTL_SECS"));
    }

    #[test]
    fn trusted_proxies_are_addresses_or_cidr_ranges() {
        let range: IpRange = "10.0.0.0/8".parse().unwrap();
        assert!(range.contains("10.1.2.3".parse().unwrap()));
        assert!(range.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!range.contains("11.0.0.1".parse().unwrap()));
        let one: IpRange = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let any: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("192.0.2.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.0/x"] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
        let cli = Cli::try_parse_from([
            "herald-gateway",
            "--dev",
            "--trusted-proxies",
            "127.0.0.1,10.0.0.0/8",
        ])
        .unwrap();
        assert_eq!(Config::try_from(cli).unwrap().trusted_proxies.len(), 2);
    }
}
