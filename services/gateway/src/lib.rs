//! The Herald gateway: WebSocket connections speaking Pusher protocol 7 (plus
//! `herald:` extensions) and the signed Pusher HTTP API.
//!
//! Publishing goes into the JetStream channel stream first; clients only ever
//! receive events that are already stored, through the stream's republished
//! live subjects, to which the [`hub`] holds one NATS subscription per
//! channel with local subscribers.

mod api;
mod config;
mod control;
mod delivery;
mod error;
mod hub;
mod occupancy;
mod presence;
mod ws;

pub use config::{Cli, Config};
pub use error::ApiError;

use axum::Router;
use herald_config::AppRegistry;
use herald_proto::Subjects;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

/// State shared by every handler and connection.
pub(crate) struct Shared {
    pub config: Config,
    pub apps: AppRegistry,
    pub subjects: Subjects,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    /// Clients' publishes and receipts go through it (their acks are
    /// routed by one subscription, see `herald_stream::AckRouter`).
    pub acks: herald_stream::AckRouter,
    pub presence: Arc<presence::PresenceClient>,
    pub hub: hub::Hub,
    /// The runtime the connections' writer tasks run on.
    pub delivery: delivery::Delivery,
    /// Caps connections on this gateway (all apps together).
    pub connection_permits: Arc<Semaphore>,
    /// Connections per app, for the per-app `max_connections` limit.
    pub app_connections: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Connections per client address, for `max_connections_per_ip`.
    pub ip_connections: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    pub shutdown: CancellationToken,
    /// Verifies session and channel tokens; `None` without
    /// `HERALD_AUTH_JWKS_URL`.
    pub verifier: Option<herald_server::token::Verifier>,
    /// Single-use bindings of session tokens to sockets.
    pub bindings: herald_stream::TokenBindings,
}

pub(crate) type AppState = Arc<Shared>;

/// A built gateway, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    port: u16,
    router: Router,
    shared: AppState,
    control: control::Subscriptions,
    occupancy: occupancy::Changes,
    /// The presence service's online events, for watchlists.
    online: async_nats::Subscriber,
    shutdown: CancellationToken,
}

impl Application {
    /// Connect to NATS, make sure the channel stream exists, and bind.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (nats, reconnects) =
            herald_server::connect_nats_watching(&config.nats_url, "herald-gateway").await?;
        let js = async_nats::jetstream::new(nats.clone());
        herald_stream::ensure_channels_stream(&js, &config.subjects, &config.stream).await?;
        let kv =
            herald_stream::ensure_presence_bucket(&js, &config.subjects, config.stream.replicas)
                .await?;
        let presence = Arc::new(presence::PresenceClient::new(
            nats.clone(),
            config.subjects.clone(),
            kv,
            config.gateway_id.clone(),
            config.heartbeat_interval,
        ));

        herald_stream::ensure_webhook_streams(&js, &config.subjects, config.stream.replicas)
            .await?;
        let (occupancy, occupancy_changes) = occupancy::Occupancy::new();

        let bindings =
            herald_stream::TokenBindings::open(&js, &config.subjects, config.stream.replicas)
                .await?;
        let verifier = config
            .auth_jwks_url
            .as_deref()
            .map(herald_server::token::Verifier::new);
        let acks = herald_stream::AckRouter::start(nats.clone()).await?;
        let (listener, port) = herald_server::bind(&config.host, config.port).await?;
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            verifier,
            bindings,
            apps: config.apps.clone(),
            subjects: config.subjects.clone(),
            hub: hub::Hub::new(
                nats.clone(),
                reconnects,
                config.subjects.clone(),
                presence.clone(),
                occupancy,
            ),
            delivery: delivery::Delivery::new(config.delivery_threads)?,
            connection_permits: Arc::new(Semaphore::new(config.max_connections)),
            app_connections: Default::default(),
            ip_connections: Default::default(),
            nats: nats.clone(),
            js,
            acks,
            presence,
            shutdown: shutdown.clone(),
            config,
        });
        let config_subjects = shared.subjects.clone();
        let router = Router::new()
            .merge(ws::router())
            .merge(api::router())
            .with_state(shared.clone())
            .layer(TraceLayer::new_for_http())
            .merge(herald_server::ops_router(vec![(
                "nats",
                herald_server::nats_ready(nats.clone()),
            )]));
        tracing::info!(port, "gateway listening");
        Ok(Self {
            listener,
            port,
            router,
            control: control::subscribe(&nats, &config_subjects).await?,
            occupancy: occupancy_changes,
            online: nats
                .subscribe(config_subjects.presence_online_filter())
                .await?,
            shared,
            shutdown,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl herald_server::Service for Application {
    /// Cancelling this token stops the gateway: connections are closed with
    /// Pusher's 4200 (reconnect) and the listener stops.
    fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serve until the shutdown token is cancelled.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        let token = self.shutdown.clone();
        let shared = self.shared.clone();
        let subscriptions = self.control;
        let occupancy_changes = self.occupancy;
        let online = self.online;
        let background = tokio::spawn({
            let token = token.clone();
            async move {
                let heartbeat = shared.presence.run_heartbeat(token.clone());
                let peers = shared.presence.run_peer_watch(token.clone());
                let control = control::run(shared.clone(), subscriptions, token.clone());
                let occupancy =
                    occupancy::run(occupancy_changes, shared.presence.clone(), token.clone());
                let watchlists = run_watchlists(shared.clone(), online, token.clone());
                tokio::join!(heartbeat, peers, control, occupancy, watchlists);
            }
        });
        let limits = self.shared.config.http.clone();
        herald_server::serve_with(self.listener, self.router, token.clone(), limits).await?;
        let _ = background.await;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// Hand the presence service's online events to the watchlists until
/// shutdown.
async fn run_watchlists(
    shared: AppState,
    mut online: async_nats::Subscriber,
    token: CancellationToken,
) {
    use futures::StreamExt;
    loop {
        let msg = tokio::select! {
            _ = token.cancelled() => return,
            msg = online.next() => match msg {
                Some(msg) => msg,
                None => return,
            },
        };
        let Some(app) = shared.subjects.parse_presence_online(&msg.subject) else {
            continue;
        };
        match serde_json::from_slice::<herald_proto::presence::OnlineEvent>(&msg.payload) {
            Ok(event) => shared.hub.watchlists.event(&app, &event),
            Err(err) => tracing::warn!(%err, "malformed online event ignored"),
        }
    }
}
