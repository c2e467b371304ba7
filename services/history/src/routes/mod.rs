//! REST routes of the history service, under `/v1`, and their OpenAPI
//! document at `/v1/openapi.json`.

mod chat;
mod inbox;
mod messages;

use crate::AppState;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The history service's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Herald history", description = "Chat read models projected from the channel stream: paginated history, send / edit / delete, receipts, unread counts and the inbox."),
    paths(messages::list, messages::one, chat::send, chat::edit, chat::delete, chat::read, chat::delivered, chat::receipts, inbox::inbox),
    components(schemas(messages::Page, messages::Item, chat::SendBody, chat::EditBody, chat::ReceiptBody, chat::Stored, chat::Receipts, chat::MemberReceipt, inbox::Inbox, inbox::InboxEntry, inbox::Preview)),
    modifiers(&BasicAuth)
)]
pub struct ApiDoc;

struct BasicAuth;

impl Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "app_basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        components.add_security_scheme(
            "session_bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The user a call acts as: a token's user (who may not name another in
/// `as_user`), or the user the app names in `as_user` (`None`: the app
/// itself).
pub(crate) fn acting_user(
    caller: &herald_server::auth::Caller,
    as_user: Option<&str>,
) -> Result<Option<herald_proto::UserId>, crate::ApiError> {
    use herald_server::auth::Caller;
    let parse = |id: &str| {
        herald_proto::UserId::parse(id)
            .map_err(|e| crate::ApiError::BadRequest(format!("as_user: {e}")))
    };
    match caller {
        Caller::User { claims, .. } => {
            if as_user.is_some_and(|u| u != claims.sub) {
                return Err(crate::ApiError::Forbidden(
                    "a session token acts as its own user only (as_user is for app credentials)"
                        .into(),
                ));
            }
            parse(&claims.sub).map(Some)
        }
        Caller::App(_) => as_user.map(parse).transpose(),
    }
}

/// The acting user of a call that needs one (a receipt, an edit): app
/// credentials must name one with `as_user`; the app itself is no user
/// (403, as the auth service answers the same case).
pub(crate) fn required_user(
    caller: &herald_server::auth::Caller,
    as_user: Option<&str>,
    what: &str,
) -> Result<herald_proto::UserId, crate::ApiError> {
    acting_user(caller, as_user)?.ok_or_else(|| {
        crate::ApiError::Forbidden(format!(
            "{what} are a user's: use their session token, or name them with as_user"
        ))
    })
}

/// Read your writes: wait (at most the configured read wait) until the
/// projection has applied stream sequence `min_seq`, or answer 503 with the
/// position it has reached.
pub(crate) async fn wait_for(
    state: &crate::Shared,
    min_seq: Option<i64>,
) -> Result<(), crate::ApiError> {
    let Some(wanted) = min_seq else {
        return Ok(());
    };
    // A seq the stream has not reached yet cannot be a write the caller
    // saw answered: say so at once instead of waiting for nothing.
    let head = stream_head(state).await?;
    if wanted as u64 > head {
        return Err(crate::ApiError::BadRequest(format!(
            "min_seq {wanted} is past the stream's last seq {head}: not a seq a write answered"
        )));
    }
    wait_applied(state, wanted).await
}

/// Wait (at most the configured read wait) until the projection has
/// applied `wanted`, a seq the stream holds; else 503 with the position.
pub(crate) async fn wait_applied(
    state: &crate::Shared,
    wanted: i64,
) -> Result<(), crate::ApiError> {
    let deadline = tokio::time::Instant::now() + state.read_wait;
    loop {
        let reached: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT last_seq FROM projection_checkpoints WHERE name = $1), 0)",
        )
        .bind(&state.projection)
        .fetch_one(&state.db)
        .await?;
        if reached >= wanted {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(crate::ApiError::Unavailable(format!(
                "the read model has applied up to seq {reached}, not yet {wanted}; retry"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The channel stream's last sequence.
pub(crate) async fn stream_head(state: &crate::Shared) -> Result<u64, crate::ApiError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        crate::ApiError::Unavailable(format!("the stream cannot be read now: {e}"))
    };
    let mut stream = state
        .js
        .get_stream(state.subjects.channels_stream())
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(stream
        .info()
        .await
        .map_err(|e| unavailable(&e))?
        .state
        .last_sequence)
}

/// Parse an optional positive integer query parameter.
pub(crate) fn positive(name: &str, raw: Option<&str>) -> Result<Option<i64>, crate::ApiError> {
    raw.map(|s| {
        s.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            crate::ApiError::BadRequest(format!("{name} must be a positive integer, got {s:?}"))
        })
    })
    .transpose()
}

/// Whether `caller` may read `channel`: the app may read every channel; a
/// user one a grant of their session token names, or one they are a
/// member of (a room, a direct message, a channel whose members the app
/// manages), as projected from the channel's membership events.
pub(crate) async fn may_read(
    state: &crate::Shared,
    caller: &herald_server::auth::Caller,
    channel: &herald_proto::ChannelName,
) -> Result<(), crate::ApiError> {
    let herald_server::auth::Caller::User { app, claims } = caller else {
        return Ok(());
    };
    if claims.grants_channel(channel.as_str()) {
        return Ok(());
    }
    let member: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM channel_members WHERE app_id = $1 AND channel = $2 AND user_id = $3",
    )
    .bind(app.id.as_str())
    .bind(channel.as_str())
    .bind(&claims.sub)
    .fetch_optional(&state.db)
    .await?;
    match member {
        Some(_) => Ok(()),
        None => Err(crate::ApiError::Forbidden(
            "This session token's user is neither granted nor a member of this channel".into(),
        )),
    }
}

/// Every REST route.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(messages::router())
        .merge(chat::router())
        .merge(inbox::router())
        .route(
            "/v1/openapi.json",
            get(|| async { Json(ApiDoc::openapi()) }),
        )
        // Browsers call these with a session token, from the app's origin.
        .layer(herald_server::http::browser_cors())
}

#[cfg(test)]
mod tests {
    use super::ApiDoc;
    use herald_proto::channel::{
        APP_ID_PATTERN, CHANNEL_NAME_PATTERN, MAX_APP_ID_LEN, MAX_CHANNEL_NAME_LEN,
    };
    use utoipa::OpenApi;

    #[test]
    fn the_document_states_the_rules_the_server_enforces() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let op = &doc["paths"]["/v1/apps/{app}/channels/{channel}/messages"]["get"];
        let param = |name: &str| {
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()["schema"]
                .clone()
        };
        assert_eq!(param("channel")["pattern"], CHANNEL_NAME_PATTERN);
        assert_eq!(param("channel")["maxLength"], MAX_CHANNEL_NAME_LEN);
        assert_eq!(param("app")["pattern"], APP_ID_PATTERN);
        assert_eq!(param("app")["maxLength"], MAX_APP_ID_LEN);
        assert_eq!(param("limit")["minimum"], 1);
        assert_eq!(param("limit")["maximum"], super::messages::MAX_LIMIT);
        assert_eq!(param("before")["minimum"], 1);
    }
}
