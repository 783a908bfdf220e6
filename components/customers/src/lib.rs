//! The customers component: One ID, sessions, channel codes, operator tags (HTTP adapter over customers-domain).
//!
//! | Method | Path | Who | What |
//! |---|---|---|---|
//! | POST | `/api/sessions` | anyone with a signed identity assertion | log in / register, get a session token |
//! | GET | `/api/me` | customer | own profile |
//! | GET | `/api/me/export` | customer | everything the bank holds in the profile, phone number in the clear, staff access |
//! | POST | `/api/me/erasure` | customer | erase personal information (the profile is pseudonymised) |
//! | PUT | `/api/me/consent` | customer | grant or withdraw marketing consent |
//! | POST | `/api/channels` | operator | create a channel code |
//! | GET | `/api/channels/{code}` | public | resolve a code (counts a visit) |
//! | GET | `/api/ops/customers/{id}` | operator | a customer's full profile |
//! | POST | `/api/ops/customers/{id}/tags` | operator | add an operator tag |
//! | DELETE | `/api/ops/customers/{id}/tags/{tag}` | operator | remove an operator tag |
//! | POST | `/api/ops/customers/{id}/events` | operator | record an offline activity (branch payment, backfill) |
//! | POST | `/api/ops/customers/tags/bulk` | marketing | add or remove a tag on up to 500 customers; a proposal when asked by staff (`bulk.rs`) |
//! | GET | `/api/ops/customers/approvals?state=pending`, `/api/ops/customers/approvals/{id}` | any staff | bulk tag proposals awaiting a checker |
//! | POST | `/api/ops/customers/approvals/{id}/approve`, `…/reject` | marketing, not the maker | a bulk tag change carried out once, or not at all |
//! | POST | `/api/ops/customers/{id}/unmask` | finance, with a reason | the phone number; the reason is logged on the customer |
//! | POST | `/api/staff/sessions` | staff with a signed assertion from the bank's identity provider | sign in, get a staff session token |
//! | GET | `/api/staff/me` | staff (or the break-glass token) | who the token acts as, with which roles |
//! | DELETE | `/api/staff/sessions/current` | staff | sign this session out |
//! | POST | `/api/staff/members/{staff_id}/revoke` | admin | end every session of a staff member |

mod bulk;
mod dto;
mod handlers;
mod privacy;
mod staff;

use http::Method;
use scenefin_guest::{Request, Response, Route, unmatched};
use spin_sdk::http_service;

type Handled = Result<Response, Response>;

#[http_service]
async fn handle(req: Request) -> Response {
    scenefin_guest::serve(req, dispatch).await
}

/// Routes a checked request to its handler.
async fn dispatch(req: Request, route: &Route) -> Handled {
    let segments = route.segments();
    match (&route.method, segments.as_slice()) {
        (_, ["api", "ops", "customers", "tags", "bulk"] | ["api", "ops", "customers", "approvals", ..]) => {
            bulk::dispatch(req, route).await
        }
        (&Method::POST, ["api", "sessions"]) => handlers::login(req).await,
        (&Method::GET, ["api", "me"]) => handlers::me(req).await,
        (&Method::GET, ["api", "me", "export"]) => privacy::export(req).await,
        (&Method::POST, ["api", "me", "erasure"]) => privacy::erase(req).await,
        (&Method::PUT, ["api", "me", "consent"]) => privacy::consent(req).await,
        (&Method::POST, ["api", "channels"]) => handlers::create_channel(req).await,
        (&Method::GET, ["api", "channels", code]) => handlers::resolve_channel(&req, code).await,
        (&Method::GET, ["api", "ops", "customers", id]) => handlers::ops_customer(&req, id).await,
        (&Method::POST, ["api", "ops", "customers", id, "tags"]) => handlers::add_tag(req, id).await,
        (&Method::DELETE, ["api", "ops", "customers", id, "tags", tag]) => handlers::remove_tag(&req, id, tag).await,
        (&Method::POST, ["api", "ops", "customers", id, "events"]) => handlers::record_event(req, id).await,
        (&Method::POST, ["api", "ops", "customers", id, "unmask"]) => privacy::unmask(req, id).await,
        (&Method::POST, ["api", "staff", "sessions"]) => staff::sign_in(req).await,
        (&Method::GET, ["api", "staff", "me"]) => staff::me(req).await,
        (&Method::DELETE, ["api", "staff", "sessions", "current"]) => staff::sign_out(req).await,
        (&Method::POST, ["api", "staff", "members", id, "revoke"]) => staff::revoke(req, id).await,
        (_, path) => unmatched(route, allowed(path)),
    }
}

/// The methods each path of the route table serves (their `Allow`, for 405s and OPTIONS); `None` for any other path.
fn allowed(path: &[&str]) -> Option<&'static str> {
    Some(match path {
        ["api", "sessions"] => "POST",
        ["api", "me"] => "GET",
        ["api", "me", "export"] => "GET",
        ["api", "me", "erasure"] => "POST",
        ["api", "me", "consent"] => "PUT",
        ["api", "channels"] => "POST",
        ["api", "channels", _] => "GET",
        ["api", "ops", "customers", _] => "GET",
        ["api", "ops", "customers", _, "tags" | "events" | "unmask"] => "POST",
        ["api", "ops", "customers", _, "tags", _] => "DELETE",
        ["api", "staff", "sessions"] => "POST",
        ["api", "staff", "me"] => "GET",
        ["api", "staff", "sessions", "current"] => "DELETE",
        ["api", "staff", "members", _, "revoke"] => "POST",
        _ => return None,
    })
}
