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
use crate::buckets::LastSeen;
use crate::engine::Command;
use crate::error::ApiError;
use crate::AppState;
use anyhow::Context;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{StreamExt, TryStreamExt};
use herald_proto::presence::{last_seen_key, MAX_USER_ID_LEN};
use herald_proto::{now_ms, AppId, UserId};
use herald_server::auth::Caller;
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UserPresence {
    user_id: String,
    /// Any connection of the user exists (signed in or in a presence channel).
    online: bool,
    /// Ms since the epoch: now when online, when the last connection went
    /// when offline, `null` for a user never seen.
    last_seen: Option<i64>,
    /// Presence channels the user is a member of, sorted.
    channels: Vec<String>,
}

/// Body of the batch query.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct BatchRequest {
    /// At most 1,000 user ids.
    #[schema(max_items = 1000)]
    user_ids: Vec<UserIdText>,
}

/// A user id as given: 1-128 characters, any but NUL (parsed into a
/// `UserId`, whose rule the schema states).
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct UserIdText(String);

impl utoipa::PartialSchema for UserIdText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_USER_ID_LEN))
            .pattern(Some(herald_proto::USER_ID_PATTERN))
            .description(Some("A user id: 1-128 characters, any but NUL"))
            .into()
    }
}

impl utoipa::ToSchema for UserIdText {
    fn name() -> std::borrow::Cow<'static, str> {
        "UserIdText".into()
    }
}

/// Answer of the batch query.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchReply {
    /// In the order asked.
    users: Vec<UserPresence>,
}

/// A user id from the path or the body, parsed here once.
fn parse_user_id(user_id: &str) -> Result<UserId, ApiError> {
    UserId::parse(user_id).map_err(|_| {
        ApiError::BadRequest(format!(
            "user_id must be 1 to {MAX_USER_ID_LEN} characters long, without NUL"
        ))
    })
}

/// One user's presence.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/users/{user_id}/presence",
    params(
        ("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
        ("user_id" = String, Path, description = "User id: 1-128 characters, any but NUL", min_length = 1, max_length = 128, pattern = r"^[^\u0000]+$"),
    ),
    responses(
        (status = 200, description = "The user's presence", body = UserPresence),
        (status = 400, description = "Invalid user id"),
        (status = 401, description = "Missing or wrong app credentials or session token"),
        (status = 503, description = "Presence state not loaded yet"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
#[tracing::instrument(skip_all, fields(app = %app_id))]
pub(crate) async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path((app_id, user_id)): Path<(String, String)>,
) -> Result<Json<UserPresence>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let mut users = lookup(&state, &caller, vec![user_id]).await?;
    Ok(Json(users.remove(0)))
}

/// Several users' presence at once.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/users/presence",
    params(("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")),
    request_body = BatchRequest,
    responses(
        (status = 200, description = "Each user's presence, in the order asked", body = BatchReply),
        (status = 400, description = "Malformed body, invalid user id, or more than 1,000 users"),
        (status = 401, description = "Missing or wrong app credentials or session token"),
        (status = 503, description = "Presence state not loaded yet"),
    ),
    security(("app_basic" = []), ("session_bearer" = []))
)]
#[tracing::instrument(skip_all, fields(app = %app_id))]
pub(crate) async fn batch(
    State(state): State<AppState>,
    caller: Caller,
    Path(app_id): Path<String>,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Json<BatchReply>, ApiError> {
    let Json(body) = body.map_err(ApiError::from)?;
    if body.user_ids.len() > MAX_BATCH_USERS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_BATCH_USERS} user_ids per request, got {}",
            body.user_ids.len()
        )));
    }
    let user_ids = body
        .user_ids
        .iter()
        .map(|user_id| parse_user_id(&user_id.0))
        .collect::<Result<Vec<_>, _>>()?;
    let users = lookup(&state, &caller, user_ids).await?;
    Ok(Json(BatchReply { users }))
}

/// Presence from the engine, last-seen from its bucket (offline users only).
///
/// Any user of the app may see whether another is online and when they
/// were last seen (what a chat's online dot needs); a user's token sees
/// only those of the other's `channels` that the token grants or that the
/// caller is in too.
async fn lookup(
    state: &AppState,
    caller: &Caller,
    user_ids: Vec<UserId>,
) -> Result<Vec<UserPresence>, ApiError> {
    let app = caller.app().id.clone();
    let mut asked = user_ids.clone();
    let caller_id = match caller {
        Caller::App(_) => None,
        Caller::User { claims, .. } => Some(parse_user_id(&claims.sub)?),
    };
    if let Some(me) = &caller_id {
        asked.push(me.clone());
    }
    let mut presence = ask(state, |reply| Command::Users {
        app: app.clone(),
        user_ids: asked,
        reply,
    })
    .await?;
    if let (Caller::User { claims, .. }, Some(_)) = (caller, &caller_id) {
        let mine = presence.pop().map(|p| p.channels).unwrap_or_default();
        for p in &mut presence {
            p.channels
                .retain(|c| claims.grants_channel(c) || mine.binary_search(c).is_ok());
        }
    }
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
                    user_id: user_id.to_string(),
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
    user_id: &UserId,
) -> Result<Option<i64>, ApiError> {
    let value = state
        .last_seen
        .get(last_seen_key(app, user_id.as_str()))
        .await
        .context("reading last-seen")?;
    Ok(value
        .and_then(|bytes| serde_json::from_slice::<LastSeen>(&bytes).ok())
        .map(|seen| seen.at))
}
