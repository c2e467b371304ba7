//! The presence service's error type: client errors carry a clear message,
//! internal ones are logged and answered with a bare 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered by the presence REST API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A path segment or the body is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed to see this.
    #[error("{0}")]
    Forbidden(String),
    /// The request body is over the size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The presence state is not loaded yet (or the engine is stopping).
    #[error("{0}")]
    Unavailable(String),
    /// Anything unexpected (NATS errors included): logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(err) => return herald_server::http::internal_error_response(err),
        };
        herald_server::http::error_response(status, code, &self.to_string())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    /// A body axum could not read as JSON: too large is 413 (as on every
    /// Herald service), anything else a 400 with axum's description.
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(rejection.body_text())
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    }
}
