//! REST routes of the presence service, under `/v1/apps/{app}`, each
//! authorized with the app's key and secret (HTTP Basic), and their OpenAPI
//! document at `/v1/openapi.json`.

mod members;
mod users;

use crate::engine::Command;
use crate::error::ApiError;
use crate::AppState;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::oneshot;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The presence service's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald presence",
        description = "Presence channel members and user presence (online, last seen, channels)."
    ),
    paths(members::members, users::one, users::batch),
    components(schemas(
        members::Members,
        members::Member,
        users::UserPresence,
        users::BatchRequest,
        users::BatchReply
    )),
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

/// Every REST route.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(members::router())
        .merge(users::router())
        .route(
            "/v1/openapi.json",
            get(|| async { Json(ApiDoc::openapi()) }),
        )
        // Browsers call these with a session token, from the app's origin.
        .layer(herald_server::http::browser_cors())
}

/// Ask the engine a question and wait (bounded) for its answer. While the
/// state is still loading at start-up the engine does not answer, and after
/// the bound the client gets a 503 rather than a partial answer.
async fn ask<T>(
    state: &AppState,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, ApiError> {
    if !state.active.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::Unavailable(
            "this presence instance is standing by; another one is active".into(),
        ));
    }
    let unavailable = || ApiError::Unavailable("presence state is not available yet".into());
    let (tx, rx) = oneshot::channel();
    let deadline = tokio::time::Instant::now() + state.timeout;
    tokio::time::timeout_at(deadline, state.commands.send(command(tx)))
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())?;
    tokio::time::timeout_at(deadline, rx)
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())
}

#[cfg(test)]
mod tests {
    use super::ApiDoc;
    use herald_proto::channel::{APP_ID_PATTERN, MAX_CHANNEL_NAME_LEN, PRESENCE_CHANNEL_PATTERN};
    use herald_proto::{MAX_USER_ID_LEN, USER_ID_PATTERN};
    use utoipa::OpenApi;

    fn param(doc: &serde_json::Value, path: &str, method: &str, name: &str) -> serde_json::Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["schema"]
            .clone()
    }

    #[test]
    fn the_document_states_the_rules_the_server_enforces() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let members = "/v1/apps/{app}/channels/{channel}/members";
        assert_eq!(
            param(&doc, members, "get", "channel")["pattern"],
            PRESENCE_CHANNEL_PATTERN
        );
        assert_eq!(
            param(&doc, members, "get", "channel")["maxLength"],
            MAX_CHANNEL_NAME_LEN
        );
        assert_eq!(
            param(&doc, members, "get", "app")["pattern"],
            APP_ID_PATTERN
        );
        let one = "/v1/apps/{app}/users/{user_id}/presence";
        assert_eq!(
            param(&doc, one, "get", "user_id")["maxLength"],
            MAX_USER_ID_LEN
        );
        assert_eq!(param(&doc, one, "get", "user_id")["minLength"], 1);
        assert_eq!(
            param(&doc, one, "get", "user_id")["pattern"],
            USER_ID_PATTERN
        );
        let schemas = &doc["components"]["schemas"];
        let batch = &schemas["BatchRequest"]["properties"]["user_ids"];
        assert_eq!(batch["maxItems"], super::users::MAX_BATCH_USERS);
        assert_eq!(batch["items"]["$ref"], "#/components/schemas/UserIdText");
        assert_eq!(schemas["UserIdText"]["maxLength"], MAX_USER_ID_LEN);
        assert_eq!(schemas["UserIdText"]["minLength"], 1);
        assert_eq!(schemas["UserIdText"]["pattern"], USER_ID_PATTERN);
    }
}
