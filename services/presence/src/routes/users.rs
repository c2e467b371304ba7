//! A user's presence: whether they are online (any connection, signed in or
//! in a presence channel, on any gateway), when they were last seen, and the
//! presence channels they are in.
//!
//! * `GET /v1/apps/{app}/users/{user_id}/presence` → one user;
//! * `POST /v1/apps/{app}/users/presence` with `{"user_ids": [...]}` (at most
//!   1,000) → `{"users": [...]}` in the order asked.
//!
//! Each user is `{"user_id", "online", "last_seen", "channels"}`:
//! `last_seen` is now (ms since the epoch) for an online user, the time
//! their last connection went for an offline one, and `null` for a user
//! never seen.

use super::ask;
use super::auth::authorize_app;
use crate::buckets::{last_seen_key, LastSeen};
use crate::engine::Command;
use crate::error::ApiError;
use crate::state::valid_user_id;
use crate::AppState;
use anyhow::Context;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{StreamExt, TryStreamExt};
use herald_proto::presence::MAX_USER_ID_LEN;
use herald_proto::{now_ms, AppId};
use serde::{Deserialize, Serialize};

/// Most users in one batch query.
pub const MAX_BATCH_USERS: usize = 1000;

/// Last-seen reads in flight at once for a batch.
const READS_IN_FLIGHT: usize = 32;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/apps/{app}/users/{user_id}/presence", get(one))
        .route("/v1/apps/{app}/users/presence", post(batch))
}

/// One user's presence.
#[derive(Debug, Serialize)]
struct UserPresence {
    user_id: String,
    online: bool,
    last_seen: Option<i64>,
    channels: Vec<String>,
}

/// Body of the batch query.
#[derive(Debug, Deserialize)]
struct BatchRequest {
    user_ids: Vec<String>,
}

/// Answer of the batch query.
#[derive(Debug, Serialize)]
struct BatchReply {
    users: Vec<UserPresence>,
}

fn check_user_id(user_id: &str) -> Result<(), ApiError> {
    if valid_user_id(user_id) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "user_id must be 1 to {MAX_USER_ID_LEN} bytes long"
        )))
    }
}

#[tracing::instrument(skip_all, fields(app = %app_id))]
async fn one(
    State(state): State<AppState>,
    Path((app_id, user_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<UserPresence>, ApiError> {
    let app = authorize_app(&state, &headers, &app_id)?;
    check_user_id(&user_id)?;
    let mut users = lookup(&state, app.id.clone(), vec![user_id]).await?;
    Ok(Json(users.remove(0)))
}

#[tracing::instrument(skip_all, fields(app = %app_id))]
async fn batch(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Json<BatchReply>, ApiError> {
    let app = authorize_app(&state, &headers, &app_id)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if body.user_ids.len() > MAX_BATCH_USERS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_BATCH_USERS} user_ids per request, got {}",
            body.user_ids.len()
        )));
    }
    for user_id in &body.user_ids {
        check_user_id(user_id)?;
    }
    let users = lookup(&state, app.id.clone(), body.user_ids).await?;
    Ok(Json(BatchReply { users }))
}

/// Presence from the engine, last-seen from its bucket (offline users only).
async fn lookup(
    state: &AppState,
    app: AppId,
    user_ids: Vec<String>,
) -> Result<Vec<UserPresence>, ApiError> {
    let presence = ask(state, |reply| Command::Users {
        app: app.clone(),
        user_ids: user_ids.clone(),
        reply,
    })
    .await?;
    let now = now_ms();
    let users = futures::stream::iter(user_ids.into_iter().zip(presence))
        .map(|(user_id, presence)| {
            let app = &app;
            async move {
                let last_seen = if presence.online {
                    Some(now)
                } else {
                    read_last_seen(state, app, &user_id).await?
                };
                Ok::<_, ApiError>(UserPresence {
                    user_id,
                    online: presence.online,
                    last_seen,
                    channels: presence.channels,
                })
            }
        })
        .buffered(READS_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(users)
}

async fn read_last_seen(
    state: &AppState,
    app: &AppId,
    user_id: &str,
) -> Result<Option<i64>, ApiError> {
    let value = state
        .last_seen
        .get(last_seen_key(app, user_id))
        .await
        .context("reading last-seen")?;
    Ok(value
        .and_then(|bytes| serde_json::from_slice::<LastSeen>(&bytes).ok())
        .map(|seen| seen.at))
}
