//! The Herald auth service: apps, users, session and channel tokens, rooms.
//!
//! In this foundation it carries the shared service skeleton (configuration,
//! apps, NATS connection, health, readiness and metrics); token issuance and
//! rooms build on it.

use axum::Router;
use clap::Parser;
use herald_config::{AppRegistry, AppsArgs, ConfigError, ListenArgs, NatsArgs};
use herald_proto::Subjects;
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
}

/// Everything the service needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub nats_url: String,
    pub subjects: Subjects,
    pub apps: AppRegistry,
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
            apps: cli.apps.registry()?,
        })
    }
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
        let router =
            Router::new()
                .layer(TraceLayer::new_for_http())
                .merge(herald_server::ops_router(vec![(
                    "nats",
                    herald_server::nats_ready(nats),
                )]));
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
