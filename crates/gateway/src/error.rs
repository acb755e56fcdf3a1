//! API errors: always `{"error": {"type", "message"}}` with a fitting status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use greenscale_core::QueueError;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A machine-readable kind, e.g. `invalid_request_error`, `authentication_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A human-readable explanation.
    pub message: String,
}

/// An error to answer with.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Error kind.
    pub kind: &'static str,
    /// Message.
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.kind,
            self.status.as_u16(),
            self.message
        )
    }
}

impl ApiError {
    /// An error with the given status, kind and message.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 404: no such thing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Invalid(m) => ApiError::invalid(m),
            QueueError::Duplicate(id) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("a job with id {id:?} already exists"),
            ),
            QueueError::OverQuota {
                ref retry_after, ..
            } => {
                let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let mut out = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "quota_exceeded",
                    e.to_string(),
                );
                out.retry_after = Some(seconds);
                out
            }
            QueueError::Unavailable(m) => {
                tracing::warn!(error = %m, "queue unavailable");
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_unavailable",
                    "the job queue is not reachable right now; try again shortly",
                );
                e.retry_after = Some(2);
                e
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&s.to_string()).expect("digits"),
            );
        }
        response
    }
}
