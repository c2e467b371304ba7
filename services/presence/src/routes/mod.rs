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
