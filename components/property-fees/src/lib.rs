//! The property-fees component: communities, rooms, fee bills, owner claims, quote → order → notify, refunds,
//! perks and reports (HTTP adapter over property-fees-domain and scenefin-core's payment flow).
//!
//! | Method | Path | Who |
//! |---|---|---|
//! | POST | `/api/property/communities` | operator |
//! | GET | `/api/property/communities` | public: the communities an owner can claim a room in (id, name, city) |
//! | PUT | `/api/property/communities/{id}/rooms` | the property company (signed) |
//! | PUT | `/api/property/communities/{id}/bills` | the property company (signed) |
//! | GET | `/api/property/communities/{id}/perks` | public |
//! | GET | `/api/property/communities/{id}/stats` | the property company (signed) or operator |
//! | GET | `/api/property/communities/{id}/settlement?date=YYYY-MM-DD` | the property company (signed) or operator |
//! | POST, GET | `/api/property/households` | customer |
//! | POST | `/api/property/quotes` | customer |
//! | POST | `/api/property/orders` (Idempotency-Key) | customer |
//! | GET | `/api/property/orders?cursor=&limit=`, `/api/property/orders/{id}` | customer |
//! | POST | `/api/property/payments/notify` | payment gateway (Standard Webhooks) |
//! | POST | `/api/property/payments/refund-notify` | payment gateway (Standard Webhooks): the money of a payment exception was returned |
//! | POST | `/api/property/orders/{id}/refund` (Idempotency-Key) | operator or the property company (signed) |
//! | POST | `/api/property/refund-approvals/{id}/approve` | finance staff other than the maker: carries out a proposed refund, once |
//! | POST | `/api/property/refund-approvals/{id}/reject` | finance staff (or the maker withdrawing it): the proposed refund is not made |
//! | GET | `/api/property/refund-approvals/{id}` | finance staff: a proposed refund as it stands |
//! | GET | `/api/property/approvals?state=pending`, `/api/property/approvals/{id}` | any staff: proposals (refunds, registrations, rotations) awaiting a checker |
//! | POST | `/api/property/approvals/{id}/approve`, `…/reject` | staff holding the proposal's role, other than its maker: carried out once, or not at all |
//! | GET | `/api/property/partners/events?after=&limit=` | the property company (signed): its community's event feed (`fee.paid`, `fee.refunded`), in order, each event once |
//! | GET, PUT, DELETE | `/api/property/partners/webhook` | the property company (signed): its webhook endpoint and delivery state; set (`{url}`), remove |
//! | POST | `/api/property/partners/webhook/replay` | the property company (signed): `{event_id}` delivered again, now |
//! | GET | `/api/property/partners/feeds` | operator (`viewer`): per partner, the feed's lag and failed webhook deliveries |
//! | POST | `/api/property/partners/{partner_id}/rotate-secret`, `…/revoke-previous-secret` | operator: a partner's new secret (the old one accepted for `overlap_secs`, default a day), or the overlap ended early |

mod handlers;

use http::Method;
use property_fees_domain::OWNER;
use scenefin_guest::approvals::{self, scope};
use scenefin_guest::{Request, Response, Route, unmatched};
use spin_sdk::http_service;

type Handled = Result<Response, Response>;

/// The daily settlement statements whose closing partners read as `statement.closed` events.
const STATEMENTS: scenefin_guest::partners::Statements = Some(property_fees_domain::reports::statement_spec);

#[http_service]
async fn handle(req: Request) -> Response {
    scenefin_guest::webhooks::serve(req, OWNER, STATEMENTS, dispatch).await
}

/// Routes a checked request to its handler.
async fn dispatch(req: Request, route: &Route) -> Handled {
    let segments = route.segments();
    match (&route.method, segments.as_slice()) {
        (&Method::POST, ["api", "property", "communities"]) => handlers::register(req).await,
        (&Method::GET, ["api", "property", "communities"]) => handlers::list_communities().await,
        (&Method::PUT, ["api", "property", "communities", id, "rooms"]) => handlers::rooms(req, id).await,
        (&Method::PUT, ["api", "property", "communities", id, "bills"]) => handlers::bills(req, id).await,
        (&Method::GET, ["api", "property", "communities", id, "perks"]) => handlers::perks(id).await,
        (&Method::GET, ["api", "property", "communities", id, "stats"]) => handlers::stats(req, id).await,
        (&Method::GET, ["api", "property", "communities", id, "settlement"]) => {
            handlers::settlement(req, route, id).await
        }
        (&Method::POST, ["api", "property", "households"]) => handlers::claim(req).await,
        (&Method::GET, ["api", "property", "households"]) => handlers::households(&req).await,
        (&Method::POST, ["api", "property", "quotes"]) => handlers::quote(req).await,
        (&Method::POST, ["api", "property", "orders"]) => handlers::place_order(req).await,
        (&Method::GET, ["api", "property", "orders"]) => handlers::orders(&req, route).await,
        (&Method::GET, ["api", "property", "orders", id]) => handlers::order(&req, id).await,
        (&Method::POST, ["api", "property", "orders", id, "refund"]) => handlers::refund(req, id).await,
        (&Method::GET, ["api", "property", "approvals"]) => approvals::list(&req, route, OWNER).await,
        (&Method::GET, ["api", "property", kind @ ("approvals" | "refund-approvals"), id]) => {
            approvals::get(&req, OWNER, id, scope(kind)).await
        }
        (&Method::POST, ["api", "property", kind @ ("approvals" | "refund-approvals"), id, "approve"]) => {
            approvals::approve(req, OWNER, id, scope(kind), handlers::execute).await
        }
        (&Method::POST, ["api", "property", kind @ ("approvals" | "refund-approvals"), id, "reject"]) => {
            approvals::reject(req, OWNER, id, scope(kind)).await
        }
        (&Method::POST, ["api", "property", "payments", "notify"]) => handlers::notify(req).await,
        (&Method::POST, ["api", "property", "payments", "refund-notify"]) => {
            scenefin_guest::orders::refund_notify(req, OWNER, property_fees_domain::pricing::community_of).await
        }
        (&Method::GET | &Method::PUT | &Method::DELETE, ["api", "property", "partners", "webhook"]) => {
            scenefin_guest::webhooks::endpoint(req, OWNER, scenefin_guest::partners::feed_of(OWNER)).await
        }
        (&Method::POST, ["api", "property", "partners", "webhook", "replay"]) => {
            scenefin_guest::webhooks::replay(req, OWNER, scenefin_guest::partners::feed_of(OWNER)).await
        }
        (&Method::GET, ["api", "property", "partners", "feeds"]) => {
            scenefin_guest::webhooks::feeds(req, OWNER, scenefin_guest::partners::feed_of(OWNER)).await
        }
        (&Method::GET, ["api", "property", "partners", "events"]) => {
            scenefin_guest::partners::events(req, route, OWNER, STATEMENTS).await
        }
        (&Method::POST, ["api", "property", "partners", id, "rotate-secret"]) => {
            scenefin_guest::partners::rotate_secret(req, OWNER, id, handlers::execute).await
        }
        (&Method::POST, ["api", "property", "partners", id, "revoke-previous-secret"]) => {
            scenefin_guest::partners::revoke_previous_secret(req, OWNER, id).await
        }
        (_, path) => unmatched(route, allowed(path)),
    }
}

/// The methods each path of the route table serves (their `Allow`, for 405s and OPTIONS); `None` for any other path.
fn allowed(path: &[&str]) -> Option<&'static str> {
    Some(match path {
        ["api", "property", "communities"] => "GET, POST",
        ["api", "property", "quotes"] => "POST",
        ["api", "property", "households" | "orders"] => "GET, POST",
        ["api", "property", "communities", _, "rooms" | "bills"] => "PUT",
        ["api", "property", "communities", _, "perks" | "stats" | "settlement"] => "GET",
        ["api", "property", "orders", _] => "GET",
        ["api", "property", "orders", _, "refund"] => "POST",
        ["api", "property", "approvals"] => "GET",
        ["api", "property", "approvals" | "refund-approvals", _, "approve" | "reject"] => "POST",
        ["api", "property", "approvals" | "refund-approvals", _] => "GET",
        ["api", "property", "payments", "notify" | "refund-notify"] => "POST",
        ["api", "property", "partners", "events"] => "GET",
        ["api", "property", "partners", "webhook"] => "GET, PUT, DELETE",
        ["api", "property", "partners", "webhook", "replay"] => "POST",
        ["api", "property", "partners", "feeds"] => "GET",
        ["api", "property", "partners", _, "rotate-secret" | "revoke-previous-secret"] => "POST",
        _ => return None,
    })
}
