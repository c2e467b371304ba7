//! The Pusher HTTP API: publishing events (single, multi-channel and batch).
//!
//! Every event is appended to its channel's subject in the `CHANNELS` stream;
//! the acks of all the channels of a request are awaited together (pipelined,
//! never one by one), and only then does the API answer, so a 200 means the
//! event is durably stored.

mod signature;

use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{Method, Uri};
use axum::routing::post;
use axum::{Json, Router};
use herald_config::AppConfig;
use herald_proto::{ChannelName, Envelope, EventKind};
use serde::Deserialize;
use serde_json::{json, Value};

/// Longest event name Pusher accepts.
const MAX_EVENT_NAME_LEN: usize = 200;
/// Largest request body accepted at all (a batch of 10 events of 10 KB each
/// plus JSON overhead fits comfortably).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Routes of the Pusher HTTP API.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/apps/{app_id}/events", post(trigger))
        .route("/apps/{app_id}/batch_events", post(trigger_batch))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// One event in a publish request.
#[derive(Debug, Deserialize)]
struct EventRequest {
    name: Option<String>,
    data: Option<Value>,
    channels: Option<Vec<String>>,
    channel: Option<String>,
    socket_id: Option<String>,
    #[allow(dead_code)]
    info: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BatchRequest {
    batch: Vec<EventRequest>,
}

/// An event that passed validation, ready to store.
struct ValidEvent {
    name: String,
    data: String,
    channels: Vec<ChannelName>,
    socket_id: Option<String>,
}

fn is_socket_id(s: &str) -> bool {
    s.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

fn validate(
    app: &AppConfig,
    req: EventRequest,
    max_channels: usize,
) -> Result<ValidEvent, ApiError> {
    let name = req
        .name
        .ok_or_else(|| ApiError::BadRequest("Missing event name (\"name\")".into()))?;
    if name.is_empty() || name.len() > MAX_EVENT_NAME_LEN {
        return Err(ApiError::BadRequest(format!(
            "Event name must be 1-{MAX_EVENT_NAME_LEN} characters"
        )));
    }
    // Pusher's `data` is a string; SDKs encode objects themselves. Accept a
    // JSON value too and store its text, as Pusher does.
    let data = match req.data {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => {
            return Err(ApiError::BadRequest("Missing event data (\"data\")".into()))
        }
        Some(other) => other.to_string(),
    };
    if data.len() > app.limits.max_message_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "Event data is {} bytes; the limit is {} bytes",
            data.len(),
            app.limits.max_message_bytes
        )));
    }
    let names = match (req.channels, req.channel) {
        (Some(list), None) => list,
        (None, Some(one)) => vec![one],
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "Give either \"channels\" or \"channel\", not both".into(),
            ))
        }
        (None, None) => return Err(ApiError::BadRequest("Missing \"channels\"".into())),
    };
    if names.is_empty() || names.len() > max_channels {
        return Err(ApiError::BadRequest(format!(
            "An event goes to 1-{max_channels} channels; got {}",
            names.len()
        )));
    }
    let mut channels = Vec::with_capacity(names.len());
    for n in &names {
        let channel = ChannelName::parse(n)
            .map_err(|e| ApiError::BadRequest(format!("Channel {n:?}: {e}")))?;
        if channel.as_str().len() > app.limits.max_channel_name_len {
            return Err(ApiError::BadRequest(format!(
                "Channel {n:?} is longer than {} bytes",
                app.limits.max_channel_name_len
            )));
        }
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    if let Some(socket_id) = &req.socket_id {
        if !is_socket_id(socket_id) {
            return Err(ApiError::BadRequest(format!(
                "Invalid socket_id {socket_id:?}"
            )));
        }
    }
    Ok(ValidEvent {
        name,
        data,
        channels,
        socket_id: req.socket_id,
    })
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("Invalid JSON body: {e}")))
}

/// Store every event on every channel, pipelining the publishes and then
/// awaiting all acks.
async fn store(state: &AppState, app: &AppConfig, events: Vec<ValidEvent>) -> Result<(), ApiError> {
    let mut acks = Vec::new();
    for event in &events {
        for channel in &event.channels {
            let envelope = Envelope::new(
                EventKind::Trigger,
                app.id.as_str(),
                channel.as_str(),
                &event.name,
                event.data.clone(),
                None,
            );
            let ack = herald_stream::publish_envelope(
                &state.js,
                &state.subjects,
                &app.id,
                channel,
                &envelope,
                &envelope.id,
                event.socket_id.as_deref(),
            )
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
            acks.push(ack);
        }
    }
    let count = acks.len() as u64;
    for result in
        futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await
    {
        result.map_err(|e| ApiError::Internal(anyhow::anyhow!("publish ack: {e}")))?;
    }
    metrics::counter!("herald_gateway_events_published_total").increment(count);
    Ok(())
}

#[tracing::instrument(skip_all, fields(app = %app_id))]
async fn trigger(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
    Query(params): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let app = signature::verify(&state, &app_id, method.as_str(), uri.path(), &params, &body)?;
    let request: EventRequest = parse_json(&body)?;
    let event = validate(&app, request, app.limits.max_event_channels)?;
    store(&state, &app, vec![event]).await?;
    Ok(Json(json!({})))
}

#[tracing::instrument(skip_all, fields(app = %app_id))]
async fn trigger_batch(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
    Query(params): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let app = signature::verify(&state, &app_id, method.as_str(), uri.path(), &params, &body)?;
    let request: BatchRequest = parse_json(&body)?;
    if request.batch.is_empty() || request.batch.len() > app.limits.max_batch_events {
        return Err(ApiError::BadRequest(format!(
            "A batch holds 1-{} events; got {}",
            app.limits.max_batch_events,
            request.batch.len()
        )));
    }
    let events = request
        .batch
        .into_iter()
        .map(|e| validate(&app, e, 1))
        .collect::<Result<Vec<_>, _>>()?;
    store(&state, &app, events).await?;
    Ok(Json(json!({ "batch": [] })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_are_two_integers() {
        assert!(is_socket_id("123.456"));
        for bad in ["", "1", "1.", ".1", "a.1", "1.2.3"] {
            assert!(!is_socket_id(bad), "{bad}");
        }
    }
}
