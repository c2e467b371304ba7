//! Request authorization for the REST API.
//!
//! Until user tokens exist, an app's own credentials authorize it: HTTP
//! Basic with `key:secret`, only for the app named in the path (see
//! `herald_telemetry::http::authorize_app_basic`).

use crate::error::ApiError;
use crate::AppState;
use axum::http::HeaderMap;
use herald_config::AppConfig;
use herald_telemetry::http::{authorize_app_basic, BAD_CREDENTIALS};
use std::sync::Arc;

/// The app in the path, if the request carries that app's credentials.
pub(crate) fn authorize_app(
    state: &AppState,
    headers: &HeaderMap,
    app_id: &str,
) -> Result<Arc<AppConfig>, ApiError> {
    authorize_app_basic(&state.apps, headers, app_id)
        .ok_or_else(|| ApiError::Unauthorized(BAD_CREDENTIALS.into()))
}
