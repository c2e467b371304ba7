//! Acting on a user's connections on every gateway:
//! `POST /apps/{id}/users/{user}/terminate_connections`, and Herald's
//! server-side subscriptions `POST`/`DELETE /apps/{id}/users/{user}/subscriptions`
//! with `{"channels": [...]}`.

use super::signature::Signed;
use crate::control::gather;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use herald_proto::control::{ControlReply, SubscriptionsRequest, TerminateRequest};
use herald_proto::{ChannelName, ControlVerb, UserId};
use serde::Deserialize;
use serde_json::{json, Value};

fn user_param(signed: &Signed) -> Result<UserId, ApiError> {
    let user = signed.path.get("user_id").map(String::as_str);
    UserId::parse(user.unwrap_or_default())
        .map_err(|e| ApiError::BadRequest(format!("User id: {e}")))
}

#[tracing::instrument(skip_all, fields(app = %signed.app.id))]
pub(super) async fn terminate(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let user_id = user_param(&signed)?;
    let replies: Vec<ControlReply> = gather(
        &state,
        &signed.app.id,
        ControlVerb::Terminate,
        &TerminateRequest { user_id },
    )
    .await?;
    let connections: usize = replies.iter().map(|r| r.connections).sum();
    Ok(Json(json!({ "connections": connections })))
}

#[derive(Deserialize)]
struct ChannelsBody {
    channels: Vec<String>,
}

async fn change(state: AppState, signed: Signed, subscribe: bool) -> Result<Json<Value>, ApiError> {
    let user_id = user_param(&signed)?;
    let body: ChannelsBody = serde_json::from_slice(&signed.body)
        .map_err(|e| ApiError::BadRequest(format!("Expected {{\"channels\": [...]}}: {e}")))?;
    let max = signed.app.limits.max_event_channels;
    if body.channels.is_empty() || body.channels.len() > max {
        return Err(ApiError::BadRequest(format!("Give 1-{max} channels")));
    }
    for name in &body.channels {
        ChannelName::parse(name)
            .map_err(|e| ApiError::BadRequest(format!("Channel {name:?}: {e}")))?;
    }
    let request = SubscriptionsRequest {
        user_id,
        channels: body.channels,
        subscribe,
    };
    let replies: Vec<ControlReply> =
        gather(&state, &signed.app.id, ControlVerb::Subscriptions, &request).await?;
    let connections: usize = replies.iter().map(|r| r.connections).sum();
    Ok(Json(json!({ "connections": connections })))
}

#[tracing::instrument(skip_all, fields(app = %signed.app.id))]
pub(super) async fn subscribe(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    change(state, signed, true).await
}

#[tracing::instrument(skip_all, fields(app = %signed.app.id))]
pub(super) async fn unsubscribe(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    change(state, signed, false).await
}
