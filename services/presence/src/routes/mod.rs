//! REST routes of the presence service, under `/v1/apps/{app}`, each
//! authorized with the app's key and secret (HTTP Basic).

mod auth;
mod members;
mod users;

use crate::engine::Command;
use crate::error::ApiError;
use crate::AppState;
use axum::Router;
use tokio::sync::oneshot;

/// Every REST route.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(members::router())
        .merge(users::router())
}

/// Ask the engine a question and wait (bounded) for its answer. While the
/// state is still loading at start-up the engine does not answer, and after
/// the bound the client gets a 503 rather than a partial answer.
async fn ask<T>(
    state: &AppState,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, ApiError> {
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
