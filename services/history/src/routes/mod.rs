//! REST routes of the history service, under `/v1`.

mod auth;
mod messages;

use crate::AppState;
use axum::Router;

/// Every REST route.
pub(crate) fn router() -> Router<AppState> {
    Router::new().merge(messages::router())
}
