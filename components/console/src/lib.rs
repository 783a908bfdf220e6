//! The console component: static pages embedded at build time, so the app works offline.
//! Routes (spin-path-info under `/...`): `/` the landing page; anything else is a problem+json 404.

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use spin_sdk::http::{FullBody, IntoResponse, Request};
use spin_sdk::http_service;

const INDEX_HTML: &str = include_str!("../assets/index.html");

fn page(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> http::Response<FullBody<Bytes>> {
    let mut res = http::Response::new(FullBody::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let path = req.headers().get("spin-path-info").and_then(|v| v.to_str().ok()).unwrap_or("/");
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "" | "/" | "/index.html") => {
            page(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML)
        }
        (_, "" | "/" | "/index.html") => page(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/problem+json",
            r#"{"type":"about:blank","title":"Method Not Allowed","status":405,"code":"method_not_allowed"}"#,
        ),
        _ => page(
            StatusCode::NOT_FOUND,
            "application/problem+json",
            r#"{"type":"about:blank","title":"Not Found","status":404,"code":"not_found","detail":"no such page"}"#,
        ),
    }
}
