//! scenefin-guest: the one shared crate that touches spin-sdk and the WIT contract on the component side.
//!
//! - [`SpinStore`]: `scenefin_core::kv::Store` over `wasi:keyvalue` (store, atomics, batch) on the `default` store;
//! - request helpers: the route (method and path segments), the body with a size limit, headers, the test clock;
//! - responses: JSON and RFC 9457 problem+json, with internal causes logged, never shown;
//! - variables.
//!
//! spin-sdk 7 covers `spin:key-value`, `spin:variables` and `wasi:http`; it vendors `wasi:keyvalue` but exposes no
//! Rust API for it, so those bindings are generated here from the project's `wit/`.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use scenefin_core::clock::{Clock, SystemClock, Timestamp};
use scenefin_core::json::DEFAULT_LIMIT_BYTES;
use scenefin_core::kv::{Key, Store, StoreError};
use scenefin_core::problem::{ApiError, ErrorKind, Problem, problem_json};
use serde::Serialize;
use serde::de::DeserializeOwned;
use spin_sdk::http::FullBody;

pub use scenefin_core::staff::{Actor, Role};
pub use spin_sdk::http::Request;

/// Generated bindings for `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics`, `batch`).
#[allow(missing_docs, clippy::all)]
pub mod wasi_keyvalue {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../wit",
        world: "scenefin:platform/keyvalue",
        generate_all,
    });

    pub use wasi::keyvalue::{atomics, batch, store};
}

use wasi_keyvalue::{atomics, batch, store};

pub mod approvals;
pub mod audit;
pub mod orders;
pub mod partners;
pub mod webhooks;

/// The response type every handler returns.
pub type Response = http::Response<FullBody<Bytes>>;

/// The `default` store through `wasi:keyvalue`.
pub struct SpinStore {
    bucket: store::Bucket,
}

fn backend(e: store::Error) -> StoreError {
    StoreError::Backend(match e {
        store::Error::NoSuchStore => "no such store".to_owned(),
        store::Error::AccessDenied => "access to the store denied".to_owned(),
        store::Error::Other(msg) => msg,
    })
}

impl SpinStore {
    /// Opens the `default` store.
    pub fn open_default() -> Result<Self, StoreError> {
        store::open("default").map(|bucket| Self { bucket }).map_err(backend)
    }
}

impl Store for SpinStore {
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.bucket.get(key.as_str()).map_err(backend)
    }

    async fn set(&self, key: &Key, value: &[u8]) -> Result<(), StoreError> {
        self.bucket.set(key.as_str(), value).map_err(backend)
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.bucket.delete(key.as_str()).map_err(backend)
    }

    async fn increment(&self, key: &Key, delta: i64) -> Result<i64, StoreError> {
        atomics::increment(&self.bucket, key.as_str(), delta).map_err(backend)
    }

    async fn cas(&self, key: &Key, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StoreError> {
        let (cas, current) = self.cas_open(key).await?;
        if current.as_deref() != expected {
            return Ok(false);
        }
        self.cas_swap(cas, new).await
    }

    type Cas = atomics::Cas;

    async fn cas_open(&self, key: &Key) -> Result<(Self::Cas, Option<Vec<u8>>), StoreError> {
        let cas = atomics::Cas::new(&self.bucket, key.as_str()).map_err(backend)?;
        let current = cas.current().map_err(backend)?;
        Ok((cas, current))
    }

    async fn cas_swap(&self, cas: Self::Cas, new: &[u8]) -> Result<bool, StoreError> {
        match atomics::swap(cas, new) {
            Ok(()) => Ok(true),
            Err(atomics::CasError::CasFailed(_)) => Ok(false),
            Err(atomics::CasError::StoreError(e)) => Err(backend(e)),
        }
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        // Spin's Redis store sends `KEYS k1 k2 ...` for a batch get: an arity error for two keys or more, a panic in
        // its client for one key that exists. So one key is a plain get, and a batch the store refuses falls back to
        // single gets for the life of the instance (the store does not change under it).
        if keys.len() == 1 || BATCH_UNSUPPORTED.load(Ordering::Relaxed) {
            return self.get_each(keys);
        }
        let names: Vec<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
        let found = match batch::get_many(&self.bucket, &names) {
            Ok(found) => found,
            Err(_) => {
                BATCH_UNSUPPORTED.store(true, Ordering::Relaxed);
                return self.get_each(keys);
            }
        };
        let mut map: std::collections::HashMap<String, Option<Vec<u8>>> = found.into_iter().collect();
        Ok(names.iter().map(|k| map.remove(k).flatten()).collect())
    }

    async fn creation_lease_secs(&self) -> i64 {
        variable("kv_creation_lease_secs")
            .await
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|secs| *secs > 0)
            .unwrap_or(scenefin_core::kv::CREATION_LEASE_SECS)
    }

    async fn pause(&self, attempt: u32) {
        // Jittered backoff: up to 1, 2, 4 ... ms, at most 64 ms, so writers contending for one document spread out.
        let ceiling_us = 1_000u64 << attempt.saturating_sub(1).min(6);
        let jitter = scenefin_core::ids::random_bytes::<4>().map(u32::from_le_bytes).unwrap_or(0);
        let micros = u64::from(jitter) % ceiling_us + 100;
        spin_sdk::wasip3::clocks::monotonic_clock::wait_for(micros * 1_000).await;
    }
}

/// Set once a batch get failed: this instance's store cannot do batches (Spin's Redis store).
static BATCH_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

impl SpinStore {
    fn get_each(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.bucket.get(k.as_str()).map_err(backend)).collect()
    }
}

/// A Spin variable, `None` when undefined or empty.
pub async fn variable(name: &str) -> Option<String> {
    spin_sdk::variables::get(name).await.ok().filter(|v| !v.is_empty())
}

/// A required Spin variable; its absence is a deployment error (500, logged).
pub async fn required_variable(name: &str) -> Result<String, ApiError> {
    variable(name).await.ok_or_else(|| ApiError::internal(format!("variable `{name}` is not set")))
}

/// The request's method and path segments (of the full path, so one component can serve several routes).
pub struct Route {
    /// Method, upper-case.
    pub method: http::Method,
    segments: Vec<String>,
    /// The query string, if any.
    pub query: Option<String>,
}

impl Route {
    /// Reads the route of `req`.
    pub fn of<B>(req: &http::Request<B>) -> Route {
        let segments = req.uri().path().split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
        Route { method: req.method().clone(), segments, query: req.uri().query().map(str::to_owned) }
    }

    /// Reads the route of an API request, refusing a query parameter given with an empty value (`?to=`): every
    /// documented query parameter has a non-empty form, and "empty means absent" would let a typo pass unnoticed.
    /// `400 validation_failed` naming the parameter.
    pub fn checked<B>(req: &http::Request<B>) -> Result<Route, Response> {
        let route = Route::of(req);
        let empty =
            route.query.as_deref().unwrap_or_default().split('&').filter(|pair| !pair.is_empty()).find_map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                value.is_empty().then(|| percent_decode(name))
            });
        match empty {
            Some(name) => {
                Err(problem(&ApiError::validation(name.clone(), format!("{name}: must not be empty when given"))))
            }
            None => Ok(route),
        }
    }

    /// Path segments, for matching: `match route.segments().as_slice() { ["api", "me"] => ... }`.
    pub fn segments(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }

    /// A page size from query parameter `limit`: a whole number from 1 to `max`, `default` when absent.
    /// Anything else is `400 validation_failed` naming `limit`, never clamped or ignored.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        let Some(raw) = self.query_param("limit") else {
            return Ok(default);
        };
        raw.parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::validation("limit", format!("limit: a whole number from 1 to {max}")))
    }

    /// A query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(&v.replace('+', " ")))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A request header as a string.
pub fn header<'a, B>(req: &'a http::Request<B>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A request's head: method, URI and headers, without the body.
pub type Head = http::Request<()>;

/// Reads the body (at most `limit` bytes) and keeps the head for headers.
pub async fn split(req: Request, limit: usize) -> Result<(Head, Bytes), Response> {
    let (parts, incoming) = req.into_parts();
    let head = http::Request::from_parts(parts, ());
    let bytes = read_limited(incoming, declared_length(&head), limit).await.or_problem()?;
    Ok((head, bytes))
}

/// Reads the whole body, refusing more than `limit` bytes (413).
pub async fn body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let declared = declared_length(&req);
    read_limited(req.into_body(), declared, limit).await
}

/// How much of a body over the limit is still read (and dropped) before the 413 is sent. A client is usually still
/// sending when the answer is ready, and Spin cuts the response off when the request body is left unread (the
/// client sees the connection close mid-answer); past this size the answer goes out at once all the same.
const DRAIN_LIMIT_BYTES: usize = 4 << 20;

fn declared_length<B>(req: &http::Request<B>) -> Option<usize> {
    header(req, "content-length").and_then(|v| v.parse::<usize>().ok())
}

/// The body if it is at most `limit` bytes; otherwise a 413 after reading (and dropping) the rest of it, up to
/// [`DRAIN_LIMIT_BYTES`].
async fn read_limited<B>(body: B, declared: Option<usize>, limit: usize) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt as _;

    if let Some(len) = declared.filter(|len| *len > DRAIN_LIMIT_BYTES) {
        return Err(too_large(len, limit));
    }
    let mut body = std::pin::pin!(body);
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(ErrorKind::Invalid, "bad_request_body", format!("could not read the body: {e:?}"))
        })?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            kept.extend_from_slice(&data);
        } else if seen > DRAIN_LIMIT_BYTES {
            break;
        }
    }
    let len = seen.max(declared.unwrap_or(0));
    if len > limit {
        return Err(too_large(len, limit));
    }
    Ok(Bytes::from(kept))
}

fn too_large(len: usize, limit: usize) -> ApiError {
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        "payload_too_large",
        format!("request body is {len} bytes; the limit is {limit}"),
    )
}

/// Decodes a JSON body with a size limit into a DTO (see `scenefin_core::json::decode`).
pub fn json<T: DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, ApiError> {
    scenefin_core::json::decode(body, limit)
}

/// The time rules use for this request: `X-Scenefin-Now` when `test_clock_enabled` is `true`, else the system clock.
pub fn now<B>(req: &http::Request<B>, test_clock_enabled: bool) -> Result<Timestamp, ApiError> {
    match header(req, "x-scenefin-now") {
        Some(value) if test_clock_enabled => {
            Timestamp::parse_rfc3339(value).map_err(|e| ApiError::validation("X-Scenefin-Now", e.to_string()))
        }
        _ => Ok(SystemClock.now()),
    }
}

/// A JSON response.
pub fn json_response(status: u16, value: &impl Serialize) -> Response {
    json_response_with(status, &mut |ser| value.serialize(ser))
}

/// [`json_response`] but for writing the value, compiled once (component size).
fn json_response_with(
    status: u16,
    write: &mut dyn FnMut(&mut serde_json::Serializer<&mut Vec<u8>>) -> serde_json::Result<()>,
) -> Response {
    let mut body = Vec::with_capacity(128);
    match write(&mut serde_json::Serializer::new(&mut body)) {
        Ok(()) => raw_response(status, "application/json", body),
        Err(e) => problem(&ApiError::internal(format!("encoding response: {e}"))),
    }
}

/// A response with the given content type and body.
pub fn raw_response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response {
    let mut res = http::Response::new(FullBody::new(body.into()));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        res.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Renders a problem as RFC 9457 problem+json. Internal problems are logged with their cause and shown as
/// "internal error". Not generic: one copy serves every error type (component size).
pub fn problem(p: &dyn Problem) -> Response {
    if p.kind() == ErrorKind::Internal {
        eprintln!("internal error ({}): {p}", p.code());
    }
    let body = problem_json(p);
    let mut res = raw_response(p.kind().status(), "application/problem+json", body.to_string());
    if p.kind() == ErrorKind::Unauthenticated
        && let Ok(v) = HeaderValue::from_str("Bearer")
    {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

/// Every API component's request handling: the route checked (`400` for empty query values), the request routed by
/// `dispatch`, and a write with operator or partner credentials recorded in the audit log once answered
/// ([`audit`]).
pub async fn serve(
    req: Request,
    dispatch: impl AsyncFnOnce(Request, &Route) -> Result<Response, Response>,
) -> Response {
    let route = match Route::checked(&req) {
        Ok(route) => route,
        Err(response) => return response,
    };
    let audit = audit::begin(&req).await;
    let response = dispatch(req, &route).await.unwrap_or_else(|response| response);
    audit::finish(audit, &response).await;
    response
}

/// Turns any `Result<T, impl Problem>` into `Result<T, Response>`, so handlers can use `?` and return problems.
pub trait OrProblem<T> {
    /// The value, or the error rendered as problem+json.
    fn or_problem(self) -> Result<T, Response>;
}

impl<T, E: Problem> OrProblem<T> for Result<T, E> {
    fn or_problem(self) -> Result<T, Response> {
        self.map_err(|e| problem(&e))
    }
}

/// The operator acting through this request, if they may act in `role` (`403 forbidden_role` otherwise): a staff
/// member with a session token (`Authorization: Bearer stf.…`, checked against `session_secret`, not revoked nor
/// signed out), or the break-glass operator token (variable `operator_token`, constant-time), which holds every
/// role and is logged loudly on every use.
pub async fn require_role<B>(req: &http::Request<B>, role: Role) -> Result<Actor, Response> {
    let actor = require_staff(req).await?;
    actor.require(role).or_problem()?;
    Ok(actor)
}

/// The operator acting through this request, whatever their roles (see [`require_role`]).
pub async fn require_staff<B>(req: &http::Request<B>) -> Result<Actor, Response> {
    let authorization = header(req, "authorization");
    match scenefin_core::auth::bearer(authorization) {
        Some(token) if scenefin_core::staff::is_staff_token(token) => {
            let secret = required_variable("session_secret").await.or_problem()?;
            let now = request_time(req).await?;
            let session =
                scenefin_core::staff::verify_staff_session(secret.as_bytes(), token, now.unix_secs()).or_problem()?;
            let keys = [
                scenefin_core::staff::keys::revoked(&session.staff_id),
                scenefin_core::staff::keys::signed_out(&session.sid),
            ];
            let values = scenefin_core::kv::get_all(&store()?, &keys).await.or_problem()?;
            let revoked: Option<scenefin_core::staff::Revocation> =
                scenefin_core::kv::decode_doc(&keys[0], values[0].as_deref()).or_problem()?;
            scenefin_core::staff::check_revoked(&session, revoked.as_ref(), values[1].is_some()).or_problem()?;
            Ok(Actor::Staff(session))
        }
        _ => {
            let expected = required_variable("operator_token").await.or_problem()?;
            scenefin_core::auth::verify_operator(&expected, authorization).or_problem()?;
            eprintln!(
                "BREAK-GLASS: the operator token was used for {} {}; staff should sign in as themselves",
                req.method(),
                req.uri().path()
            );
            Ok(Actor::BreakGlass)
        }
    }
}

/// Whether the request carries operator credentials at all (`Authorization`): such a request is judged as an
/// operator's ([`require_role`]), never as a partner's.
pub fn has_operator_credentials<B>(req: &http::Request<B>) -> bool {
    header(req, "authorization").is_some()
}

/// The personal-information keys (`scenefin_core::pii`): `pii_secret`, and `pii_secret_previous` during a rotation.
pub async fn pii_keys() -> Result<scenefin_core::pii::PiiKeys, Response> {
    let current = required_variable("pii_secret").await.or_problem()?;
    let previous = variable("pii_secret_previous").await;
    Ok(scenefin_core::pii::PiiKeys::new(current.as_bytes(), previous.as_deref().map(str::as_bytes)))
}

/// The customer a session token (`Authorization: Bearer`) belongs to, checked against `session_secret`.
pub async fn require_customer<B>(req: &http::Request<B>, now: Timestamp) -> Result<String, Response> {
    let secret = required_variable("session_secret").await.or_problem()?;
    let token = scenefin_core::auth::bearer(header(req, "authorization"))
        .ok_or(scenefin_core::auth::AuthError::MissingCredentials("Authorization: Bearer <session token>"))
        .or_problem()?;
    let claims = scenefin_core::auth::verify_session(secret.as_bytes(), token, now.unix_secs()).or_problem()?;
    Ok(claims.customer_id)
}

/// An operator in `role`, or the partner of `resource_id` itself through a signed request; returns who it was
/// (the staff id, `break-glass`, or the partner id).
pub async fn operator_or_partner<B>(
    req: &http::Request<B>,
    store: &SpinStore,
    owner: &str,
    role: Role,
    resource_id: &str,
    body: &[u8],
    now: Timestamp,
) -> Result<String, Response> {
    let caller = require_operator_or_partner(req, store, owner, role, body, now).await?;
    caller.require(resource_id)?;
    Ok(caller.id().to_owned())
}

/// Who an operator-or-partner call comes from: authenticated, not yet checked against a resource (for routes that
/// must read something to learn its resource, and must not read anything before authenticating).
pub enum Caller {
    /// An operator holding the route's role.
    Operator(Actor),
    /// A partner, through a signed request.
    Partner(scenefin_core::partners::Partner),
}

impl Caller {
    /// The staff id, `break-glass`, or the partner id.
    pub fn id(&self) -> &str {
        match self {
            Caller::Operator(actor) => actor.id(),
            Caller::Partner(p) => &p.partner_id,
        }
    }

    /// Refuses a partner acting on a resource that is not its own (an operator acts on any).
    pub fn require(&self, resource_id: &str) -> Result<(), Response> {
        match self {
            Caller::Operator(_) => Ok(()),
            Caller::Partner(p) => p.require(resource_id).or_problem(),
        }
    }
}

/// An operator in `role` (when the request carries `Authorization`), or else a partner through a signed request
/// (signature, timestamp window and nonce checked).
pub async fn require_operator_or_partner<B>(
    req: &http::Request<B>,
    store: &SpinStore,
    owner: &str,
    role: Role,
    body: &[u8],
    now: Timestamp,
) -> Result<Caller, Response> {
    if has_operator_credentials(req) {
        return Ok(Caller::Operator(require_role(req, role).await?));
    }
    Ok(Caller::Partner(require_partner(req, store, owner, body, now).await?))
}

/// A signed partner request's partner (signature, timestamp window and nonce checked).
pub async fn require_partner<B>(
    req: &http::Request<B>,
    store: &SpinStore,
    owner: &str,
    body: &[u8],
    now: Timestamp,
) -> Result<scenefin_core::partners::Partner, Response> {
    let method = req.method().as_str().to_owned();
    scenefin_core::partners::authenticate(store, owner, &method, &path_and_query(req), partner_headers(req), body, now)
        .await
        .or_problem()
}

/// The signed-request headers of a partner call.
pub fn partner_headers<B>(req: &http::Request<B>) -> scenefin_core::partners::SignedHeaders<'_> {
    scenefin_core::partners::SignedHeaders {
        partner_id: header(req, "x-partner-id"),
        timestamp: header(req, "x-timestamp"),
        nonce: header(req, "x-nonce"),
        signature: header(req, "x-signature"),
    }
}

/// The path and query, as partners sign it.
pub fn path_and_query<B>(req: &http::Request<B>) -> String {
    req.uri().path_and_query().map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned())
}

/// Verifies a payment gateway notification (Standard Webhooks, secret in variable `gateway_secret`).
pub async fn verify_gateway<B>(req: &http::Request<B>, body: &[u8], now: Timestamp) -> Result<(), Response> {
    let secret = required_variable("gateway_secret").await.or_problem()?;
    let missing = |h: &'static str| scenefin_core::auth::AuthError::MissingCredentials(h);
    let id = header(req, "webhook-id").ok_or(missing("webhook-id")).or_problem()?;
    let timestamp = header(req, "webhook-timestamp").ok_or(missing("webhook-timestamp")).or_problem()?;
    let signature = header(req, "webhook-signature").ok_or(missing("webhook-signature")).or_problem()?;
    scenefin_core::auth::verify_webhook(&secret, id, timestamp, signature, body, now.unix_secs()).or_problem()
}

/// The bank's own card BINs (variable `bank_card_bins`).
pub async fn bank_card_bins() -> Vec<String> {
    scenefin_core::orders::parse_bins(&variable("bank_card_bins").await.unwrap_or_default())
}

/// Runs `op` under the request's `Idempotency-Key` (Stripe semantics) and returns its (possibly replayed) response.
pub async fn idempotent<B, F, Fut>(
    store: &SpinStore,
    req: &http::Request<B>,
    component: &str,
    principal: &str,
    body: &[u8],
    now: Timestamp,
    op: F,
) -> Result<Response, Response>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let key = header(req, "idempotency-key");
    let fingerprint = fingerprint(req.method(), req.uri().path(), body);
    let recorded = scenefin_core::idempotency::run(store, now, component, principal, key, fingerprint, || async {
        record(op().await).await
    })
    .await;
    replay(recorded)
}

/// What identifies an idempotent request: `METHOD /path` and its body.
fn fingerprint(method: &http::Method, path: &str, body: &[u8]) -> scenefin_core::idempotency::Fingerprint {
    scenefin_core::idempotency::Fingerprint::of(&format!("{method} {path}"), body)
}

/// A response as the idempotency record keeps it.
async fn record(res: Response) -> scenefin_core::idempotency::Recorded {
    let status = res.status().as_u16();
    let content_type =
        res.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_owned();
    let body = http_body_util_collect(res).await;
    scenefin_core::idempotency::Recorded { status, content_type, body }
}

/// The (possibly replayed) response of an idempotent request, or its problem.
fn replay(
    recorded: Result<scenefin_core::idempotency::Recorded, scenefin_core::idempotency::IdempotencyError>,
) -> Result<Response, Response> {
    let recorded = recorded.or_problem()?;
    Ok(raw_response(recorded.status, &recorded.content_type, recorded.body))
}

async fn http_body_util_collect(res: Response) -> String {
    use http_body_util::BodyExt;
    match res.into_body().collect().await {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).into_owned(),
        Err(never) => match never {},
    }
}

/// Whether variable `test_clock_enabled` is `true`.
pub async fn test_clock_enabled() -> bool {
    variable("test_clock_enabled").await.is_some_and(|v| v == "true")
}

/// The time for this request (see [`now`]), honouring `test_clock_enabled`.
pub async fn request_time<B>(req: &http::Request<B>) -> Result<Timestamp, Response> {
    now(req, test_clock_enabled().await).or_problem()
}

/// Lifecycle thresholds from variables (`lifecycle_*`), defaulting to the brief's values.
pub async fn lifecycle_rules() -> scenefin_core::customers::LifecycleRules {
    let mut rules = scenefin_core::customers::LifecycleRules::default();
    async fn num<T: std::str::FromStr>(name: &str) -> Option<T> {
        variable(name).await.and_then(|v| v.parse().ok())
    }
    if let Some(v) = num("lifecycle_engaged_min_payments").await {
        rules.engaged_min_payments = v;
    }
    if let Some(v) = num("lifecycle_engaged_window_days").await {
        rules.engaged_window_days = v;
    }
    if let Some(v) = num("lifecycle_high_value_min_fen").await {
        rules.high_value_min_fen = v;
    }
    if let Some(v) = num("lifecycle_high_value_window_days").await {
        rules.high_value_window_days = v;
    }
    if let Some(v) = num("lifecycle_high_value_min_scenarios").await {
        rules.high_value_min_scenarios = v;
    }
    if let Some(v) = num("lifecycle_dormant_after_days").await {
        rules.dormant_after_days = v;
    }
    rules
}

/// A public directory (`{items: [{id, name, city}], next: null}`): what a customer picks a school or a community
/// from, and nothing private.
pub fn directory<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str, Option<&'a str>)>) -> Response {
    let items: Vec<serde_json::Value> = entries
        .into_iter()
        .map(|(id, name, city)| serde_json::json!({ "id": id, "name": name, "city": city }))
        .collect();
    json_response(200, &serde_json::json!({ "items": items, "next": null }))
}

/// `404 not_found` for a path no route matches.
pub fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

/// The answer to a request no route of a component's table matched, given the methods its path serves (`allow`,
/// e.g. `"GET, POST"`; `None` for a path the component does not serve): `OPTIONS` is `204` and any other method
/// `405` (RFC 9110 §15.5.6), both with `Allow` (those methods and `OPTIONS`); `404` on a path not served.
pub fn unmatched(route: &Route, allow: Option<&str>) -> Result<Response, Response> {
    let Some(methods) = allow else { return Err(problem(&no_route())) };
    let options = route.method == http::Method::OPTIONS;
    let mut res = if options {
        let mut res = http::Response::new(FullBody::new(Bytes::new()));
        *res.status_mut() = StatusCode::NO_CONTENT;
        res
    } else {
        problem(&ApiError::method_not_allowed())
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{methods}, OPTIONS")) {
        res.headers_mut().insert(header::ALLOW, v);
    }
    if options { Ok(res) } else { Err(res) }
}

/// The `default` store, or the problem response to send.
pub fn store() -> Result<SpinStore, Response> {
    SpinStore::open_default().or_problem()
}

/// The request's JSON body (at most [`DEFAULT_LIMIT_BYTES`]), decoded, or the problem response to send.
pub async fn decode<T: DeserializeOwned>(req: Request) -> Result<T, Response> {
    json(&body(req, DEFAULT_LIMIT_BYTES).await.or_problem()?, DEFAULT_LIMIT_BYTES).or_problem()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_escapes_and_garbage() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("%E4%B8%AD"), "中");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
