//! The one JSON error answer of every Herald HTTP API,
//! `{"error": {"code", "message"}}`: for handlers ([`error_response`],
//! [`internal_error_response`]) and, through [`json_errors`], for what axum
//! answers by itself (unknown routes, wrong methods, extractor rejections
//! such as a malformed query or an oversized body), which would otherwise be
//! plain text or an empty body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

/// JSON error body shared by every Herald REST API:
/// `{"error": {"code": ..., "message": ...}}`.
pub fn error_body(code: &str, message: &str) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "error": { "code": code, "message": message } }))
}

/// `{"error": {"code", "message"}}` with `status`; a 401 also names the
/// Basic scheme in `WWW-Authenticate`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let mut resp = (status, error_body(code, message)).into_response();
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

/// The machine-readable code of an error status.
pub fn status_code_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

/// `router` with a JSON 404 for unknown routes and a layer that turns every
/// non-JSON error answer (axum's own rejections are plain text) into the
/// JSON error body, keeping its status. Rejection texts are axum's
/// descriptions of what was wrong with the request (never internal state);
/// a server error's text is replaced, to be safe.
pub fn json_errors(router: Router) -> Router {
    router
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::map_response(to_json_error))
}

/// Longest rejection text kept in a JSON error message.
const MAX_REJECTION_TEXT: usize = 1024;

async fn to_json_error(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_TEXT * 4)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if status.is_server_error() {
        "internal server error".to_owned()
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.chars().take(MAX_REJECTION_TEXT).collect()
    };
    let mut answer = error_response(status, status_code_name(status), &message);
    // Keep what the rejection said about the request (Allow, WWW-Authenticate).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// CORS for the routes a browser calls with a session token (pusher-js's
/// `channelAuthorization` and `userAuthentication`, rooms, DMs, channel
/// tokens, history, presence): any origin may call them, since what
/// authorizes a call is the Bearer token, never a cookie (so no
/// `Allow-Credentials`). `Authorization` must be listed by name: a
/// wildcard does not cover it.
pub fn browser_cors() -> tower_http::cors::CorsLayer {
    use axum::http::Method;
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::Query;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;

    #[derive(serde::Deserialize)]
    struct Q {
        #[allow(dead_code)]
        limit: u32,
    }

    async fn answer(router: Router, uri: &str) -> (StatusCode, serde_json::Value) {
        let resp = router
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).expect("a JSON body"))
    }

    fn app() -> Router {
        json_errors(Router::new().route("/q", get(|Query(_q): Query<Q>| async { "ok" })))
    }

    #[tokio::test]
    async fn an_unknown_route_answers_a_json_404() {
        let (status, body) = answer(app(), "/nowhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
    }

    #[tokio::test]
    async fn an_extractor_rejection_answers_json_with_its_status() {
        let (status, body) = answer(app(), "/q?limit=1&limit=2").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "bad_request");
        assert!(body["error"]["message"].as_str().unwrap().contains("limit"));
        let (status, _) = answer(app(), "/q?limit=x").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
