//! The history service's error type: client errors carry a clear message,
//! internal ones are logged and answered with a bare 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered by the history REST API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query parameter or path segment is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed to see this.
    #[error("{0}")]
    Forbidden(String),
    /// A database error or anything else unexpected: logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        ApiError::Internal(err.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Internal(err) => return herald_server::http::internal_error_response(err),
        };
        herald_server::http::error_response(status, code, &self.to_string())
    }
}
