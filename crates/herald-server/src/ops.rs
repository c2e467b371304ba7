//! The operational endpoints every service serves: `/healthz` (alive),
//! `/readyz` (every dependency answers) and `/metrics` (Prometheus text).

use crate::telemetry::metrics_handle;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

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
    /// Checks whose reason is the service's own state (not a dependency's
    /// error text), shown in the answer.
    explained: Arc<Vec<(&'static str, ReadyCheck)>>,
    metrics: PrometheusHandle,
}

/// `/healthz` (the process is alive), `/readyz` (every named dependency
/// answers) and `/metrics` (Prometheus text).
pub fn ops_router(checks: Vec<(&'static str, ReadyCheck)>) -> Router {
    ops_router_explained(checks, Vec::new())
}

/// [`ops_router`], plus checks whose failure reason `/readyz` shows (say,
/// why a projection stopped): only for reasons that are the service's own
/// words, never a dependency's error text.
pub fn ops_router_explained(
    checks: Vec<(&'static str, ReadyCheck)>,
    explained: Vec<(&'static str, ReadyCheck)>,
) -> Router {
    let state = OpsState {
        checks: Arc::new(checks),
        explained: Arc::new(explained),
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
    for (name, check) in state.explained.iter() {
        if let Err(reason) = check().await {
            tracing::warn!(dependency = name, %reason, "not ready");
            failures.insert((*name).to_owned(), serde_json::Value::String(reason));
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
