//! The admin console at `/admin`: three static files compiled into the binary.
//!
//! The page is public (it holds no data); everything it shows comes from the control API,
//! which it calls from the same origin with the API key as a Bearer token, like any other
//! client. No CORS is involved (same origin), and the WebSocket Origin check does not apply
//! (the console opens no WebSocket). The key lives in the tab's `sessionStorage`, never in a
//! URL. The Content-Security-Policy allows scripts, styles and fetches from this origin only,
//! and no framing (`frame-ancestors 'none'` plus `X-Frame-Options: DENY` against clickjacking
//! of the disconnect buttons).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../../admin/index.html");
const SCRIPT: &str = include_str!("../../admin/console.js");
const STYLE: &str = include_str!("../../admin/console.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The console's routes; they need no state and no API key.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin", get(|| asset("text/html; charset=utf-8", INDEX)))
        .route("/admin/", get(|| asset("text/html; charset=utf-8", INDEX)))
        .route(
            "/admin/console.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/admin/console.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A new binary may ship a new console: revalidate instead of caching stale scripts.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str) -> Response {
        routes::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_type_and_the_security_headers() {
        for (path, ty) in [
            ("/admin", "text/html"),
            ("/admin/", "text/html"),
            ("/admin/console.js", "text/javascript"),
            ("/admin/console.css", "text/css"),
        ] {
            let r = get(path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let h = r.headers();
            assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with(ty));
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
            assert!(csp.contains("frame-ancestors 'none'"));
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_loads_its_own_files() {
        assert!(!INDEX.contains("<script>") && !INDEX.contains(" style="));
        assert!(INDEX.contains(r#"<script src="/admin/console.js" defer></script>"#));
        assert!(INDEX.contains(r#"href="/admin/console.css""#));
        // The key is read from sessionStorage and sent as a header, never put into a URL.
        assert!(SCRIPT.contains("sessionStorage") && SCRIPT.contains("Bearer "));
        assert!(!SCRIPT.contains("localStorage"));
    }
}
