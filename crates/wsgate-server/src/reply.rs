//! What the HTTP edge shares between the control API and the WebSocket upgrade: the JSON
//! error body and the `Authorization: Bearer` parsing. It sits below both (`http` and `ws`
//! depend on it, it depends on neither) so that neither has to import the other.

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `{"success":false,"error":"…"}` with `status`: every refusal of the HTTP edge.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"success": false, "error": message})),
    )
        .into_response()
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}
