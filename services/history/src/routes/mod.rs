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
