//! Publishing: `POST /apps/{id}/events` and `POST /apps/{id}/batch_events`.
//!
//! Every event is appended to its channel's subject in the `CHANNELS` stream;
//! the acks of all the channels of a request are awaited together (pipelined,
//! never one by one), and only then does the API answer, so a 200 means the
//! event is durably stored. Events to `#server-to-user-<id>` (Pusher's
//! "send to user") are not stored: they go to the user's connections over
//! core NATS.

use super::channels::{attributes_for, parse_info, Info};
use super::signature::Signed;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use herald_config::AppConfig;
use herald_proto::channel::server_to_user;
use herald_proto::control::UserEvent;
use herald_proto::{ChannelName, Envelope, EventKind, EventName, SocketId, UserId};
use herald_stream::PublishOptions;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// One event in a publish request.
#[derive(Debug, Deserialize)]
struct EventRequest {
    name: Option<String>,
    data: Option<Value>,
    channels: Option<Vec<String>>,
    channel: Option<String>,
    socket_id: Option<String>,
    info: Option<String>,
    /// Herald extension: deliver the event once to a connection subscribed
    /// to several of the channels.
    #[serde(default)]
    deduplicate: bool,
    /// Herald extension (the name Sockudo and Centrifugo use): a retry with
    /// the same key inside the stream's duplicate window stores nothing new
    /// on any channel and answers as the first request did.
    idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BatchRequest {
    batch: Vec<EventRequest>,
}

/// Where an event goes.
enum Target {
    Channel(ChannelName),
    User(UserId),
}

/// An event that passed validation, ready to store.
struct ValidEvent {
    name: EventName,
    data: String,
    targets: Vec<Target>,
    socket_id: Option<SocketId>,
    info: Info,
    deduplicate: bool,
    idempotency_key: Option<String>,
}

/// Longest `idempotency_key`, in characters.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// The `Nats-Msg-Id` of one channel's copy of an event published with an
/// idempotency key: per channel, so a retried multi-channel publish stores
/// each channel's copy once.
fn idempotent_msg_id(app: &str, channel: &str, key: &str) -> String {
    herald_proto::envelope::derived_msg_id(&["http", app, channel, key])
}

fn parse_target(app: &AppConfig, name: &str) -> Result<Target, ApiError> {
    if let Some(user) = server_to_user(name) {
        let user = UserId::parse(user)
            .map_err(|e| ApiError::BadRequest(format!("User id in {name:?}: {e}")))?;
        return Ok(Target::User(user));
    }
    let channel = ChannelName::parse(name)
        .map_err(|e| ApiError::BadRequest(format!("Channel {name:?}: {e}")))?;
    if channel.as_str().len() > app.limits.max_channel_name_len {
        return Err(ApiError::BadRequest(format!(
            "Channel {name:?} is longer than {} bytes",
            app.limits.max_channel_name_len
        )));
    }
    Ok(Target::Channel(channel))
}

fn validate(
    app: &AppConfig,
    req: EventRequest,
    max_channels: usize,
) -> Result<ValidEvent, ApiError> {
    let name = req
        .name
        .ok_or_else(|| ApiError::BadRequest("Missing event name (\"name\")".into()))?;
    let name = EventName::parse(&name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // Pusher's `data` is a string; SDKs encode objects themselves. Accept a
    // JSON value too and store its text.
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
    let mut targets: Vec<Target> = Vec::with_capacity(names.len());
    let mut seen = std::collections::HashSet::new();
    for n in &names {
        if seen.insert(n.as_str()) {
            targets.push(parse_target(app, n)?);
        }
    }
    let idempotency_key = match req.idempotency_key {
        Some(key) if key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY_LEN => {
            return Err(ApiError::BadRequest(format!(
                "idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} characters"
            )))
        }
        key => key,
    };
    let socket_id = req
        .socket_id
        .as_deref()
        .map(SocketId::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(ValidEvent {
        name,
        data,
        targets,
        socket_id,
        info: parse_info(req.info.as_deref())?,
        deduplicate: req.deduplicate,
        idempotency_key,
    })
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("Invalid JSON body: {e}")))
}

/// NATS cannot take the request: 503, retryable. Events of the request
/// may have been stored, none is reported as stored.
fn unavailable(err: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(%err, "events not stored");
    ApiError::Unavailable("Events could not be stored now (NATS is unavailable); retry".into())
}

/// Store every event on every channel (see [`publish_all`]), within
/// [`herald_stream::STORE_TIMEOUT`]; answer 503 at once while NATS is disconnected rather
/// than buffer publishes that may never be stored.
async fn store(state: &AppState, app: &AppConfig, events: &[ValidEvent]) -> Result<(), ApiError> {
    if state.nats.connection_state() != async_nats::connection::State::Connected {
        return Err(unavailable(&"not connected to NATS"));
    }
    tokio::time::timeout(
        herald_stream::STORE_TIMEOUT,
        publish_all(state, app, events),
    )
    .await
    .map_err(|_| unavailable(&"no acknowledgement in time"))?
}

/// Publish every event on every channel, pipelining the publishes and then
/// awaiting all acks; send user events over core NATS.
async fn publish_all(
    state: &AppState,
    app: &AppConfig,
    events: &[ValidEvent],
) -> Result<(), ApiError> {
    let mut acks = Vec::new();
    for event in events {
        let group = (event.deduplicate && event.targets.len() > 1)
            .then(|| uuid::Uuid::now_v7().to_string());
        let options = PublishOptions {
            exclude_socket: event.socket_id.as_ref().map(SocketId::as_str),
            dedupe_group: group.as_deref(),
        };
        for target in &event.targets {
            match target {
                Target::Channel(channel) => {
                    let envelope = Envelope::new(
                        EventKind::Trigger,
                        app.id.as_str(),
                        channel.as_str(),
                        event.name.as_str(),
                        event.data.clone(),
                        None,
                    );
                    let ack = herald_stream::publish_envelope(
                        &state.js,
                        &state.subjects,
                        &app.id,
                        channel,
                        &envelope,
                        event
                            .idempotency_key
                            .as_deref()
                            .map(|key| idempotent_msg_id(app.id.as_str(), channel.as_str(), key))
                            .as_deref()
                            .unwrap_or(&envelope.id),
                        &options,
                    )
                    .await
                    .map_err(|e| unavailable(&e))?;
                    acks.push(ack);
                }
                Target::User(user) => {
                    let payload = serde_json::to_vec(&UserEvent {
                        event: event.name.as_str().to_owned(),
                        data: event.data.clone(),
                    })
                    .map_err(|e| ApiError::Internal(e.into()))?;
                    state
                        .nats
                        .publish(
                            state.subjects.user_events(&app.id, user.as_str()),
                            payload.into(),
                        )
                        .await
                        .map_err(|e| unavailable(&e))?;
                }
            }
        }
    }
    let count = acks.len() as u64;
    for result in
        futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await
    {
        result.map_err(|e| unavailable(&e))?;
    }
    metrics::counter!("herald_gateway_events_published_total").increment(count);
    Ok(())
}

/// The `channels` attributes an event asked for with `info`.
async fn event_info(
    state: &AppState,
    app: &AppConfig,
    event: &ValidEvent,
) -> Result<Map<String, Value>, ApiError> {
    let mut channels = Map::new();
    for target in &event.targets {
        if let Target::Channel(channel) = target {
            channels.insert(
                channel.to_string(),
                attributes_for(state, app, channel, event.info).await?,
            );
        }
    }
    Ok(channels)
}

#[tracing::instrument(skip_all, fields(app = %signed.app.id))]
pub(super) async fn trigger(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let request: EventRequest = parse_json(&signed.body)?;
    let event = validate(&signed.app, request, signed.app.limits.max_event_channels)?;
    store(&state, &signed.app, std::slice::from_ref(&event)).await?;
    if event.info.any() {
        let channels = event_info(&state, &signed.app, &event).await?;
        return Ok(Json(json!({ "channels": channels })));
    }
    Ok(Json(json!({})))
}

#[tracing::instrument(skip_all, fields(app = %signed.app.id))]
pub(super) async fn trigger_batch(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let app = &signed.app;
    let request: BatchRequest = parse_json(&signed.body)?;
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
        .map(|e| validate(app, e, 1))
        .collect::<Result<Vec<_>, _>>()?;
    store(&state, app, &events).await?;
    if events.iter().any(|e| e.info.any()) {
        let mut batch = Vec::with_capacity(events.len());
        for event in &events {
            let channels = event_info(&state, app, event).await?;
            // One channel per batch event: its attributes, or {}.
            batch.push(
                channels
                    .into_iter()
                    .next()
                    .map(|(_, v)| v)
                    .unwrap_or_else(|| json!({})),
            );
        }
        return Ok(Json(json!({ "batch": batch })));
    }
    Ok(Json(json!({})))
}
