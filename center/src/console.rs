//! The ops console: a single page at `/console` that shows live connections,
//! users, rooms and push rates, looks users up and kicks them, and pushes to
//! users, a channel or everyone.
//!
//! The page is three static files under `center/console/`, embedded in the
//! binary (no node toolchain, nothing fetched at run time). It holds no
//! secret, so loading it needs no key: the operator types the API key into
//! the page, which keeps it in `sessionStorage` and calls `/api/v1/*` with
//! `Authorization: Bearer` like any other client. Rates come from `/metrics`
//! (no key), differenced between polls in the browser.
//!
//! Every answer carries `Cache-Control: no-cache` (an upgraded binary serves
//! its own page at once) and a strict Content-Security-Policy: only this
//! origin's scripts, styles, images and API, no inline script or style, no
//! framing, no form submission (a form that the script failed to take over
//! must not post the key anywhere).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// The Content-Security-Policy of every console answer.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// One embedded file: where it is served, its content type and its bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: &[u8] = include_bytes!("../console/index.html");

/// The page's files (the page itself is also served at `/console`).
const ASSETS: &[Asset] = &[
    Asset {
        path: "/console/",
        content_type: "text/html; charset=utf-8",
        body: INDEX,
    },
    Asset {
        path: "/console/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../console/app.js"),
    },
    Asset {
        path: "/console/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../console/style.css"),
    },
    Asset {
        path: "/console/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../console/favicon.svg"),
    },
];

/// One embedded file as a response, with the console's headers.
fn serve(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        body,
    )
        .into_response()
}

/// The console's routes: `/console`, `/console/` and its assets, and `/`
/// redirecting to `/console`. No key needed (the page holds no secret).
/// Other paths under `/console/` are left to the caller's fallback (404).
pub(crate) fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let mut r = Router::new()
        .route("/", get(|| async { Redirect::temporary("/console") }))
        .route(
            "/console",
            get(|| async { serve(ASSETS[0].content_type, INDEX) }),
        );
    for a in ASSETS {
        let (ct, body) = (a.content_type, a.body);
        r = r.route(a.path, get(move || async move { serve(ct, body) }));
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_path(path: &str) -> Response {
        router::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header_of(r: &Response, h: header::HeaderName) -> &str {
        r.headers()
            .get(h)
            .map_or("", |v| v.to_str().unwrap_or_default())
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_type_and_headers() {
        let want = [
            ("/console", "text/html; charset=utf-8", "<!doctype html>"),
            ("/console/", "text/html; charset=utf-8", "<!doctype html>"),
            (
                "/console/app.js",
                "text/javascript; charset=utf-8",
                "\"use strict\"",
            ),
            ("/console/style.css", "text/css; charset=utf-8", "body"),
            ("/console/favicon.svg", "image/svg+xml", "<svg"),
        ];
        for (path, ct, contains) in want {
            let r = get_path(path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(header_of(&r, header::CONTENT_TYPE), ct, "{path}");
            assert_eq!(header_of(&r, header::CACHE_CONTROL), "no-cache", "{path}");
            assert_eq!(
                header_of(&r, header::CONTENT_SECURITY_POLICY),
                CSP,
                "{path}"
            );
            assert_eq!(header_of(&r, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8(body.to_vec()).unwrap();
            assert!(
                text.contains(contains),
                "{path}: {contains:?} not in the body"
            );
        }
    }

    #[tokio::test]
    async fn csp_allows_only_this_origin_and_no_inline_code() {
        assert!(CSP.starts_with("default-src 'self';"));
        assert!(!CSP.contains("unsafe-inline"));
        assert!(!CSP.contains("unsafe-eval"));
        assert!(CSP.contains("form-action 'none'"));
        assert!(CSP.contains("frame-ancestors 'none'"));
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_no_external_resource() {
        let html = std::str::from_utf8(INDEX).unwrap();
        // Every <script> has a src on this origin and no body.
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find("</script>").unwrap()];
            assert!(tag.contains("src=\"/console/"), "{tag}");
            assert!(tag.ends_with('>'), "inline script: {tag}");
        }
        assert!(!html.contains("<style"), "inline <style>");
        assert!(!html.contains(" style="), "inline style attribute");
        for (i, _) in html.match_indices(" on") {
            let name: String = html[i + 3..]
                .chars()
                .take_while(char::is_ascii_lowercase)
                .collect();
            let after = html[i + 3 + name.len()..].chars().next();
            assert!(
                name.is_empty() || after != Some('='),
                "inline event handler: on{name}="
            );
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
        let js = std::str::from_utf8(ASSETS[1].body).unwrap();
        assert!(!js.contains("http://") && !js.contains("https://"));
        assert!(!js.contains("eval("));
    }

    #[tokio::test]
    async fn unknown_asset_is_404() {
        for path in ["/console/nope.js", "/console/app.js/x", "/consolex"] {
            assert_eq!(
                get_path(path).await.status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn root_redirects_to_the_console() {
        let r = get_path("/").await;
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(header_of(&r, header::LOCATION), "/console");
    }
}
