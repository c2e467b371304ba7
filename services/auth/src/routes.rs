//! REST routes of the auth service and their OpenAPI document at
//! `/v1/openapi.json`.

use crate::AppState;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Largest request body, bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The auth service's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Herald auth", description = "Users, session tokens (EdDSA JWTs) and their JWKS. Request bodies are limited to 16384 bytes."),
    paths(
        crate::users::put_user, crate::users::get_user, crate::users::batch, crate::users::search,
        crate::tokens::issue, crate::tokens::jwks, crate::tokens::rotate,
    ),
    components(schemas(
        crate::users::User, crate::users::UserBody, crate::users::BatchBody, crate::users::BatchAnswer,
        crate::users::SearchPage, crate::tokens::TokenRequest, crate::tokens::TokenAnswer,
        crate::tokens::Rotated, herald_server::token::Jwk, herald_server::token::JwkSet,
    )),
    modifiers(&Security)
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "app_basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        components.add_security_scheme(
            "admin_bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every REST route.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(crate::users::router())
        .merge(crate::tokens::router())
        .route(
            "/v1/openapi.json",
            get(|| async { Json(ApiDoc::openapi()) }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

#[cfg(test)]
mod tests {
    use super::ApiDoc;
    use utoipa::OpenApi;

    #[test]
    fn the_document_states_the_bounds_the_server_enforces() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let s = &doc["components"]["schemas"];
        assert_eq!(
            s["UserBody"]["properties"]["name"]["maxLength"],
            crate::users::MAX_NAME_LEN
        );
        assert_eq!(
            s["UserBody"]["properties"]["avatar_url"]["maxLength"],
            crate::users::MAX_AVATAR_URL_LEN
        );
        assert_eq!(
            s["UserBody"]["properties"]["avatar_url"]["pattern"],
            crate::users::AVATAR_URL_PATTERN
        );
        assert_eq!(
            s["BatchBody"]["properties"]["user_ids"]["maxItems"],
            crate::users::MAX_BATCH
        );
        assert_eq!(
            s["TokenRequest"]["properties"]["grants"]["maxItems"],
            herald_proto::token::MAX_GRANTS
        );
        let put = &doc["paths"]["/v1/apps/{app}/users/{user_id}"]["put"];
        let uid = put["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "user_id")
            .unwrap();
        assert_eq!(uid["schema"]["maxLength"], herald_proto::MAX_USER_ID_LEN);
        let search = &doc["paths"]["/v1/apps/{app}/users"]["get"];
        let limit = search["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap();
        assert_eq!(limit["schema"]["maximum"], crate::users::MAX_LIMIT);
        assert!(doc["paths"]["/.well-known/jwks.json"]["get"].is_object());
    }
}
