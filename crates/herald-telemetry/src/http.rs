//! HTTP pieces every Herald REST API shares: the JSON error answer and
//! app authorization with HTTP Basic `key:secret`.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use herald_config::{AppConfig, AppRegistry};
use herald_proto::pusher::constant_time_eq;
use std::sync::Arc;

/// `{"error": {"code", "message"}}` with `status`; a 401 also names the
/// Basic scheme in `WWW-Authenticate`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let mut resp = (status, crate::error_body(code, message)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"herald\""),
        );
    }
    resp
}

/// Log an unexpected error and answer a bare 500: nothing internal (SQL,
/// NATS errors, stack traces) reaches a client.
pub fn internal_error_response(err: &anyhow::Error) -> Response {
    tracing::error!(error = %format!("{err:#}"), "internal error");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal server error",
    )
}

/// The message of every failed Basic authorization.
pub const BAD_CREDENTIALS: &str =
    "Invalid or missing credentials: use HTTP Basic with the app key and secret";

/// The app named `app_id`, if the request carries that app's own key and
/// secret (HTTP Basic), compared in constant time. An unknown app answers
/// exactly like bad credentials, so the API is no oracle for app ids.
pub fn authorize_app_basic(
    apps: &AppRegistry,
    headers: &HeaderMap,
    app_id: &str,
) -> Option<Arc<AppConfig>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (key, secret) = decoded.split_once(':')?;
    let app = apps.by_id(app_id)?;
    let key_ok = constant_time_eq(key, &app.key);
    let secret_ok = constant_time_eq(secret, &app.secret);
    (key_ok & secret_ok).then(|| app.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(user: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user)
        )
    }

    #[test]
    fn only_the_apps_own_key_and_secret_authorize_it() {
        let apps = AppRegistry::single(AppConfig::new("a", "k", "s"));
        assert!(authorize_app_basic(&apps, &headers(&basic("k:s")), "a").is_some());
        for bad in [
            basic("k:x"),
            basic("x:s"),
            basic("ks"),
            "Bearer k:s".into(),
            "Basic !!".into(),
        ] {
            assert!(
                authorize_app_basic(&apps, &headers(&bad), "a").is_none(),
                "{bad}"
            );
        }
        assert!(authorize_app_basic(&apps, &headers(&basic("k:s")), "other").is_none());
        assert!(authorize_app_basic(&apps, &HeaderMap::new(), "a").is_none());
    }
}
