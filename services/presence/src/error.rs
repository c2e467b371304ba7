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
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Unauthorized(_) => {
                let mut resp = (
                    StatusCode::UNAUTHORIZED,
                    herald_telemetry::error_body("unauthorized", &self.to_string()),
                )
                    .into_response();
                resp.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Basic realm=\"herald\""),
                );
                return resp;
            }
            ApiError::Internal(err) => {
                tracing::error!(error = %format!("{err:#}"), "internal error");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    herald_telemetry::error_body("internal", "internal server error"),
                )
                    .into_response();
            }
        };
        (
            status,
            herald_telemetry::error_body(code, &self.to_string()),
        )
            .into_response()
    }
}
