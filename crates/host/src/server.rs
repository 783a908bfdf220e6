//! The HTTP front: accepts connections (TCP_NODELAY), routes each request with Spin's rules, adds Spin's headers,
//! enforces the body size limit and hands the request to the component's instance pool. Host-side failures are
//! RFC 9457 problem+json; one access-log line per request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use wasmtime_wasi_http::handler::{ExpirationError, InstantiationError, ProxyHandler};

use crate::kv::Kv;
use crate::routes::Router;
use crate::runtime::ComponentHandler;

pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub struct App {
    pub router: Router,
    pub components: HashMap<String, ProxyHandler<ComponentHandler>>,
    pub max_body_bytes: usize,
    pub request_timeout: std::time::Duration,
    pub access_log: bool,
    /// Requests handed to components at once. wasmtime's `ProxyHandler` has no backpressure of its own: a burst
    /// arriving while no instance is ready starts one instance per request, and past the pooling allocator's
    /// slots those instantiations fail. Requests beyond this many wait here for a permit instead.
    pub admission: tokio::sync::Semaphore,
    /// The store: no response leaves before the writes committed so far are durable ([`Kv::barrier`]).
    pub kv: Kv,
}

/// Request bodies past the limit are still read (and thrown away) up to this many bytes, so the client, which is
/// usually still sending, reads the 413 instead of a reset connection.
const DRAIN_LIMIT_BYTES: usize = 16 << 20;

/// Reads and discards the rest of a refused body, up to [`DRAIN_LIMIT_BYTES`].
async fn drain(mut body: impl hyper::body::Body<Data = Bytes> + Unpin) {
    let mut seen = 0usize;
    while seen < DRAIN_LIMIT_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
            _ => break,
        }
    }
}

/// Requests in components at once (see [`App::admission`]); the pool has slots for 1,000 instances.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;

/// A problem+json response produced by the host itself.
fn problem(status: StatusCode, code: &str, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
    });
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never: Infallible| match never {}).boxed_unsync()
}

/// Serves until `shutdown` flips to true, then lets in-flight connections finish.
pub async fn serve(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, client) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                // WASIp3 responses are chunked: without NODELAY, Nagle and delayed ACKs add ~40 ms per request.
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(&app, req, client).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {
            eprintln!("shutdown: gave up waiting for open connections");
        }
    }
}

async fn handle(app: &App, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (component, response) = dispatch(app, req, client).await;
    if app.access_log {
        println!(
            "{method} {path} {} {} {:.1}ms",
            component.as_deref().unwrap_or("-"),
            response.status().as_u16(),
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    response
}

async fn dispatch(app: &App, req: Request<Incoming>, client: SocketAddr) -> (Option<String>, Response<Body>) {
    let Some(matched) = app.router.route(req.uri().path()) else {
        return (None, problem(StatusCode::NOT_FOUND, "route_not_found", "no component serves this path"));
    };
    let component = Some(matched.component.clone());
    let Some(handler) = app.components.get(&matched.component) else {
        return (component, problem(StatusCode::NOT_FOUND, "route_not_found", "component not served by this host"));
    };
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("request body exceeds {} bytes", app.max_body_bytes),
        )
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_body_bytes as u64) {
        drain(req.into_body()).await;
        return (component, too_large());
    }

    let (mut parts, mut body) = req.into_parts();
    let mut collected = Vec::new();
    let body = loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if collected.len() + data.len() > app.max_body_bytes {
                        drain(body).await;
                        return (component, too_large());
                    }
                    collected.extend_from_slice(data);
                }
            }
            None => break Bytes::from(collected),
            Some(Err(e)) => {
                return (
                    component,
                    problem(StatusCode::BAD_REQUEST, "bad_request_body", &format!("reading body: {e}")),
                );
            }
        }
    };

    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_owned();
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    let full_url = format!("http://{host}{path_and_query}");
    match http::Uri::try_from(full_url.as_str()) {
        Ok(uri) => parts.uri = uri,
        Err(_) => {
            return (component, problem(StatusCode::BAD_REQUEST, "bad_request", "invalid Host header"));
        }
    }
    // Clients must not be able to forge the routing facts a component relies on.
    let forged: Vec<_> = parts.headers.keys().filter(|k| k.as_str().starts_with("spin-")).cloned().collect();
    for name in forged {
        parts.headers.remove(name);
    }
    for (name, value) in matched.spin_headers(&full_url, client) {
        if let (Ok(name), Ok(value)) = (header::HeaderName::try_from(name), HeaderValue::try_from(value)) {
            parts.headers.insert(name, value);
        }
    }
    let request =
        Request::from_parts(parts, Full::new(body).map_err(|never: Infallible| match never {}).boxed_unsync());

    let started = Instant::now();
    let Ok(_permit) = app.admission.acquire().await else {
        return (component, problem(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the host is stopping"));
    };
    let mut request = request;
    let mut backoff = std::time::Duration::from_millis(2);
    let outcome = loop {
        match handler.handle((), request).await {
            // Every instance slot is taken (other components' idle instances hold some until their idle timeout):
            // the request comes back untouched, so wait for a slot to free up rather than fail it.
            Err(e) if started.elapsed() + backoff < app.request_timeout && pool_exhausted(&e) => {
                match e.downcast::<InstantiationError<()>>() {
                    Ok(refused) => request = refused.request.into_inner().unwrap_or_else(|p| p.into_inner()),
                    Err(e) => break Err(e),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_millis(50));
            }
            other => break other,
        }
    };
    if outcome.is_ok()
        && let Err(e) = app.kv.barrier().await
    {
        // Like a crash after the writes: the client retries (same idempotency key) and gets the outcome then.
        eprintln!("component `{}`: response withheld: {e}", matched.component);
        return (component, problem(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "storage unavailable"));
    }
    match outcome {
        Ok(response) => (component, response.map(|b| b.map_err(Into::into).boxed_unsync())),
        // A guest stuck in a loop is ended from outside its event loop, which drops the request rather than
        // expiring it: past the time limit, any failure is the limit's doing.
        Err(e) if e.is::<ExpirationError>() || started.elapsed() >= app.request_timeout => (
            component,
            problem(StatusCode::INTERNAL_SERVER_ERROR, "component_timeout", "the component did not respond in time"),
        ),
        Err(e) => {
            eprintln!("component `{}` failed: {e:?}", matched.component);
            (component, problem(StatusCode::INTERNAL_SERVER_ERROR, "component_failed", "internal error"))
        }
    }
}

/// Whether `e` is an instantiation refused because the pooling allocator had no free slot.
fn pool_exhausted(e: &wasmtime::Error) -> bool {
    e.downcast_ref::<InstantiationError<()>>().is_some_and(|i| i.error.is::<wasmtime::PoolConcurrencyLimitError>())
}
