//! Request authorization for the REST API (the same scheme as the history
//! service).
//!
//! Until user tokens exist, an app's own credentials authorize it: HTTP
//! Basic with `key:secret`, compared in constant time, and only for the app
//! named in the path.

use crate::error::ApiError;
use crate::AppState;
use axum::http::HeaderMap;
use base64::Engine;
use herald_config::AppConfig;
use herald_proto::pusher::constant_time_eq;
use std::sync::Arc;

/// The app in the path, if the request carries that app's credentials.
pub(crate) fn authorize_app(
    state: &AppState,
    headers: &HeaderMap,
    app_id: &str,
) -> Result<Arc<AppConfig>, ApiError> {
    let unauthorized = || {
        ApiError::Unauthorized(
            "Invalid or missing credentials: use HTTP Basic with the app key and secret".into(),
        )
    };
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or_else(unauthorized)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| unauthorized())?;
    let decoded = String::from_utf8(decoded).map_err(|_| unauthorized())?;
    let (key, secret) = decoded.split_once(':').ok_or_else(unauthorized)?;
    // An unknown app answers exactly like bad credentials: no existence oracle.
    let app = state.apps.by_id(app_id).ok_or_else(unauthorized)?;
    let key_ok = constant_time_eq(key, &app.key);
    let secret_ok = constant_time_eq(secret, &app.secret);
    if key_ok & secret_ok {
        Ok(app.clone())
    } else {
        Err(unauthorized())
    }
}
