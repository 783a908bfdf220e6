//! The utility-payments component: billers, bills, household accounts, quote → order → notify, refunds and
//! reports (HTTP adapter over utility-payments-domain and scenefin-core's payment flow).
//!
//! | Method | Path | Who |
//! |---|---|---|
//! | POST | `/api/utility/billers` | operator |
//! | GET | `/api/utility/billers?category=&city=` | public |
//! | PUT | `/api/utility/billers/{id}/bills` | the biller (signed) |
//! | GET | `/api/utility/billers/{id}/settlement?date=YYYY-MM-DD` | the biller (signed) or operator |
//! | GET | `/api/utility/billers/{id}/stats` | the biller (signed) or operator |
//! | POST, GET | `/api/utility/accounts` | customer |
//! | DELETE | `/api/utility/accounts/{biller_id}/{account_no}` | customer |
//! | GET | `/api/utility/bills?biller_id=&account_no=` | customer |
//! | POST | `/api/utility/quotes` | customer |
//! | POST | `/api/utility/orders` (Idempotency-Key) | customer |
//! | GET | `/api/utility/orders?cursor=&limit=`, `/api/utility/orders/{id}` | customer |
//! | POST | `/api/utility/payments/notify` | payment gateway (Standard Webhooks) |
//! | POST | `/api/utility/payments/refund-notify` | payment gateway (Standard Webhooks): the money of a payment exception was returned |
//! | POST | `/api/utility/orders/{id}/refund` (Idempotency-Key) | operator or the biller (signed) |
//! | POST | `/api/utility/refund-approvals/{id}/approve` | finance staff other than the maker: carries out a proposed refund, once |
//! | POST | `/api/utility/refund-approvals/{id}/reject` | finance staff (or the maker withdrawing it): the proposed refund is not made |
//! | GET | `/api/utility/refund-approvals/{id}` | finance staff: a proposed refund as it stands |
//! | GET | `/api/utility/approvals?state=pending`, `/api/utility/approvals/{id}` | any staff: proposals (refunds, registrations, rotations) awaiting a checker |
//! | POST | `/api/utility/approvals/{id}/approve`, `…/reject` | staff holding the proposal's role, other than its maker: carried out once, or not at all |
//! | GET | `/api/utility/partners/events?after=&limit=` | the biller (signed): its event feed (`bill.paid`, `bill.refunded`), in order, each event once |
//! | GET, PUT, DELETE | `/api/utility/partners/webhook` | the biller (signed): its webhook endpoint and delivery state; set (`{url}`), remove |
//! | POST | `/api/utility/partners/webhook/replay` | the biller (signed): `{event_id}` delivered again, now |
//! | GET | `/api/utility/partners/feeds` | operator (`viewer`): per partner, the feed's lag and failed webhook deliveries |
//! | POST | `/api/utility/partners/{partner_id}/rotate-secret`, `…/revoke-previous-secret` | operator: a partner's new secret (the old one accepted for `overlap_secs`, default a day), or the overlap ended early |

mod dto;
mod handlers;

use http::Method;
use scenefin_guest::approvals::{self, scope};
use scenefin_guest::{Request, Response, Route, unmatched};
use spin_sdk::http_service;
use utility_payments_domain::OWNER;

type Handled = Result<Response, Response>;

/// The daily settlement statements whose closing partners read as `statement.closed` events.
const STATEMENTS: scenefin_guest::partners::Statements = Some(utility_payments_domain::reports::statement_spec);

#[http_service]
async fn handle(req: Request) -> Response {
    scenefin_guest::webhooks::serve(req, OWNER, STATEMENTS, dispatch).await
}

/// Routes a checked request to its handler.
async fn dispatch(req: Request, route: &Route) -> Handled {
    let segments = route.segments();
    match (&route.method, segments.as_slice()) {
        (&Method::POST, ["api", "utility", "billers"]) => handlers::register_biller(req).await,
        (&Method::GET, ["api", "utility", "billers"]) => handlers::list_billers(route).await,
        (&Method::PUT, ["api", "utility", "billers", id, "bills"]) => handlers::upload_bills(req, id).await,
        (&Method::GET, ["api", "utility", "billers", id, "settlement"]) => handlers::settlement(req, route, id).await,
        (&Method::GET, ["api", "utility", "billers", id, "stats"]) => handlers::stats(req, id).await,
        (&Method::POST, ["api", "utility", "accounts"]) => handlers::bind(req).await,
        (&Method::GET, ["api", "utility", "accounts"]) => handlers::accounts(&req).await,
        (&Method::DELETE, ["api", "utility", "accounts", biller, account]) => {
            handlers::unbind(&req, biller, account).await
        }
        (&Method::GET, ["api", "utility", "bills"]) => handlers::bills(&req, route).await,
        (&Method::POST, ["api", "utility", "quotes"]) => handlers::quote(req).await,
        (&Method::POST, ["api", "utility", "orders"]) => handlers::place_order(req).await,
        (&Method::GET, ["api", "utility", "orders"]) => handlers::orders(&req, route).await,
        (&Method::GET, ["api", "utility", "orders", id]) => handlers::order(&req, id).await,
        (&Method::POST, ["api", "utility", "orders", id, "refund"]) => handlers::refund(req, id).await,
        (&Method::GET, ["api", "utility", "approvals"]) => approvals::list(&req, route, OWNER).await,
        (&Method::GET, ["api", "utility", kind @ ("approvals" | "refund-approvals"), id]) => {
            approvals::get(&req, OWNER, id, scope(kind)).await
        }
        (&Method::POST, ["api", "utility", kind @ ("approvals" | "refund-approvals"), id, "approve"]) => {
            approvals::approve(req, OWNER, id, scope(kind), handlers::execute).await
        }
        (&Method::POST, ["api", "utility", kind @ ("approvals" | "refund-approvals"), id, "reject"]) => {
            approvals::reject(req, OWNER, id, scope(kind)).await
        }
        (&Method::POST, ["api", "utility", "payments", "notify"]) => handlers::notify(req).await,
        (&Method::POST, ["api", "utility", "payments", "refund-notify"]) => {
            scenefin_guest::orders::refund_notify(req, OWNER, utility_payments_domain::payments::biller_of).await
        }
        (&Method::GET | &Method::PUT | &Method::DELETE, ["api", "utility", "partners", "webhook"]) => {
            scenefin_guest::webhooks::endpoint(req, OWNER, scenefin_guest::partners::feed_of(OWNER)).await
        }
        (&Method::POST, ["api", "utility", "partners", "webhook", "replay"]) => {
            scenefin_guest::webhooks::replay(req, OWNER, scenefin_guest::partners::feed_of(OWNER)).await
        }
        (&Method::GET, ["api", "utility", "partners", "feeds"]) => {
            scenefin_guest::webhooks::feeds(req, OWNER, scenefin_guest::partners::feed_of(OWNER)).await
        }
        (&Method::GET, ["api", "utility", "partners", "events"]) => {
            scenefin_guest::partners::events(req, route, OWNER, STATEMENTS).await
        }
        (&Method::POST, ["api", "utility", "partners", id, "rotate-secret"]) => {
            scenefin_guest::partners::rotate_secret(req, OWNER, id, handlers::execute).await
        }
        (&Method::POST, ["api", "utility", "partners", id, "revoke-previous-secret"]) => {
            scenefin_guest::partners::revoke_previous_secret(req, OWNER, id).await
        }
        (_, path) => unmatched(route, allowed(path)),
    }
}

/// The methods each path of the route table serves (their `Allow`, for 405s and OPTIONS); `None` for any other path.
fn allowed(path: &[&str]) -> Option<&'static str> {
    Some(match path {
        ["api", "utility", "billers" | "accounts" | "orders"] => "GET, POST",
        ["api", "utility", "bills"] => "GET",
        ["api", "utility", "quotes"] => "POST",
        ["api", "utility", "billers", _, "bills"] => "PUT",
        ["api", "utility", "billers", _, "settlement" | "stats"] => "GET",
        ["api", "utility", "accounts", _, _] => "DELETE",
        ["api", "utility", "orders", _] => "GET",
        ["api", "utility", "orders", _, "refund"] => "POST",
        ["api", "utility", "approvals"] => "GET",
        ["api", "utility", "approvals" | "refund-approvals", _, "approve" | "reject"] => "POST",
        ["api", "utility", "approvals" | "refund-approvals", _] => "GET",
        ["api", "utility", "payments", "notify" | "refund-notify"] => "POST",
        ["api", "utility", "partners", "events"] => "GET",
        ["api", "utility", "partners", "webhook"] => "GET, PUT, DELETE",
        ["api", "utility", "partners", "webhook", "replay"] => "POST",
        ["api", "utility", "partners", "feeds"] => "GET",
        ["api", "utility", "partners", _, "rotate-secret" | "revoke-previous-secret"] => "POST",
        _ => return None,
    })
}
