//! The auth service's error type: client errors carry a clear message,
//! internal ones are logged and answered with a bare 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered by the auth REST API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A body field, query parameter or path segment is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// A missing or refused session token: a 401 that names the Bearer
    /// scheme, so that a browser never answers it with its Basic login
    /// prompt (the 401s of app credentials name Basic).
    #[error("{0}")]
    InvalidToken(String),
    /// The operation is disabled or not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The request body is larger than the service accepts.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// Too many attempts: retry after this many seconds.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// A dependency (the JetStream event store) did not take the change:
    /// the client may retry. The cause is logged where this is made.
    #[error("{0}")]
    Unavailable(String),
    /// A database error or anything else unexpected: logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        ApiError::Internal(err.into())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(err: axum::extract::rejection::JsonRejection) -> Self {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge(format!(
                "request body larger than {} bytes",
                crate::routes::MAX_BODY_BYTES
            ));
        }
        ApiError::BadRequest(format!("invalid JSON body: {}", err.body_text()))
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(err: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(err.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::InvalidToken(message) => {
                return with_header(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    message,
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"herald\""),
                )
            }
            ApiError::TooManyRequests {
                message,
                retry_after_secs,
            } => {
                return with_header(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    message,
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(*retry_after_secs),
                )
            }
            ApiError::Internal(err) => return herald_server::http::internal_error_response(err),
        };
        herald_server::http::error_response(status, code, &self.to_string())
    }
}

/// The JSON error answer with one more header (a 401's scheme, a 429's
/// `Retry-After`); set, not appended, so it replaces any default.
fn with_header(
    status: StatusCode,
    code: &str,
    message: &str,
    name: axum::http::HeaderName,
    value: axum::http::HeaderValue,
) -> Response {
    let mut resp = herald_server::http::error_response(status, code, message);
    resp.headers_mut().insert(name, value);
    resp
}
