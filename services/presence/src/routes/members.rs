//! `GET /v1/apps/{app}/channels/{channel}/members`: the members of a
//! presence channel, `{"members": [{"user_id", "user_info"}], "count"}`,
//! sorted by user id.

use super::ask;
use crate::engine::Command;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use herald_proto::{ChannelKind, ChannelName};
use herald_server::auth::Caller;
use serde::Serialize;
use serde_json::Value;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/apps/{app}/channels/{channel}/members", get(members))
}

/// One member.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Member {
    user_id: String,
    /// The `user_info` of the member's oldest connection in the channel.
    user_info: Value,
}

/// A presence channel's member list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Members {
    /// Sorted by user id.
    members: Vec<Member>,
    count: usize,
}

/// The members of a presence channel.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/channels/{channel}/members",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("channel" = String, Path, description = "Presence channel name (presence-*)", min_length = 9, max_length = 164, pattern = r"^presence-[A-Za-z0-9_\-=@,.;]*$"),
    ),
    responses(
        (status = 200, description = "The channel's members", body = Members),
        (status = 400, description = "Invalid or non-presence channel name"),
        (status = 401, description = "Missing or wrong app credentials or session token"),
        (status = 403, description = "The token's user is neither granted the channel nor in it"),
        (status = 503, description = "Presence state not loaded yet"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
#[tracing::instrument(skip_all, fields(app = %app_id, channel = %channel))]
pub(crate) async fn members(
    State(state): State<AppState>,
    caller: Caller,
    Path((app_id, channel)): Path<(String, String)>,
) -> Result<Json<Members>, ApiError> {
    let app = caller.app().clone();
    let channel =
        ChannelName::parse(&channel).map_err(|e| ApiError::BadRequest(format!("Channel: {e}")))?;
    if channel.kind() != ChannelKind::Presence {
        return Err(ApiError::BadRequest(
            "only presence channels (presence-*) have members".into(),
        ));
    }
    let granted = match &caller {
        Caller::App(_) => true,
        Caller::User { claims, .. } => claims.grants_channel(channel.as_str()),
    };
    let app = app.id.clone();
    let members = ask(&state, |reply| Command::Members {
        app,
        channel,
        reply,
    })
    .await?;
    // A user sees a channel's members if granted the channel, or while in
    // it themselves (as the channel's own member list shows them).
    if let Some(user) = caller.user().filter(|_| !granted) {
        if !members.iter().any(|(id, _)| id == user) {
            return Err(ApiError::Forbidden(
                "This session token's user is neither granted this channel nor in it".into(),
            ));
        }
    }
    let members: Vec<Member> = members
        .into_iter()
        .map(|(user_id, user_info)| Member { user_id, user_info })
        .collect();
    Ok(Json(Members {
        count: members.len(),
        members,
    }))
}
