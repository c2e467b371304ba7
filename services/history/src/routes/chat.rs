//! Writing to a channel through the REST API, and read status:
//!
//! * `POST …/channels/{channel}/messages` `{event, data, client_id}`: a
//!   message, stored in the channel stream (answered once stored, with its
//!   `id`, `seq`, `ts`; the read model follows). A retried `client_id` is
//!   stored once and answered with the original, exactly as
//!   `herald:publish` (the same de-duplication key).
//! * `PATCH …/messages/{id}` `{data}` (its author only) and
//!   `DELETE …/messages/{id}` (its author or the app): `herald:message_edited`
//!   / `herald:message_deleted` events on the channel.
//! * `POST …/channels/{channel}/read` and `…/delivered` `{seq}`: receipts,
//!   as the gateway's `herald:read` / `herald:delivered`.
//! * `GET …/messages/{id}/receipts`: which members have it delivered and read.
//!
//! Every write is an event on the channel's one subject, so live
//! subscribers get it like any stored event and a rebuild replays it.

use super::messages::{find, parse_channel, MinSeqQuery};
use super::{acting_user, may_read, positive, wait_for};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use herald_proto::envelope::{
    event_names, publish_msg_id, receipt_msg_id, to_data, MessageEdit, MessageRef, Receipt,
    MAX_CLIENT_ID_LEN,
};
use herald_proto::{ChannelName, Envelope, EventKind, EventName};
use herald_server::auth::Caller;
use herald_stream::PublishOptions;
use serde::{Deserialize, Serialize};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/apps/{app}/channels/{channel}/messages", post(send))
        .route(
            "/v1/apps/{app}/channels/{channel}/messages/{id}",
            patch(edit).delete(delete),
        )
        .route(
            "/v1/apps/{app}/channels/{channel}/messages/{id}/receipts",
            get(receipts),
        )
        .route("/v1/apps/{app}/channels/{channel}/read", post(read))
        .route(
            "/v1/apps/{app}/channels/{channel}/delivered",
            post(delivered),
        )
}

/// `?as_user=`: with app credentials, the user to act for.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActorQuery {
    /// With app credentials: the user to act for (1-128 characters, any but NUL).
    #[param(min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$")]
    as_user: Option<String>,
}

/// A message to send.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendBody {
    /// The Pusher event name (not `pusher:`, `pusher_internal:`, `herald:` or `client-`).
    #[schema(min_length = 1, max_length = 200)]
    event: String,
    /// The payload: a string (sent as is) or any other JSON value (sent as its JSON text).
    data: serde_json::Value,
    /// The idempotency key: a retry with the same one is stored once.
    #[schema(min_length = 1, max_length = 128)]
    client_id: String,
}

/// A new content for a message.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EditBody {
    /// The new payload (a string, or any other JSON value, as its JSON text).
    data: serde_json::Value,
}

/// Read or delivered up to a seq.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReceiptBody {
    /// Everything of the channel up to this stream sequence.
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    #[serde(deserialize_with = "whole_number")]
    seq: u64,
}

/// A stored event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Stored {
    /// The event's id (for a send: the message id).
    id: String,
    /// Its stream sequence.
    seq: u64,
    /// When it was accepted (ms).
    ts: i64,
}

/// Pusher's `data` is a string: a JSON string is sent as it is, any other
/// value (null included) as its JSON text.
fn data_text(data: serde_json::Value) -> Result<String, ApiError> {
    match data {
        serde_json::Value::String(s) => Ok(s),
        other => Ok(other.to_string()),
    }
}

/// A whole number, written as an integer or as a float with no fraction
/// (`7.0` is an integer to JSON Schema, and to some JSON writers).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => Ok(f as u64),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a non-negative whole number"
        ))),
    }
}

/// Store `envelope` on its channel and wait for JetStream; for a retried
/// key, answer the original's id, seq and time (`herald_stream::await_stored`).
async fn store(
    state: &AppState,
    app: &herald_proto::AppId,
    channel: &ChannelName,
    envelope: &Envelope,
    msg_id: &str,
) -> Result<Stored, ApiError> {
    let unavailable = |err: &dyn std::fmt::Display| {
        tracing::warn!(%err, %channel, "event not stored");
        ApiError::Unavailable("The event could not be stored; retry with the same key".into())
    };
    let ack = herald_stream::publish_envelope(
        &state.js,
        &state.subjects,
        app,
        channel,
        envelope,
        msg_id,
        &PublishOptions::default(),
    )
    .await
    .map_err(|e| unavailable(&e))?;
    let stored = herald_stream::await_stored(&state.js, &state.subjects, envelope, ack)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(Stored {
        id: stored.id,
        seq: stored.seq,
        ts: stored.ts,
    })
}

/// A message of the read model by id; when it is not there yet (sent a
/// moment ago, the projection not caught up), wait (bounded) for the
/// projection to reach what the stream holds now, and look again: an edit
/// or delete right after a send must not miss its message.
async fn find_fresh(
    state: &AppState,
    app: &str,
    channel: &str,
    id: &str,
) -> Result<Option<super::messages::Item>, ApiError> {
    if let Some(found) = find(state, app, channel, id).await? {
        return Ok(Some(found));
    }
    let head = super::stream_head(state).await?;
    super::wait_applied(state, head as i64).await?;
    find(state, app, channel, id).await
}

/// Send a message.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/channels/{channel}/messages",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "Channel name", min_length = 1, max_length = 164, pattern = r"^[A-Za-z0-9_\-=@,.;]+$"),
        ActorQuery,
    ),
    request_body = SendBody,
    responses(
        (status = 200, description = "Stored (or stored before, for a retried client_id)", body = Stored),
        (status = 400, description = "Invalid channel, event name, data or client_id"),
        (status = 401, description = "Missing or wrong app credentials or session token"),
        (status = 403, description = "The token's user may not write to this channel"),
        (status = 413, description = "data over the app's message size limit"),
        (status = 503, description = "Not stored; retry with the same client_id"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
#[tracing::instrument(skip_all, fields(app = %app_id, channel = %channel))]
pub(crate) async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Path((app_id, channel)): Path<(String, String)>,
    query: Result<Query<ActorQuery>, QueryRejection>,
    body: Result<Json<SendBody>, JsonRejection>,
) -> Result<Json<Stored>, ApiError> {
    let Query(query) = query?;
    let Json(body) = body?;
    let channel = parse_channel(&channel)?;
    let author = acting_user(&caller, query.as_user.as_deref())?;
    may_read(&state, &caller, &channel).await?;
    let event =
        EventName::parse(&body.event).map_err(|e| ApiError::BadRequest(format!("event: {e}")))?;
    if ["pusher:", "pusher_internal:", "herald:", "client-"]
        .iter()
        .any(|p| event.as_str().starts_with(p))
    {
        return Err(ApiError::BadRequest(
            "event names starting with pusher:, pusher_internal:, herald: or client- are reserved"
                .into(),
        ));
    }
    if body.client_id.is_empty() || body.client_id.chars().count() > MAX_CLIENT_ID_LEN {
        return Err(ApiError::BadRequest(format!(
            "client_id must be 1-{MAX_CLIENT_ID_LEN} characters"
        )));
    }
    let data = data_text(body.data)?;
    let app = caller.app();
    if data.len() > app.limits.max_message_bytes {
        return Err(ApiError::TooLarge(format!(
            "data is {} bytes; the limit is {}",
            data.len(),
            app.limits.max_message_bytes
        )));
    }
    let author = author.map(|u| u.as_str().to_owned());
    let msg_id = publish_msg_id(
        app.id.as_str(),
        channel.as_str(),
        author.as_deref(),
        &body.client_id,
    );
    let mut envelope = Envelope::new(
        EventKind::Message,
        app.id.as_str(),
        channel.as_str(),
        event.as_str(),
        data,
        author,
    );
    envelope.client_id = Some(body.client_id);
    Ok(Json(
        store(&state, &app.id, &channel, &envelope, &msg_id).await?,
    ))
}

/// Edit a message (its author only).
#[utoipa::path(
    patch,
    path = "/v1/apps/{app}/channels/{channel}/messages/{id}",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "Channel name", min_length = 1, max_length = 164, pattern = r"^[A-Za-z0-9_\-=@,.;]+$"),
        ("id" = String, Path, description = "Message id", min_length = 1, max_length = 64),
        ActorQuery,
    ),
    request_body = EditBody,
    responses(
        (status = 200, description = "The edit event, stored", body = Stored),
        (status = 400, description = "Invalid input"),
        (status = 401, description = "Missing or wrong credentials"),
        (status = 403, description = "Not the message's author"),
        (status = 404, description = "No such message (or it was deleted)"),
        (status = 503, description = "Not stored; retry"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
#[tracing::instrument(skip_all, fields(app = %app_id, channel = %channel))]
pub(crate) async fn edit(
    State(state): State<AppState>,
    caller: Caller,
    Path((app_id, channel, id)): Path<(String, String, String)>,
    query: Result<Query<ActorQuery>, QueryRejection>,
    body: Result<Json<EditBody>, JsonRejection>,
) -> Result<Json<Stored>, ApiError> {
    let Query(query) = query?;
    let Json(body) = body?;
    let channel = parse_channel(&channel)?;
    let actor = acting_user(&caller, query.as_user.as_deref())?;
    may_read(&state, &caller, &channel).await?;
    let data = data_text(body.data)?;
    let app = caller.app();
    if data.len() > app.limits.max_message_bytes {
        return Err(ApiError::TooLarge(format!(
            "data is {} bytes; the limit is {}",
            data.len(),
            app.limits.max_message_bytes
        )));
    }
    let message = find_fresh(&state, app.id.as_str(), channel.as_str(), &id)
        .await?
        .filter(|m| !m.deleted)
        .ok_or_else(|| ApiError::NotFound("no such message in this channel".into()))?;
    let Some(actor) = actor else {
        return Err(ApiError::Forbidden(
            "edits are a user's: use their session token, or name the author with as_user".into(),
        ));
    };
    if message.author.as_deref() != Some(actor.as_str()) {
        return Err(ApiError::Forbidden(
            "only a message's author edits it".into(),
        ));
    }
    let envelope = Envelope::new(
        EventKind::Edited,
        app.id.as_str(),
        channel.as_str(),
        event_names::MESSAGE_EDITED,
        to_data(&MessageEdit {
            id: id.clone(),
            data,
        }),
        Some(actor.as_str().to_owned()),
    );
    let msg_id = envelope.id.clone();
    Ok(Json(
        store(&state, &app.id, &channel, &envelope, &msg_id).await?,
    ))
}

/// Delete a message (its author, or the app).
#[utoipa::path(
    delete,
    path = "/v1/apps/{app}/channels/{channel}/messages/{id}",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "Channel name", min_length = 1, max_length = 164, pattern = r"^[A-Za-z0-9_\-=@,.;]+$"),
        ("id" = String, Path, description = "Message id", min_length = 1, max_length = 64),
        ActorQuery,
    ),
    responses(
        (status = 200, description = "The delete event, stored", body = Stored),
        (status = 400, description = "Invalid channel or as_user"),
        (status = 401, description = "Missing or wrong credentials"),
        (status = 403, description = "Neither the message's author nor the app"),
        (status = 404, description = "No such message (or already deleted)"),
        (status = 503, description = "Not stored; retry"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
#[tracing::instrument(skip_all, fields(app = %app_id, channel = %channel))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((app_id, channel, id)): Path<(String, String, String)>,
    query: Result<Query<ActorQuery>, QueryRejection>,
) -> Result<Json<Stored>, ApiError> {
    let Query(query) = query?;
    let channel = parse_channel(&channel)?;
    let actor = acting_user(&caller, query.as_user.as_deref())?;
    may_read(&state, &caller, &channel).await?;
    let app = caller.app();
    let message = find_fresh(&state, app.id.as_str(), channel.as_str(), &id)
        .await?
        .filter(|m| !m.deleted)
        .ok_or_else(|| ApiError::NotFound("no such message in this channel".into()))?;
    // The app deletes anything (no author on the event); a user their own.
    if let Some(actor) = &actor {
        if message.author.as_deref() != Some(actor.as_str()) {
            return Err(ApiError::Forbidden(
                "only a message's author or the app deletes it".into(),
            ));
        }
    }
    let envelope = Envelope::new(
        EventKind::Deleted,
        app.id.as_str(),
        channel.as_str(),
        event_names::MESSAGE_DELETED,
        to_data(&MessageRef { id: id.clone() }),
        actor.map(|a| a.as_str().to_owned()),
    );
    let msg_id = envelope.id.clone();
    Ok(Json(
        store(&state, &app.id, &channel, &envelope, &msg_id).await?,
    ))
}

async fn receipt(
    state: AppState,
    caller: Caller,
    channel: String,
    as_user: Option<String>,
    body: Result<Json<ReceiptBody>, JsonRejection>,
    kind: EventKind,
) -> Result<Json<Stored>, ApiError> {
    let Json(body) = body?;
    let channel = parse_channel(&channel)?;
    if body.seq == 0 || body.seq > i64::MAX as u64 {
        return Err(ApiError::BadRequest(format!("seq must be 1-{}", i64::MAX)));
    }
    let user = super::required_user(&caller, as_user.as_deref(), "receipts")?;
    may_read(&state, &caller, &channel).await?;
    let app = caller.app();
    let event = match kind {
        EventKind::Read => event_names::READ,
        _ => event_names::DELIVERED,
    };
    let msg_id = receipt_msg_id(
        app.id.as_str(),
        channel.as_str(),
        user.as_str(),
        kind,
        body.seq,
    );
    let envelope = Envelope::new(
        kind,
        app.id.as_str(),
        channel.as_str(),
        event,
        to_data(&Receipt {
            user_id: user.as_str().to_owned(),
            seq: body.seq,
        }),
        Some(user.as_str().to_owned()),
    );
    Ok(Json(
        store(&state, &app.id, &channel, &envelope, &msg_id).await?,
    ))
}

/// Mark the channel read up to a seq.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/channels/{channel}/read",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "Channel name", min_length = 1, max_length = 164, pattern = r"^[A-Za-z0-9_\-=@,.;]+$"),
        ActorQuery,
    ),
    request_body = ReceiptBody,
    responses(
        (status = 200, description = "The receipt, stored", body = Stored),
        (status = 400, description = "Invalid channel, seq or as_user"),
        (status = 401, description = "Missing or wrong credentials"),
        (status = 403, description = "The token's user may not read this channel, or app credentials without as_user"),
        (status = 503, description = "Not stored; retry"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
pub(crate) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((_app, channel)): Path<(String, String)>,
    query: Result<Query<ActorQuery>, QueryRejection>,
    body: Result<Json<ReceiptBody>, JsonRejection>,
) -> Result<Json<Stored>, ApiError> {
    let Query(query) = query?;
    receipt(state, caller, channel, query.as_user, body, EventKind::Read).await
}

/// Mark the channel delivered up to a seq.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/channels/{channel}/delivered",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "Channel name", min_length = 1, max_length = 164, pattern = r"^[A-Za-z0-9_\-=@,.;]+$"),
        ActorQuery,
    ),
    request_body = ReceiptBody,
    responses(
        (status = 200, description = "The receipt, stored", body = Stored),
        (status = 400, description = "Invalid channel, seq or as_user"),
        (status = 401, description = "Missing or wrong credentials"),
        (status = 403, description = "The token's user may not read this channel, or app credentials without as_user"),
        (status = 503, description = "Not stored; retry"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
pub(crate) async fn delivered(
    State(state): State<AppState>,
    caller: Caller,
    Path((_app, channel)): Path<(String, String)>,
    query: Result<Query<ActorQuery>, QueryRejection>,
    body: Result<Json<ReceiptBody>, JsonRejection>,
) -> Result<Json<Stored>, ApiError> {
    let Query(query) = query?;
    receipt(
        state,
        caller,
        channel,
        query.as_user,
        body,
        EventKind::Delivered,
    )
    .await
}

/// One member's status for a message.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct MemberReceipt {
    user_id: String,
    delivered: bool,
    read: bool,
}

/// Who has a message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Receipts {
    /// The message's seq.
    seq: i64,
    /// The channel's members (the author excluded), by user id.
    members: Vec<MemberReceipt>,
}

/// Which members have a message delivered and read.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/channels/{channel}/messages/{id}/receipts",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "Channel name", min_length = 1, max_length = 164, pattern = r"^[A-Za-z0-9_\-=@,.;]+$"),
        ("id" = String, Path, description = "Message id", min_length = 1, max_length = 64),
        MinSeqQuery,
    ),
    responses(
        (status = 200, description = "Each member's status", body = Receipts),
        (status = 400, description = "Invalid channel or min_seq"),
        (status = 401, description = "Missing or wrong credentials"),
        (status = 403, description = "The token's user may not read this channel"),
        (status = 404, description = "No such message"),
        (status = 503, description = "min_seq not reached within the read wait"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
pub(crate) async fn receipts(
    State(state): State<AppState>,
    caller: Caller,
    Path((_app, channel, id)): Path<(String, String, String)>,
    query: Result<Query<MinSeqQuery>, QueryRejection>,
) -> Result<Json<Receipts>, ApiError> {
    let Query(query) = query?;
    let channel = parse_channel(&channel)?;
    may_read(&state, &caller, &channel).await?;
    wait_for(&state, positive("min_seq", query.min_seq.as_deref())?).await?;
    let app = caller.app();
    let message = find(&state, app.id.as_str(), channel.as_str(), &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such message in this channel".into()))?;
    let members: Vec<MemberReceipt> = sqlx::query_as(
        "SELECT m.user_id,
                COALESCE(c.delivered_seq, 0) >= $3 AS delivered,
                COALESCE(c.read_seq, 0) >= $3 AS read
         FROM channel_members m
         LEFT JOIN read_cursors c
           ON c.app_id = m.app_id AND c.channel = m.channel AND c.user_id = m.user_id
         WHERE m.app_id = $1 AND m.channel = $2 AND m.user_id IS DISTINCT FROM $4
         ORDER BY m.user_id LIMIT 10000",
    )
    .bind(app.id.as_str())
    .bind(channel.as_str())
    .bind(message.seq)
    .bind(message.author.as_deref())
    .fetch_all(&state.db)
    .await?;
    Ok(Json(Receipts {
        seq: message.seq,
        members,
    }))
}
