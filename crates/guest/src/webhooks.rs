//! Webhooks (`scenefin_core::webhooks`) as the partner scenarios serve them: the outbound POST, the delivery pass
//! that follows every request of a partner scenario ([`serve`]), the partner's own routes and the operator's
//! feed view.
//!
//! - `GET|PUT|DELETE /api/{scenario}/partners/webhook` (signed as the partner): its endpoint and delivery state;
//!   set it (`{url}`); remove it.
//! - `POST /api/{scenario}/partners/webhook/replay` `{event_id}` (signed): deliver one event again, now.
//! - `GET /api/{scenario}/partners/feeds` (operator, `viewer`): per partner, the feed's lag behind the partner's
//!   reading and its webhook's failures.

use std::time::Duration;

use scenefin_core::clock::Timestamp;
use scenefin_core::feed::{self, Ack};
use scenefin_core::json::DEFAULT_LIMIT_BYTES;
use scenefin_core::kv::{self, Key};
use scenefin_core::partners::{self, Partner};
use scenefin_core::settlement;
use scenefin_core::webhooks::{self, Message, Sent, Webhook};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::partners::Statements;
use crate::{OrProblem, Request, Response, Role, Route, json, json_response, request_time, require_role, split, store};

type Handled = Result<Response, Response>;

/// How long the endpoint has to accept the connection, and then to start answering.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves a request of scenario `owner` (as [`crate::serve`]), then — after any request but a plain read (a `GET`
/// outside `/partners/`) — for the partners with an endpoint, closes the statements of days that ended
/// (`statements`) and runs the webhook deliveries that are due: the events the request recorded, and retries whose
/// time has come. None of it changes the answer.
pub async fn serve(
    req: Request,
    owner: &str,
    statements: Statements,
    dispatch: impl AsyncFnOnce(Request, &Route) -> Result<Response, Response>,
) -> Response {
    // A customer's or operator's read records no event: only writes and partners' own calls (polls) look.
    let looks = req.method() != http::Method::GET || req.uri().path().contains("/partners/");
    let now = if looks { request_time(&req).await.ok() } else { None };
    let response = crate::serve(req, dispatch).await;
    if let Some(now) = now {
        after_request(owner, statements, now).await;
    }
    response
}

/// The webhook work after a request of scenario `owner` (see [`serve`]); failures are logged.
async fn after_request(owner: &str, statements: Statements, now: Timestamp) {
    let Ok(store) = store() else { return };
    let feeds = match webhooks::feeds(&store, owner).await {
        Ok(feeds) => feeds,
        Err(e) => return eprintln!("webhook feeds of {owner}: {e}"),
    };
    if feeds.is_empty() {
        return;
    }
    if let Some(spec) = statements {
        // The statements of days that ended, so partners without a poll learn of them too.
        let resources: Vec<(&str, &Key)> =
            feeds.iter().filter_map(|f| Some((scenefin_core::feed::resource_of(owner, f)?, f))).collect();
        if let Err(e) = settlement::close_due_all(&store, owner, &resources, spec, now).await {
            eprintln!("closing statements of {owner}: {e}");
        }
    }
    if let Err(e) = webhooks::deliver_due(&store, &feeds, now, send).await {
        eprintln!("webhook deliveries of {owner}: {e}");
    }
}

/// POSTs a message to its endpoint (Spin's outbound HTTP: the deployment's `allowed_outbound_hosts` decide where it
/// may go); the status, or why there is none.
pub async fn send(message: &Message) -> Sent {
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(&message.url)
        .header("content-type", "application/json")
        // A length, not chunks: some receivers (and proxies) refuse chunked requests.
        .header("content-length", message.body.len())
        .header("user-agent", "scenefin-webhooks/1")
        .header("webhook-id", &message.id)
        .header("webhook-timestamp", message.timestamp.to_string())
        .header("webhook-signature", &message.signature)
        .body(spin_sdk::http::FullBody::new(bytes::Bytes::from(message.body.clone())))
        .map_err(|e| format!("the request could not be built: {e}"))?;
    let options = spin_sdk::wasip3::http::types::RequestOptions::new();
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let _ = options.set_connect_timeout(Some(nanos(CONNECT_TIMEOUT)));
    let _ = options.set_first_byte_timeout(Some(nanos(FIRST_BYTE_TIMEOUT)));
    request.extensions_mut().insert(spin_sdk::wasip3::http_compat::RequestOptionsExtension(options));
    match spin_sdk::http::send(request).await {
        Ok(response) => Ok(response.status().as_u16()),
        Err(code) => Err(describe(&code)),
    }
}

/// A transport failure in words a partner can act on.
fn describe(code: &spin_sdk::wasip3::http::types::ErrorCode) -> String {
    use spin_sdk::wasip3::http::types::ErrorCode as E;
    match code {
        E::HttpRequestDenied => "the deployment does not allow this host (allowed_outbound_hosts)".into(),
        E::ConnectionRefused => "connection refused".into(),
        E::ConnectionTimeout => "no connection within 5 s".into(),
        E::ConnectionReadTimeout | E::HttpResponseTimeout => "no answer within 10 s".into(),
        E::DnsError(_) => "the host name does not resolve".into(),
        E::TlsCertificateError | E::TlsProtocolError | E::TlsAlertReceived(_) => "TLS failed".into(),
        other => format!("{other:?}").chars().take(200).collect(),
    }
}

/// `PUT …/partners/webhook` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointBody {
    /// `https://…` (or `http://` to a loopback host, for development).
    url: String,
}

/// `/api/{scenario}/partners/webhook` (signed as the partner; `GET`, `PUT {url}`, `DELETE`): the partner's endpoint
/// and how delivery stands; setting it starts delivery with the events recorded from then on.
pub async fn endpoint(req: Request, owner: &str, feed_of: impl Fn(&Partner) -> Key) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let method = req.method().clone();
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let partner = crate::require_partner(&head, &store, owner, &bytes, now).await?;
    let feed = feed_of(&partner);
    match method {
        http::Method::PUT => {
            let body: EndpointBody = json(&bytes, DEFAULT_LIMIT_BYTES).or_problem()?;
            webhooks::register(&store, &feed, &partner, owner, &body.url, now).await.or_problem()?;
        }
        http::Method::DELETE => {
            webhooks::remove(&store, &feed, now).await.or_problem()?;
        }
        _ => {}
    }
    let (hook, appended) = webhooks::status(&store, &feed).await.or_problem()?;
    let hook = hook.ok_or_else(|| crate::problem(&webhooks::WebhookError::NoEndpoint))?;
    Ok(json_response(
        200,
        &json!({
            "signing_secret_hint": "Standard Webhooks: whsec_ + base64 of your partner secret",
            "webhook": view(&hook, appended),
        }),
    ))
}

/// `POST …/partners/webhook/replay` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    /// The event's `id` in the feed.
    event_id: String,
}

/// `POST /api/{scenario}/partners/webhook/replay` `{event_id}` (signed): sends that event of the partner's feed to
/// its endpoint again, now; the attempt (delivered or not) is the answer and joins the log.
pub async fn replay(req: Request, owner: &str, feed_of: impl Fn(&Partner) -> Key) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let partner = crate::require_partner(&head, &store, owner, &bytes, now).await?;
    let body: ReplayBody = json(&bytes, DEFAULT_LIMIT_BYTES).or_problem()?;
    let attempt = webhooks::replay(&store, &feed_of(&partner), &body.event_id, now, send).await.or_problem()?;
    Ok(json_response(200, &json!({ "attempt": attempt })))
}

/// `GET /api/{scenario}/partners/feeds` (operator, `viewer`): every partner of scenario `owner` with its feed's
/// size, how far the partner has read it (`acknowledged`: the cursor of its latest poll) and its webhook's state,
/// including the deliveries given up on.
pub async fn feeds(req: Request, owner: &str, feed_of: impl Fn(&Partner) -> Key) -> Handled {
    require_role(&req, Role::Viewer).await?;
    let store = store()?;
    let list: Vec<Partner> =
        kv::read_indexed(&store, &partners::index_key(owner), |id| partners::partner_key(owner, id))
            .await
            .or_problem()?;
    let feeds: Vec<Key> = list.iter().map(&feed_of).collect();
    let keys: Vec<Key> =
        feeds.iter().flat_map(|f| [feed::counter_key(f), feed::ack_key(f), webhooks::key(f)]).collect();
    let raw = kv::get_all(&store, &keys).await.or_problem()?;
    let mut items = Vec::with_capacity(list.len());
    for (i, partner) in list.iter().enumerate() {
        let appended = kv::counter_of(&keys[3 * i], raw[3 * i].as_deref()).or_problem()?;
        let ack: Option<Ack> = kv::decode_doc(&keys[3 * i + 1], raw[3 * i + 1].as_deref()).or_problem()?;
        let hook: Option<Webhook> = kv::decode_doc(&keys[3 * i + 2], raw[3 * i + 2].as_deref()).or_problem()?;
        let acknowledged = ack.map_or(0, |a| a.after.min(appended));
        items.push(json!({
            "partner_id": partner.partner_id, "kind": partner.kind, "resource_id": partner.resource_id,
            "appended": appended, "acknowledged": acknowledged, "lag": appended - acknowledged,
            "acknowledged_at": ack.map(|a| a.at),
            "webhook": hook.map(|h| view(&h, appended)),
        }));
    }
    Ok(json_response(200, &json!({ "items": items })))
}

/// A webhook as partners and operators see it (the lease is internal).
fn view(hook: &Webhook, appended: i64) -> Value {
    json!({
        "url": hook.url, "active": hook.url.is_some(), "updated_at": hook.updated_at,
        "cursor": hook.cursor, "lag": (appended - hook.cursor).max(0), "attempts": hook.attempts,
        "next_attempt_at": hook.next_at, "failing_since": hook.failing_since, "last_error": hook.last_error,
        "failed": hook.failed, "recent": hook.log,
    })
}
