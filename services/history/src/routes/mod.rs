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
