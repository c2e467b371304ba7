//! The WebSocket endpoint `GET /app/{key}?protocol=7`.

mod admission;
mod client_events;
mod connection;
mod publish;
mod signin;
mod subscribe;
mod webhooks;

use crate::AppState;
use axum::extract::{ConnectInfo, Path, Query, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::net::SocketAddr;

/// Routes of the WebSocket endpoint.
pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/app/{key}", get(upgrade))
}

/// Frames larger than this many times the app's message limit are refused by
/// the WebSocket layer itself (close 1009); smaller oversized frames get a
/// `pusher:error` and the connection stays open.
const HARD_FRAME_FACTOR: usize = 4;

/// Bytes tungstenite allocates up front per connection for reading. Client
/// frames are a few hundred bytes; larger ones are simply read in several
/// chunks. This buffer was ~30% of an idle connection's memory at 4 KiB.
const READ_BUFFER_BYTES: usize = 1024;

/// Queued frames are coalesced up to this many bytes per socket write.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

async fn upgrade(
    ws: WebSocketUpgrade,
    Path(key): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let app = state.apps.by_key(&key).cloned();
    // Decided before the upgrade, so that the per-address count includes
    // upgrades in flight; a refusal is still told over the WebSocket, as a
    // Pusher error the client library understands.
    let client = admission::client_ip(peer.ip(), &headers, &state.config.trusted_proxies);
    let (ip_slot, refused) = match admission::admit(&state, app.as_deref(), &headers, client) {
        Ok(slot) => (slot, None),
        Err(refusal) => (None, Some(refusal)),
    };
    let limit = app
        .as_ref()
        .map(|a| a.limits.max_message_bytes)
        .unwrap_or(10 * 1024);
    let hard = limit.saturating_mul(HARD_FRAME_FACTOR).max(16 * 1024);
    let admitted = connection::Admission {
        app,
        protocol: params.get("protocol").cloned(),
        refused,
        ip_slot,
        token: params.get("token").filter(|t| !t.is_empty()).cloned(),
    };
    ws.max_message_size(hard)
        .max_frame_size(hard)
        // Small read buffer: most frames are a few hundred bytes, and memory
        // per idle connection is what caps a gateway's connection count. The
        // write buffer only grows when frames queue up, and then lets the
        // writer send everything queued with one syscall instead of one per
        // frame (the per-frame `send` dominated the fan-out profile).
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| connection::run(socket, state, key, admitted))
}
