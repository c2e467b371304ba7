//! Verification of Pusher HTTP API request signatures.
//!
//! Pusher signs `METHOD\nPATH\nsorted-query` with HMAC-SHA256 under the app
//! secret. The query carries `auth_key`, `auth_timestamp` (within 600 s),
//! `auth_version=1.0`, `body_md5` for requests with a body, and
//! `auth_signature`. Signatures and digests are compared in constant time.

use crate::error::ApiError;
use crate::AppState;
use herald_config::AppConfig;
use herald_proto::pusher;
use std::sync::Arc;

/// Largest allowed difference between `auth_timestamp` and our clock.
pub const MAX_CLOCK_SKEW_SECS: i64 = 600;

/// Check a request and return its app.
pub fn verify(
    state: &AppState,
    app_id: &str,
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
) -> Result<Arc<AppConfig>, ApiError> {
    let app = state
        .apps
        .by_id(app_id)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("Unknown app {app_id:?}")))?;
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(key), Some(timestamp), Some(version), Some(signature)) = (
        get("auth_key"),
        get("auth_timestamp"),
        get("auth_version"),
        get("auth_signature"),
    ) else {
        return Err(ApiError::Unauthorized(
            "Missing auth_key, auth_timestamp, auth_version or auth_signature".into(),
        ));
    };
    if !pusher::constant_time_eq(key, &app.key) {
        return Err(ApiError::Unauthorized("Unknown auth_key".into()));
    }
    if version != "1.0" {
        return Err(ApiError::Unauthorized(
            "Unsupported auth_version; use 1.0".into(),
        ));
    }
    let Ok(timestamp) = timestamp.parse::<i64>() else {
        return Err(ApiError::Unauthorized(
            "auth_timestamp is not a number".into(),
        ));
    };
    let now = herald_proto::now_ms() / 1000;
    if (now - timestamp).abs() > MAX_CLOCK_SKEW_SECS {
        return Err(ApiError::Unauthorized(format!(
            "Timestamp expired: {timestamp} is more than {MAX_CLOCK_SKEW_SECS} s from the server time {now}"
        )));
    }
    if !body.is_empty() {
        let expected = pusher::body_md5(body);
        match get("body_md5") {
            Some(given) if pusher::constant_time_eq(given, &expected) => {}
            Some(_) => {
                return Err(ApiError::Unauthorized(
                    "body_md5 does not match the body".into(),
                ))
            }
            None => return Err(ApiError::Unauthorized("Missing body_md5".into())),
        }
    }
    let expected = pusher::sign_api_request(
        &app.secret,
        method,
        path,
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if !pusher::constant_time_eq(signature, &expected) {
        return Err(ApiError::Unauthorized(
            "Invalid signature: check your app secret".into(),
        ));
    }
    Ok(app)
}
