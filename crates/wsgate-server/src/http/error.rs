//! JSON errors: every failure of the API is `{"success":false,"error":"…"}`.

use axum::extract::FromRequest;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wsgate_core::gateway::GatewayError;
use wsgate_core::upstream::UpstreamError;

use crate::reply::json_error;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_error(self.status, &self.message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self {
            status: r.status(),
            message: r.body_text(),
        }
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        let status = match &e {
            GatewayError::ConnectionNotFound => StatusCode::NOT_FOUND,
            GatewayError::InvalidData(_) => StatusCode::BAD_REQUEST,
            GatewayError::Broker(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

/// `Json` whose rejections are JSON errors too.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> Self {
        let status = match &e {
            UpstreamError::NotFound => StatusCode::NOT_FOUND,
            UpstreamError::OwnedByDifferentInstance(_) => StatusCode::CONFLICT,
            UpstreamError::NotConnected => StatusCode::CONFLICT,
            UpstreamError::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Invalid(_) => StatusCode::BAD_REQUEST,
            UpstreamError::Upstream(wsgate_client::Error::OutboxFull { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamError::Upstream(_) => StatusCode::BAD_GATEWAY,
            UpstreamError::Remote(_) => StatusCode::BAD_GATEWAY,
            UpstreamError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}
