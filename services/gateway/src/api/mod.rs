//! The Pusher HTTP API, signed and verified as Pusher does: publishing
//! (single, multi-channel, batch, to users), channel queries, user
//! termination, and Herald's server-side subscriptions.

mod channels;
mod events;
mod signature;
mod users;

use crate::AppState;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

/// Largest request body accepted at all (a batch of 10 events of 10 KB each
/// plus JSON overhead fits comfortably).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Routes of the Pusher HTTP API.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/apps/{app_id}/events", post(events::trigger))
        .route("/apps/{app_id}/batch_events", post(events::trigger_batch))
        .route("/apps/{app_id}/channels", get(channels::list))
        .route("/apps/{app_id}/channels/{name}", get(channels::show))
        .route("/apps/{app_id}/channels/{name}/users", get(channels::users))
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(users::terminate),
        )
        // pusher-http-python 3.x posts terminate_connections without the
        // `/apps/{id}` prefix; accept it so that SDK works unchanged.
        .route(
            "/users/{user_id}/terminate_connections",
            post(users::terminate),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/subscriptions",
            post(users::subscribe).delete(users::unsubscribe),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}
