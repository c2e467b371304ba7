//! Operational plumbing every Herald service shares: structured logs,
//! Prometheus metrics, the `/healthz` `/readyz` `/metrics` endpoints and the
//! shutdown signal.

pub mod http;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Initialise `tracing` once per process. Filter from `RUST_LOG` (default
/// `info`); JSON lines when `HERALD_LOG_FORMAT=json`, human text otherwise.
/// Calling it again is harmless, so tests may call it freely.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("HERALD_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// The process-wide Prometheus recorder. Installed on first use; several
/// in-process services (as in tests) share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); then
            // metrics go there and this handle renders an empty page.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A readiness probe: resolves to `Err(reason)` when a dependency is down.
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A readiness check that NATS is connected.
pub fn nats_ready(client: async_nats::Client) -> ReadyCheck {
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            match client.connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                other => Err(format!("nats is {other}")),
            }
        })
    })
}

#[derive(Clone)]
struct OpsState {
    checks: Arc<Vec<(&'static str, ReadyCheck)>>,
    metrics: PrometheusHandle,
}

/// `/healthz` (the process is alive), `/readyz` (every named dependency
/// answers) and `/metrics` (Prometheus text).
pub fn ops_router(checks: Vec<(&'static str, ReadyCheck)>) -> Router {
    let state = OpsState {
        checks: Arc::new(checks),
        metrics: metrics_handle(),
    };
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let mut failures = serde_json::Map::new();
    for (name, check) in state.checks.iter() {
        if let Err(reason) = check().await {
            tracing::warn!(dependency = name, %reason, "not ready");
            failures.insert(
                (*name).to_owned(),
                serde_json::Value::String("unavailable".into()),
            );
        }
    }
    if failures.is_empty() {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable", "dependencies": failures })),
        )
            .into_response()
    }
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// A token cancelled on SIGINT or SIGTERM: the root of every service's
/// shutdown. Child tokens are handed to each loop, which `select!`s on them.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

/// JSON error body shared by every Herald REST API:
/// `{"error": {"code": ..., "message": ...}}`.
pub fn error_body(code: &str, message: &str) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "error": { "code": code, "message": message } }))
}

/// Connect to NATS, naming the connection after the service.
pub async fn connect_nats(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    use anyhow::Context;
    // Install the metrics recorder before anything is counted: the first
    // NATS events come before the service builds its `/metrics` route.
    metrics_handle();
    // A server that is still starting (a compose stack coming up, a test's
    // fresh nats-server) may refuse or reset the first connections: retry
    // for a few seconds before giving up.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        let service = name.to_owned();
        let attempt = async_nats::ConnectOptions::new()
            .name(name)
            .event_callback(move |event| {
                let service = service.clone();
                async move { log_nats_event(&service, &event) }
            })
            .connect(url)
            .await;
        match attempt {
            Ok(client) => return Ok(client),
            Err(err) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(%err, url, "cannot connect to NATS yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
            Err(err) => {
                return Err(err).with_context(|| format!("connecting to NATS at {url}"));
            }
        }
    }
}

/// Log what the NATS client reports, and count it. A slow consumer matters
/// most: the client has dropped messages for a subscription whose reader fell
/// more than its capacity (65,536 messages) behind, which is otherwise silent.
fn log_nats_event(service: &str, event: &async_nats::Event) {
    use async_nats::Event;
    let kind = match event {
        Event::Connected => "connected",
        Event::Disconnected => "disconnected",
        Event::LameDuckMode => "lame_duck_mode",
        Event::Draining => "draining",
        Event::Closed => "closed",
        Event::SlowConsumer(_) => "slow_consumer",
        Event::ServerError(_) => "server_error",
        Event::ClientError(_) => "client_error",
    };
    metrics::counter!("herald_nats_events_total", "event" => kind).increment(1);
    match event {
        Event::Connected => tracing::info!(service, "NATS: {event}"),
        _ => tracing::warn!(service, "NATS: {event}"),
    }
}

/// Bind a TCP listener, returning it with its actual port (for port 0).
pub async fn bind(host: &str, port: u16) -> anyhow::Result<(tokio::net::TcpListener, u16)> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port}"))?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// Serve `router` until `shutdown` is cancelled.
///
/// Sockets get `TCP_NODELAY`: WebSocket frames and API answers are small,
/// and Nagle's algorithm would hold them back waiting for the peer's delayed
/// ACK (tens of milliseconds per frame).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// What a service's `Application` offers its `main`.
pub trait Service {
    /// Cancelling this token stops the service.
    fn shutdown_token(&self) -> CancellationToken;
    /// Serve until stopped.
    fn run_until_stopped(self) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

/// The whole of a service's `main`: build it, stop it on SIGINT/SIGTERM.
pub async fn run_main<S: Service>(
    build: impl std::future::Future<Output = anyhow::Result<S>>,
) -> anyhow::Result<()> {
    let app = build.await?;
    let signals = shutdown_on_signals();
    let token = app.shutdown_token();
    tokio::spawn(async move {
        signals.cancelled().await;
        token.cancel();
    });
    app.run_until_stopped().await
}
