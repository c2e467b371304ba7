//! Channel and user authorization for pusher-js, and JWT channel tokens.
//!
//! * `POST /pusher/auth` — pusher-js `channelAuthorization`: form (or JSON)
//!   `socket_id`, `channel_name`; answers `{auth}` (plus `channel_data` on
//!   presence channels), the HMAC the gateway checks.
//! * `POST /pusher/user-auth` — pusher-js `userAuthentication`: `socket_id`;
//!   answers `{auth, user_data}` for `pusher:signin`.
//! * `POST /v1/apps/{app}/channel-tokens` — the same check, answered with a
//!   short-lived EdDSA channel token instead of an HMAC.
//!
//! Every one needs the user's session token as `Authorization: Bearer`.
//! Its first use binds it to the socket it names (single use, see
//! `herald_stream::TokenBindings`); later uses for the same socket are
//! fine, any other socket is refused.
//!
//! A channel is allowed by a grant in the token or by membership (rooms,
//! DMs, channels the app manages). Room and DM channels are the members'
//! own: a wildcard grant (`private-*`) does not reach them, only a grant
//! naming the channel exactly does.

use crate::error::ApiError;
use crate::session::bearer_session;
use crate::users::User;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::routing::post;
use axum::{Json, Router};
use herald_config::AppConfig;
use herald_proto::token::{is_membership_channel, ChannelClaims, SessionClaims, TokenKind};
use herald_proto::{AppId, ChannelKind, ChannelName, SocketId, UserId};
use herald_stream::BindOutcome;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The message of a session token presented for a second socket.
pub const BOUND_ELSEWHERE: &str =
    "this session token is bound to another connection; ask your backend for a new token";

/// Longest life of a channel token, seconds (shorter if the session token
/// expires sooner).
pub const CHANNEL_TOKEN_LIFE_SECS: u64 = 300;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/pusher/auth", post(pusher_auth))
        .route("/pusher/user-auth", post(user_auth))
        .route("/v1/apps/{app}/channel-tokens", post(channel_token))
}

/// A pusher-js request body: `application/x-www-form-urlencoded` (what
/// pusher-js sends) or `application/json`. Unknown fields are ignored:
/// pusher-js adds the app's own `params`.
fn parse_body<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if json {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    } else {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid form body: {e}")))
    }
}

fn parse_socket(raw: &str) -> Result<SocketId, ApiError> {
    SocketId::parse(raw).map_err(|e| ApiError::BadRequest(format!("socket_id: {e}")))
}

fn parse_channel(field: &str, raw: &str) -> Result<ChannelName, ApiError> {
    let channel =
        ChannelName::parse(raw).map_err(|e| ApiError::BadRequest(format!("{field}: {e}")))?;
    match channel.kind() {
        ChannelKind::Private | ChannelKind::Presence => Ok(channel),
        ChannelKind::Public => Err(ApiError::BadRequest(format!(
            "{field}: public channels need no authorization"
        ))),
        ChannelKind::PrivateEncrypted => Err(ApiError::BadRequest(format!(
            "{field}: private-encrypted channels are not supported here (they need the app's \
             encryption master key)"
        ))),
    }
}

fn app_id(app: &AppConfig) -> AppId {
    app.id.clone()
}

/// Whether the user of `claims` may subscribe to `channel`.
pub(crate) async fn allowed(
    state: &AppState,
    claims: &SessionClaims,
    channel: &ChannelName,
) -> Result<bool, ApiError> {
    let granted = if is_membership_channel(channel.as_str()) {
        claims.grants.iter().any(|g| g == channel.as_str())
    } else {
        claims.grants_channel(channel.as_str())
    };
    if granted {
        return Ok(true);
    }
    crate::membership::is_member(state, &claims.app, channel.as_str(), &claims.sub).await
}

async fn require_allowed(
    state: &AppState,
    claims: &SessionClaims,
    channel: &ChannelName,
) -> Result<(), ApiError> {
    if allowed(state, claims, channel).await? {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "user {:?} may not subscribe to {channel}: no grant of the session token allows it and \
         the user is not a member",
        claims.sub
    )))
}

/// The registered user of a token.
async fn registered(state: &AppState, claims: &SessionClaims) -> Result<User, ApiError> {
    let id = UserId::parse(&claims.sub)
        .map_err(|_| ApiError::Forbidden("the session token names an invalid user id".into()))?;
    crate::users::find_user(state, &claims.app, &id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "user {:?} is not registered in this app: register it first",
                claims.sub
            ))
        })
}

/// Bind the token to `socket`, the last step before answering.
async fn bind(
    state: &AppState,
    app: &AppId,
    claims: &SessionClaims,
    socket: &SocketId,
) -> Result<(), ApiError> {
    let outcome = state
        .bindings
        .bind(app, &claims.jti, socket.as_str())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "token binding failed");
            ApiError::Unavailable("could not record the token's use; retry".into())
        })?;
    match outcome {
        BindOutcome::Bound | BindOutcome::AlreadyThisSocket => Ok(()),
        BindOutcome::OtherSocket => Err(ApiError::Forbidden(BOUND_ELSEWHERE.into())),
    }
}

/// The body of `POST /pusher/auth`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct PusherAuthBody {
    /// The connection's socket id: two integers joined by a dot, at most 41 bytes.
    #[schema(max_length = 41, pattern = r"^[0-9]+\.[0-9]+$")]
    socket_id: String,
    /// A `private-` or `presence-` channel, 1-164 characters of `[A-Za-z0-9_\-=@,.;]`.
    #[schema(min_length = 1, max_length = 164)]
    channel_name: String,
}

/// The answer of `POST /pusher/auth`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PusherAuthAnswer {
    /// `app_key:hex(HMAC-SHA256(secret, socket_id:channel[:channel_data]))`.
    auth: String,
    /// Presence channels only: `{"user_id", "user_info": {"name", "avatar_url"}}` as a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    channel_data: Option<String>,
}

/// Authorize a private or presence channel for pusher-js.
#[utoipa::path(
    post,
    path = "/pusher/auth",
    request_body(content = PusherAuthBody, content_type = "application/x-www-form-urlencoded", description = "Also accepted as application/json"),
    responses(
        (status = 200, description = "The channel auth string (and channel_data on presence channels)", body = PusherAuthAnswer),
        (status = 400, description = "Invalid socket id or channel name, or a public channel"),
        (status = 401, description = "Missing or invalid session token"),
        (status = 403, description = "No grant or membership allows the channel, or the token is bound to another socket"),
        (status = 404, description = "Presence channel for a user that is not registered"),
        (status = 503, description = "The token's use could not be recorded"),
    ),
    security(("session_bearer" = []))
)]
pub(crate) async fn pusher_auth(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PusherAuthAnswer>, ApiError> {
    let (app, claims) = bearer_session(&state, &headers, None).await?;
    let body: PusherAuthBody = parse_body(&headers, &body)?;
    let socket = parse_socket(&body.socket_id)?;
    let channel = parse_channel("channel_name", &body.channel_name)?;
    require_allowed(&state, &claims, &channel).await?;
    let channel_data = if channel.kind() == ChannelKind::Presence {
        let user = registered(&state, &claims).await?;
        Some(serde_json::json!({"user_id": claims.sub, "user_info": user.user_info()}).to_string())
    } else {
        None
    };
    bind(&state, &app_id(&app), &claims, &socket).await?;
    let auth = herald_proto::pusher::channel_auth(
        &app.key,
        &app.secret,
        socket.as_str(),
        channel.as_str(),
        channel_data.as_deref(),
    );
    Ok(Json(PusherAuthAnswer { auth, channel_data }))
}

/// The body of `POST /pusher/user-auth`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct UserAuthBody {
    /// The connection's socket id: two integers joined by a dot, at most 41 bytes.
    #[schema(max_length = 41, pattern = r"^[0-9]+\.[0-9]+$")]
    socket_id: String,
}

/// The answer of `POST /pusher/user-auth`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UserAuthAnswer {
    /// `app_key:hex(HMAC-SHA256(secret, socket_id::user::user_data))`.
    auth: String,
    /// `{"id", "user_info": {"name", "avatar_url"}}` as a string.
    user_data: String,
}

/// Sign a user in (`pusher:signin`) for pusher-js.
#[utoipa::path(
    post,
    path = "/pusher/user-auth",
    request_body(content = UserAuthBody, content_type = "application/x-www-form-urlencoded", description = "Also accepted as application/json"),
    responses(
        (status = 200, description = "The sign-in auth string and user data", body = UserAuthAnswer),
        (status = 400, description = "Invalid socket id"),
        (status = 401, description = "Missing or invalid session token"),
        (status = 403, description = "The token is bound to another socket"),
        (status = 404, description = "The user is not registered"),
        (status = 503, description = "The token's use could not be recorded"),
    ),
    security(("session_bearer" = []))
)]
pub(crate) async fn user_auth(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<UserAuthAnswer>, ApiError> {
    let (app, claims) = bearer_session(&state, &headers, None).await?;
    let body: UserAuthBody = parse_body(&headers, &body)?;
    let socket = parse_socket(&body.socket_id)?;
    let user = registered(&state, &claims).await?;
    let user_data =
        serde_json::json!({"id": claims.sub, "user_info": user.user_info()}).to_string();
    bind(&state, &app_id(&app), &claims, &socket).await?;
    let signature = herald_proto::pusher::user_signature(&app.secret, socket.as_str(), &user_data);
    Ok(Json(UserAuthAnswer {
        auth: format!("{}:{signature}", app.key),
        user_data,
    }))
}

/// The body of `POST /v1/apps/{app}/channel-tokens`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelTokenRequest {
    /// The connection's socket id: two integers joined by a dot, at most 41 bytes.
    #[schema(max_length = 41, pattern = r"^[0-9]+\.[0-9]+$")]
    socket_id: String,
    /// A `private-` or `presence-` channel, 1-164 characters of `[A-Za-z0-9_\-=@,.;]`.
    #[schema(min_length = 1, max_length = 164)]
    channel: String,
}

/// An issued channel token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ChannelTokenAnswer {
    /// The JWT (EdDSA, header `kid`, `kind: channel`), for `pusher:subscribe`'s `token`.
    token: String,
    /// Unix seconds: 300 s from now, or the session token's expiry if sooner.
    expires_at: u64,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Issue a channel token: one user, one channel, one socket.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/channel-tokens",
    params(("app" = String, Path, description = "App id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")),
    request_body = ChannelTokenRequest,
    responses(
        (status = 200, description = "The channel token", body = ChannelTokenAnswer),
        (status = 400, description = "Invalid socket id or channel, or a public channel"),
        (status = 401, description = "Missing or invalid session token, or one of another app"),
        (status = 403, description = "No grant or membership allows the channel, or the token is bound to another socket"),
        (status = 404, description = "Presence channel for a user that is not registered"),
        (status = 503, description = "The token's use could not be recorded"),
    ),
    security(("session_bearer" = []))
)]
pub(crate) async fn channel_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app_path): Path<String>,
    body: Result<Json<ChannelTokenRequest>, JsonRejection>,
) -> Result<Json<ChannelTokenAnswer>, ApiError> {
    let (app, claims) = bearer_session(&state, &headers, Some(&app_path)).await?;
    let Json(body) = body?;
    let socket = parse_socket(&body.socket_id)?;
    let channel = parse_channel("channel", &body.channel)?;
    require_allowed(&state, &claims, &channel).await?;
    let user_info = if channel.kind() == ChannelKind::Presence {
        Some(registered(&state, &claims).await?.user_info())
    } else {
        None
    };
    bind(&state, &app_id(&app), &claims, &socket).await?;
    let key = crate::keys::current(&state.db).await?;
    let now = now_secs();
    let channel_claims = ChannelClaims {
        sub: claims.sub.clone(),
        app: claims.app.clone(),
        exp: (now + CHANNEL_TOKEN_LIFE_SECS).min(claims.exp),
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        kind: TokenKind::Channel,
        channel: channel.as_str().to_owned(),
        socket_id: socket.as_str().to_owned(),
        user_info,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    let token = jsonwebtoken::encode(&header, &channel_claims, &key.encoding_key())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("signing: {e}")))?;
    Ok(Json(ChannelTokenAnswer {
        token,
        expires_at: channel_claims.exp,
    }))
}
