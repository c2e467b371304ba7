//! The gateway's HTTP error type. Every variant maps to the status code the
//! Pusher HTTP API uses; internal errors are logged and answered with a bare
//! 500 so nothing internal reaches a client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered by the Pusher HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (bad JSON, invalid channel name, too many channels).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong authentication (signature, key, timestamp, body_md5).
    #[error("{0}")]
    Unauthorized(String),
    /// The payload is over the app's message size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A dependency (NATS) cannot take the request now; nothing was done
    /// that the answer does not say, and a retry may succeed (503).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(err) => return herald_server::http::internal_error_response(err),
        };
        let mut response = herald_server::http::error_response(status, code, &self.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Retryable: say when (NATS reconnects within seconds).
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
