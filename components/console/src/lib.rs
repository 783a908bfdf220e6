//! The console component: the pages, embedded at build time so they work offline (no CDN, no fonts, charts drawn
//! as SVG by hand), and — only when variable `demo_mode` is `true` — the demo's identity provider and payment
//! gateway simulator.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/` | landing page |
//! | GET | `/console` | operator console (asks for the operator token; keeps it in the tab's session storage) |
//! | GET | `/app` | mini-program demo |
//! | GET | `/assets/{file}` | the pages' scripts and styles |
//! | POST | `/api/demo/identity` | demo mode: `{persona}` → `{assertion}` signed like the bank's login gateway, for `POST /api/sessions` |
//! | POST | `/api/demo/payments` | demo mode: `{scenario, order_id, amount_fen, card_bin?, status?}` → the signed gateway notification `{notify_path, headers, body}` for the page to deliver |
//!
//! Outside demo mode both demo routes answer `404 demo_disabled`: no one can mint identities or payments.

mod demo;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use scenefin_guest::{Request, Response, Route, problem, unmatched};
use spin_sdk::http::FullBody;
use spin_sdk::http_service;

/// Embedded files: path, content type, body.
const FILES: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("../assets/index.html")),
    ("/console", "text/html; charset=utf-8", include_str!("../assets/console.html")),
    ("/app", "text/html; charset=utf-8", include_str!("../assets/app.html")),
    ("/assets/style.css", "text/css; charset=utf-8", include_str!("../assets/style.css")),
    ("/assets/console.css", "text/css; charset=utf-8", include_str!("../assets/console.css")),
    ("/assets/common.js", "text/javascript; charset=utf-8", include_str!("../assets/common.js")),
    ("/assets/i18n.js", "text/javascript; charset=utf-8", include_str!("../assets/i18n.js")),
    ("/assets/console.js", "text/javascript; charset=utf-8", include_str!("../assets/console.js")),
    ("/assets/console-texts.js", "text/javascript; charset=utf-8", include_str!("../assets/console-texts.js")),
    ("/assets/app.js", "text/javascript; charset=utf-8", include_str!("../assets/app.js")),
    ("/assets/app-text.js", "text/javascript; charset=utf-8", include_str!("../assets/app-text.js")),
];

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut res = http::Response::new(FullBody::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'",
        ),
    );
    res
}

#[http_service]
async fn handle(req: Request) -> Response {
    let route = Route::of(&req);
    let path = req.uri().path().trim_end_matches('/');
    let path = if path.is_empty() || path == "/index.html" { "/" } else { path };
    let file = FILES.iter().find(|(p, _, _)| *p == path);
    let segments = route.segments();
    let result = match (&route.method, file, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, Some((_, content_type, body)), _) => Ok(page(content_type, body)),
        (&Method::POST, _, ["api", "demo", "identity"]) => demo::identity(req).await,
        (&Method::POST, _, ["api", "demo", "payments"]) => demo::payment(req).await,
        (_, file, path) => match allowed(file.is_some(), path) {
            Some(allow) => unmatched(&route, Some(allow)),
            None => Err(problem(&scenefin_core::ApiError::not_found("no such page"))),
        },
    };
    result.unwrap_or_else(|response| response)
}

/// The methods each page and route above serves (their `Allow`, for 405s and OPTIONS); `None` for any other path.
fn allowed(file: bool, path: &[&str]) -> Option<&'static str> {
    match (file, path) {
        (true, _) => Some("GET, HEAD"),
        (false, ["api", "demo", "identity" | "payments"]) => Some("POST"),
        _ => None,
    }
}
