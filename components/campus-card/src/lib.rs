//! The campus-card component: schools and merchants, batch-issued cards, binding, stored-value top-ups through the
//! shared payment flow, POS spending by card or one-time pay code, limits, loss and reissue, settlement (HTTP
//! adapter over campus-card-domain). Routes and rules: README.md.
//!
//! | Method | Path | Who |
//! |---|---|---|
//! | POST | `/api/campus/schools` | operator |
//! | GET | `/api/campus/schools` | public: the schools a customer can bind a card of (id, name, city) |
//! | GET | `/api/campus/schools/{id}/stats` | the school (signed) or operator |
//! | POST | `/api/campus/schools/{id}/merchants` | the school (signed) |
//! | PUT | `/api/campus/schools/{id}/members` | the school (signed) |
//! | POST | `/api/campus/schools/{id}/cards/{card}/freeze`, `…/unfreeze` | the school (signed) |
//! | POST | `/api/campus/cards/bind` | customer |
//! | GET | `/api/campus/cards/me` | customer |
//! | PUT | `/api/campus/cards/{id}/limits` | customer |
//! | POST | `/api/campus/cards/{id}/report-lost`, `…/unfreeze`, `…/reissue`, `…/pay-code` | customer |
//! | GET | `/api/campus/cards/{id}/transactions?cursor=&limit=` | customer |
//! | POST | `/api/campus/topups` (Idempotency-Key) | customer |
//! | GET | `/api/campus/orders?cursor=&limit=`, `/api/campus/orders/{id}` | customer |
//! | POST | `/api/campus/orders/{id}/refund` (Idempotency-Key) | operator or the card's school (signed): a top-up back to the instrument that paid it, while the card still holds it |
//! | POST | `/api/campus/refund-approvals/{id}/approve` | finance staff other than the maker: carries out a proposed refund, once |
//! | POST | `/api/campus/refund-approvals/{id}/reject` | finance staff (or the maker withdrawing it): the proposed refund is not made |
//! | GET | `/api/campus/refund-approvals/{id}` | finance staff: a proposed refund as it stands |
//! | GET | `/api/campus/approvals?state=pending`, `/api/campus/approvals/{id}` | any staff: proposals (refunds, registrations, rotations) awaiting a checker |
//! | POST | `/api/campus/approvals/{id}/approve`, `…/reject` | staff holding the proposal's role, other than its maker: carried out once, or not at all |
//! | POST | `/api/campus/payments/notify` | payment gateway (Standard Webhooks) |
//! | POST | `/api/campus/payments/refund-notify` | payment gateway (Standard Webhooks): the money of a payment exception was returned |
//! | POST | `/api/campus/spend` | a merchant POS (signed) |
//! | POST | `/api/campus/spend/{id}/reverse` | the same merchant (signed) |
//! | GET | `/api/campus/merchants/{id}/settlement?date=YYYY-MM-DD` | the merchant or its school (signed), operator |
//! | GET | `/api/campus/partners/events?after=&limit=` | the school (signed): its event feed (`topup.credited`, `topup.refunded`, `card.reissued`), in order, each event once; a merchant's POS reads its own |
//! | GET, PUT, DELETE | `/api/campus/partners/webhook` | the school or POS merchant (signed): its webhook endpoint and delivery state; set (`{url}`), remove |
//! | POST | `/api/campus/partners/webhook/replay` | the school or POS merchant (signed): `{event_id}` delivered again, now |
//! | GET | `/api/campus/partners/feeds` | operator (`viewer`): per partner, the feed's lag and failed webhook deliveries |
//! | POST | `/api/campus/partners/{partner_id}/rotate-secret`, `…/revoke-previous-secret` | operator: a partner's new secret (the old one accepted for `overlap_secs`, default a day), or the overlap ended early |

mod dto;
mod handlers;

use campus_card_domain::OWNER;
use http::Method;
use scenefin_guest::approvals::{self, scope};
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
        (&Method::POST, ["api", "campus", "schools"]) => handlers::register_school(req).await,
        (&Method::GET, ["api", "campus", "schools"]) => handlers::list_schools().await,
        (&Method::GET, ["api", "campus", "schools", id, "stats"]) => handlers::school_stats(req, id).await,
        (&Method::POST, ["api", "campus", "schools", id, "merchants"]) => handlers::add_merchant(req, id).await,
        (&Method::PUT, ["api", "campus", "schools", id, "members"]) => handlers::upload_members(req, id).await,
        (&Method::POST, ["api", "campus", "schools", id, "cards", card, action @ ("freeze" | "unfreeze")]) => {
            handlers::school_card_action(req, id, card, *action == "freeze").await
        }
        (&Method::POST, ["api", "campus", "cards", "bind"]) => handlers::bind(req).await,
        (&Method::GET, ["api", "campus", "cards", "me"]) => handlers::my_cards(&req).await,
        (&Method::PUT, ["api", "campus", "cards", id, "limits"]) => handlers::set_limits(req, id).await,
        (
            &Method::POST,
            ["api", "campus", "cards", id, action @ ("report-lost" | "unfreeze" | "reissue" | "pay-code")],
        ) => handlers::holder_action(req, id, action).await,
        (&Method::GET, ["api", "campus", "cards", id, "transactions"]) => handlers::transactions(&req, route, id).await,
        (&Method::POST, ["api", "campus", "topups"]) => handlers::topup(req).await,
        (&Method::GET, ["api", "campus", "orders"]) => handlers::orders(&req, route).await,
        (&Method::GET, ["api", "campus", "orders", id]) => handlers::order(&req, id).await,
        (&Method::POST, ["api", "campus", "orders", id, "refund"]) => handlers::refund(req, id).await,
        (&Method::GET, ["api", "campus", "approvals"]) => approvals::list(&req, route, OWNER).await,
        (&Method::GET, ["api", "campus", kind @ ("approvals" | "refund-approvals"), id]) => {
            approvals::get(&req, OWNER, id, scope(kind)).await
        }
        (&Method::POST, ["api", "campus", kind @ ("approvals" | "refund-approvals"), id, "approve"]) => {
            approvals::approve(req, OWNER, id, scope(kind), handlers::execute).await
        }
        (&Method::POST, ["api", "campus", kind @ ("approvals" | "refund-approvals"), id, "reject"]) => {
            approvals::reject(req, OWNER, id, scope(kind)).await
        }
        (&Method::POST, ["api", "campus", "payments", "notify"]) => handlers::notify(req).await,
        (&Method::POST, ["api", "campus", "payments", "refund-notify"]) => {
            scenefin_guest::orders::refund_notify(req, OWNER, campus_card_domain::topups::school_of).await
        }
        (&Method::POST, ["api", "campus", "spend"]) => handlers::spend(req).await,
        (&Method::POST, ["api", "campus", "spend", id, "reverse"]) => handlers::reverse(req, id).await,
        (&Method::GET, ["api", "campus", "merchants", id, "settlement"]) => handlers::settlement(req, route, id).await,
        (&Method::GET | &Method::PUT | &Method::DELETE, ["api", "campus", "partners", "webhook"]) => {
            scenefin_guest::webhooks::endpoint(req, OWNER, campus_card_domain::schools::feed_of).await
        }
        (&Method::POST, ["api", "campus", "partners", "webhook", "replay"]) => {
            scenefin_guest::webhooks::replay(req, OWNER, campus_card_domain::schools::feed_of).await
        }
        (&Method::GET, ["api", "campus", "partners", "feeds"]) => {
            scenefin_guest::webhooks::feeds(req, OWNER, campus_card_domain::schools::feed_of).await
        }
        (&Method::GET, ["api", "campus", "partners", "events"]) => {
            scenefin_guest::partners::events_of(req, route, OWNER, campus_card_domain::schools::feed_of, STATEMENTS)
                .await
        }
        (&Method::POST, ["api", "campus", "partners", id, "rotate-secret"]) => {
            scenefin_guest::partners::rotate_secret(req, OWNER, id, handlers::execute).await
        }
        (&Method::POST, ["api", "campus", "partners", id, "revoke-previous-secret"]) => {
            scenefin_guest::partners::revoke_previous_secret(req, OWNER, id).await
        }
        (_, path) => unmatched(route, allowed(path)),
    }
}

/// The methods each path of the route table serves (their `Allow`, for 405s and OPTIONS); `None` for any other path.
fn allowed(path: &[&str]) -> Option<&'static str> {
    Some(match path {
        ["api", "campus", "schools"] => "GET, POST",
        ["api", "campus", "topups" | "spend"] => "POST",
        ["api", "campus", "orders"] => "GET",
        ["api", "campus", "schools", _, "stats"] => "GET",
        ["api", "campus", "schools", _, "merchants"] => "POST",
        ["api", "campus", "schools", _, "members"] => "PUT",
        ["api", "campus", "schools", _, "cards", _, "freeze" | "unfreeze"] => "POST",
        ["api", "campus", "cards", "bind"] => "POST",
        ["api", "campus", "cards", "me"] => "GET",
        ["api", "campus", "cards", _, "limits"] => "PUT",
        ["api", "campus", "cards", _, "report-lost" | "unfreeze" | "reissue" | "pay-code"] => "POST",
        ["api", "campus", "cards", _, "transactions"] => "GET",
        ["api", "campus", "orders", _] => "GET",
        ["api", "campus", "orders", _, "refund"] => "POST",
        ["api", "campus", "approvals"] => "GET",
        ["api", "campus", "approvals" | "refund-approvals", _, "approve" | "reject"] => "POST",
        ["api", "campus", "approvals" | "refund-approvals", _] => "GET",
        ["api", "campus", "payments", "notify" | "refund-notify"] => "POST",
        ["api", "campus", "spend", _, "reverse"] => "POST",
        ["api", "campus", "merchants", _, "settlement"] => "GET",
        ["api", "campus", "partners", "events"] => "GET",
        ["api", "campus", "partners", "webhook"] => "GET, PUT, DELETE",
        ["api", "campus", "partners", "webhook", "replay"] => "POST",
        ["api", "campus", "partners", "feeds"] => "GET",
        ["api", "campus", "partners", _, "rotate-secret" | "revoke-previous-secret"] => "POST",
        _ => return None,
    })
}
