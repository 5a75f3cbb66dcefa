//! JSON errors: every failure of the API is `{"success":false,"error":"…"}`, with the
//! status its [`ErrorCode`] maps to (and `Retry-After` when rate limited).

use axum::extract::FromRequest;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wsgate_core::control::{ControlError, ErrorCode};

use crate::reply::json_error;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = json_error(self.status, &self.message);
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let (status, retry_after) = match e.code {
            ErrorCode::NotFound => (StatusCode::NOT_FOUND, None),
            ErrorCode::Conflict => (StatusCode::CONFLICT, None),
            ErrorCode::InvalidArgument => (StatusCode::BAD_REQUEST, None),
            ErrorCode::Timeout => (StatusCode::GATEWAY_TIMEOUT, None),
            ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, None),
            ErrorCode::BadGateway => (StatusCode::BAD_GATEWAY, None),
            ErrorCode::Unauthorized => (StatusCode::UNAUTHORIZED, None),
            ErrorCode::Forbidden => (StatusCode::FORBIDDEN, None),
            ErrorCode::RateLimited { retry_after_secs } => {
                (StatusCode::TOO_MANY_REQUESTS, Some(retry_after_secs))
            }
        };
        Self {
            status,
            message: e.message,
            retry_after,
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self {
            status: r.status(),
            message: r.body_text(),
            retry_after: None,
        }
    }
}

/// `Json` whose rejections are JSON errors too.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);
