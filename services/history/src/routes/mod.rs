//! REST routes of the history service, under `/v1`, and their OpenAPI
//! document at `/v1/openapi.json`.

mod messages;

use crate::AppState;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The history service's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Herald history", description = "Paginated channel history, projected from the channel stream."),
    paths(messages::list),
    components(schemas(messages::Page, messages::Item)),
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
    Router::new().merge(messages::router()).route(
        "/v1/openapi.json",
        get(|| async { Json(ApiDoc::openapi()) }),
    )
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
