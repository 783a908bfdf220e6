//! The merchant-coupons component: district merchants, coupon campaigns, claims into a wallet, check-in streaks,
//! exactly-once redemption and reversal, campaign statistics (HTTP adapter over merchant-coupons-domain). Routes and
//! rules: README.md.
//!
//! | Method | Path | Who |
//! |---|---|---|
//! | POST | `/api/coupons/merchants` | operator |
//! | POST | `/api/coupons/campaigns` | operator |
//! | GET | `/api/coupons/campaigns?district=&merchant_id=`, `/api/coupons/campaigns/{id}` | public |
//! | POST | `/api/coupons/campaigns/{id}/pause`, `…/resume` | operator |
//! | PUT | `/api/coupons/campaigns/{id}/stock` | operator |
//! | GET | `/api/coupons/campaigns/{id}/stats` | operator |
//! | POST | `/api/coupons/campaigns/{id}/claim` (Idempotency-Key) | customer |
//! | GET | `/api/coupons/wallet?status=` | customer |
//! | POST, GET | `/api/coupons/checkin` | customer |
//! | POST | `/api/coupons/redemptions` | the merchant (signed) |
//! | POST | `/api/coupons/redemptions/{id}/reverse` | the same merchant (signed) |
//! | GET | `/api/coupons/partners/events?after=&limit=` | the merchant (signed): its event feed (`coupon.redeemed`, `coupon.reversed`), in order, each event once |
//! | GET, PUT, DELETE | `/api/coupons/partners/webhook` | the merchant (signed): its webhook endpoint and delivery state; set (`{url}`), remove |
//! | POST | `/api/coupons/partners/webhook/replay` | the merchant (signed): `{event_id}` delivered again, now |
//! | GET | `/api/coupons/partners/feeds` | operator (`viewer`): per partner, the feed's lag and failed webhook deliveries |
//! | POST | `/api/coupons/partners/{partner_id}/rotate-secret`, `…/revoke-previous-secret` | operator: a merchant's new secret (the old one accepted for `overlap_secs`, default a day), or the overlap ended early |
//! | GET | `/api/coupons/approvals?state=pending`, `/api/coupons/approvals/{id}` | any staff: proposals (stock raises, merchant registrations, rotations) awaiting a checker |
//! | POST | `/api/coupons/approvals/{id}/approve`, `…/reject` | staff holding the proposal's role, other than its maker: carried out once, or not at all |

mod dto;
mod handlers;

use http::Method;
use merchant_coupons_domain::OWNER;
use scenefin_guest::approvals;
use scenefin_guest::{Request, Response, Route, unmatched};
use spin_sdk::http_service;

type Handled = Result<Response, Response>;

/// The daily settlement statements whose closing partners read as `statement.closed` events.
const STATEMENTS: scenefin_guest::partners::Statements = None;

#[http_service]
async fn handle(req: Request) -> Response {
    scenefin_guest::webhooks::serve(req, OWNER, STATEMENTS, dispatch).await
}

/// Routes a checked request to its handler.
async fn dispatch(req: Request, route: &Route) -> Handled {
    let segments = route.segments();
    match (&route.method, segments.as_slice()) {
        (&Method::POST, ["api", "coupons", "merchants"]) => handlers::register_merchant(req).await,
        (&Method::POST, ["api", "coupons", "campaigns"]) => handlers::create_campaign(req).await,
        (&Method::GET, ["api", "coupons", "campaigns"]) => handlers::list_campaigns(&req, route).await,
        (&Method::GET, ["api", "coupons", "campaigns", id]) => handlers::get_campaign(&req, id).await,
        (&Method::POST, ["api", "coupons", "campaigns", id, "pause"]) => handlers::pause(req, id, true).await,
        (&Method::POST, ["api", "coupons", "campaigns", id, "resume"]) => handlers::pause(req, id, false).await,
        (&Method::PUT, ["api", "coupons", "campaigns", id, "stock"]) => handlers::set_stock(req, id).await,
        (&Method::GET, ["api", "coupons", "campaigns", id, "stats"]) => handlers::stats(&req, id).await,
        (&Method::POST, ["api", "coupons", "campaigns", id, "claim"]) => handlers::claim(req, id).await,
        (&Method::GET, ["api", "coupons", "wallet"]) => handlers::wallet(&req, route).await,
        (&Method::POST, ["api", "coupons", "checkin"]) => handlers::check_in(req).await,
        (&Method::GET, ["api", "coupons", "checkin"]) => handlers::checkin_status(&req).await,
        (&Method::POST, ["api", "coupons", "redemptions"]) => handlers::redeem(req).await,
        (&Method::POST, ["api", "coupons", "redemptions", id, "reverse"]) => handlers::reverse(req, id).await,
        (&Method::GET | &Method::PUT | &Method::DELETE, ["api", "coupons", "partners", "webhook"]) => {
            scenefin_guest::webhooks::endpoint(req, OWNER, scenefin_guest::partners::feed_of(OWNER)).await
        }
        (&Method::POST, ["api", "coupons", "partners", "webhook", "replay"]) => {
            scenefin_guest::webhooks::replay(req, OWNER, scenefin_guest::partners::feed_of(OWNER)).await
        }
        (&Method::GET, ["api", "coupons", "partners", "feeds"]) => {
            scenefin_guest::webhooks::feeds(req, OWNER, scenefin_guest::partners::feed_of(OWNER)).await
        }
        (&Method::GET, ["api", "coupons", "partners", "events"]) => {
            scenefin_guest::partners::events(req, route, OWNER, STATEMENTS).await
        }
        (&Method::POST, ["api", "coupons", "partners", id, "rotate-secret"]) => {
            scenefin_guest::partners::rotate_secret(req, OWNER, id, handlers::execute).await
        }
        (&Method::GET, ["api", "coupons", "approvals"]) => approvals::list(&req, route, OWNER).await,
        (&Method::GET, ["api", "coupons", "approvals", id]) => approvals::get(&req, OWNER, id, None).await,
        (&Method::POST, ["api", "coupons", "approvals", id, "approve"]) => {
            approvals::approve(req, OWNER, id, None, handlers::execute).await
        }
        (&Method::POST, ["api", "coupons", "approvals", id, "reject"]) => approvals::reject(req, OWNER, id, None).await,
        (&Method::POST, ["api", "coupons", "partners", id, "revoke-previous-secret"]) => {
            scenefin_guest::partners::revoke_previous_secret(req, OWNER, id).await
        }
        (_, path) => unmatched(route, allowed(path)),
    }
}

/// The methods each path of the route table serves (their `Allow`, for 405s and OPTIONS); `None` for any other path.
fn allowed(path: &[&str]) -> Option<&'static str> {
    Some(match path {
        ["api", "coupons", "merchants" | "redemptions"] => "POST",
        ["api", "coupons", "campaigns" | "checkin"] => "GET, POST",
        ["api", "coupons", "wallet"] => "GET",
        ["api", "coupons", "campaigns", _] => "GET",
        ["api", "coupons", "campaigns", _, "pause" | "resume" | "claim"] => "POST",
        ["api", "coupons", "campaigns", _, "stock"] => "PUT",
        ["api", "coupons", "campaigns", _, "stats"] => "GET",
        ["api", "coupons", "redemptions", _, "reverse"] => "POST",
        ["api", "coupons", "partners", "events"] => "GET",
        ["api", "coupons", "partners", "webhook"] => "GET, PUT, DELETE",
        ["api", "coupons", "partners", "webhook", "replay"] => "POST",
        ["api", "coupons", "partners", "feeds"] => "GET",
        ["api", "coupons", "partners", _, "rotate-secret" | "revoke-previous-secret"] => "POST",
        ["api", "coupons", "approvals"] | ["api", "coupons", "approvals", _] => "GET",
        ["api", "coupons", "approvals", _, "approve" | "reject"] => "POST",
        _ => return None,
    })
}
