//! The audit hook every API component wraps its routes in (`scenefin_core::audit`): a mutating request that carries
//! operator or partner credentials is recorded once its response is decided — who (the staff id from the verified
//! session token, `break-glass`, or the partner), what (method, path and query), when, from where (the runtime's
//! client address), the result (status) and, where the handler gives one ([`summarize`]), what changed, before →
//! after.
//!
//! Recorded: staff and break-glass requests with any status but `401` (their credential is verified here again:
//! an HMAC, no store read), partner requests with any status but `401` and `400` (a partner's signature is checked
//! by the handler before anything else but input that fails before it, so those two do not prove who sent it).
//! Not recorded: reads, customers, the payment gateway. Best effort: the response is already decided, so a failed
//! append is logged, and a crash between the response and the append loses that entry.

use http::Method;
use scenefin_core::audit::{self, Entry};
use scenefin_core::clock::Timestamp;
use scenefin_core::staff;

use crate::{Response, SpinStore, header, path_and_query, request_time, variable};

/// What a handler says changed, for the audit entry of its request ([`summarize`]).
#[derive(Clone)]
struct Summary(String);

/// Gives the audit entry of the request `response` answers a before → after summary (`tag vip_guest: absent →
/// present`). It travels in the response's extensions, never on the wire.
pub fn summarize(mut response: Response, summary: impl Into<String>) -> Response {
    response.extensions_mut().insert(Summary(summary.into()));
    response
}

/// A request being audited.
pub struct Audit {
    method: String,
    path: String,
    bearer: Option<String>,
    partner: Option<String>,
    from: Option<String>,
    at: Timestamp,
}

/// Starts auditing `req` when it is a write carrying operator or partner credentials.
pub async fn begin<B>(req: &http::Request<B>) -> Option<Audit> {
    if !matches!(*req.method(), Method::POST | Method::PUT | Method::DELETE | Method::PATCH) {
        return None;
    }
    let bearer = scenefin_core::auth::bearer(header(req, "authorization")).map(str::to_owned);
    let partner = header(req, "x-partner-id").map(str::to_owned);
    if bearer.is_none() && partner.is_none() {
        return None;
    }
    Some(Audit {
        method: req.method().as_str().to_owned(),
        path: path_and_query(req),
        bearer,
        partner,
        from: header(req, "spin-client-addr").or_else(|| header(req, "x-forwarded-for")).map(str::to_owned),
        at: request_time(req).await.ok()?,
    })
}

/// Records the audited request with its response's status (see the module docs for what is recorded).
pub async fn finish(audit: Option<Audit>, response: &Response) {
    let Some(a) = audit else { return };
    let status = response.status().as_u16();
    if status == 401 {
        return;
    }
    let Some(secret) = variable("session_secret").await else { return };
    let (actor, kind) = match (&a.bearer, &a.partner) {
        (Some(token), _) if staff::is_staff_token(token) => {
            match staff::verify_staff_session(secret.as_bytes(), token, a.at.unix_secs()) {
                Ok(session) => (session.staff_id, "staff"),
                Err(_) => return,
            }
        }
        (Some(token), _) => {
            let expected = variable("operator_token").await.unwrap_or_default();
            if scenefin_core::auth::verify_operator(&expected, Some(&format!("Bearer {token}"))).is_err() {
                return; // a customer's session
            }
            ("break-glass".to_owned(), "break_glass")
        }
        (None, Some(partner)) if status != 400 => (partner.clone(), "partner"),
        _ => return,
    };
    let entry = Entry {
        v: 1,
        day: 0,
        seq: 0,
        at: a.at,
        actor,
        actor_kind: kind.to_owned(),
        method: a.method,
        path: a.path,
        status,
        from: a.from,
        summary: response.extensions().get::<Summary>().map(|s| s.0.chars().take(500).collect()),
        mac: String::new(),
    };
    let recorded = match SpinStore::open_default() {
        Ok(store) => audit::append(&store, &audit::audit_key(secret.as_bytes()), entry).await.map(drop),
        Err(e) => Err(e),
    };
    if let Err(e) = recorded {
        eprintln!("audit: could not record a {status} answer: {e}");
    }
}
