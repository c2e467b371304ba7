//! Verification of Pusher HTTP API request signatures.
//!
//! Pusher signs `METHOD\nPATH\nsorted-query` with HMAC-SHA256 under the app
//! secret. The query carries `auth_key`, `auth_timestamp` (within 600 s),
//! `auth_version=1.0`, `body_md5` for requests with a body, and
//! `auth_signature`. Signatures and digests are compared in constant time.

use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request};
use herald_config::AppConfig;
use herald_proto::pusher;
use std::collections::HashMap;
use std::sync::Arc;

/// A request whose Pusher signature checked out: its app, query parameters
/// and raw body.
pub(crate) struct Signed {
    pub app: Arc<AppConfig>,
    pub params: Vec<(String, String)>,
    pub body: Bytes,
    /// Other path parameters (`name`, `user_id`, ...).
    pub path: HashMap<String, String>,
}

impl Signed {
    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl FromRequest<AppState> for Signed {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let Path(path) = Path::<HashMap<String, String>>::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let Query(params) = Query::<Vec<(String, String)>>::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let method = parts.method.clone();
        let uri_path = parts.uri.path().to_owned();
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|e| ApiError::PayloadTooLarge(e.body_text()))?;
        // Routes without `{app_id}` (an alias some SDKs use) name the app by
        // the signed `auth_key` instead.
        let app_id = match path.get("app_id") {
            Some(id) => id.clone(),
            None => params
                .iter()
                .find(|(k, _)| k == "auth_key")
                .and_then(|(_, key)| state.apps.by_key(key))
                .map(|app| app.id.to_string())
                .ok_or_else(|| ApiError::Unauthorized("Unknown auth_key".into()))?,
        };
        let app = verify(state, &app_id, method.as_str(), &uri_path, &params, &body)?;
        Ok(Self {
            app,
            params,
            body,
            path,
        })
    }
}

use axum::extract::FromRequestParts;

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
    // An unknown app id is refused exactly like a known app with a wrong
    // key, so the API tells a prober nothing about which app ids exist.
    let app = state.apps.by_id(app_id).cloned();
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
    let Some(app) = app.filter(|app| pusher::constant_time_eq(key, &app.key)) else {
        return Err(ApiError::Unauthorized("Unknown auth_key".into()));
    };
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
