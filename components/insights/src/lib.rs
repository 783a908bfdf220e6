//! The insights component (`/api/ops`, operator token): what operators read. A thin adapter: the funnel and
//! lifecycle reports are `scenefin_core::insights` over core's own counters, the channel and campaign reviews are
//! `insights-domain` over each owner's indexes and counters. Nothing here lists the store. Routes, parameters and
//! the counters read: README.md.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/api/ops/funnel?from=&to=&channel=\|campaign=\|scenario=` | visited → registered → activated → retained over the days (default: the last 30), step and overall conversion, median time to activate |
//! | GET | `/api/ops/lifecycle?from=&to=` | customers per stored stage now, stage transitions in the days |
//! | GET | `/api/ops/channels?from=&to=` | per channel code: visits, registrations, activations; grouped by branch and by staff |
//! | GET | `/api/ops/campaigns` | every coupon campaign, referral program and scenario budget: issued, redeemed, spent, reserved, left, progress |
//! | GET | `/api/ops/exceptions?from=&to=` | payment exceptions of the days (default: the last 30): money held in suspense for orders that could not take it, each with its refund instruction; and reservations nobody came back for: expired and still held, or released on those days |
//! | GET | `/api/ops/audit?day=YYYY-MM-DD&actor=&resource=` | the audit log of a day (default: the request's), every entry verified (MAC, chain, the day's seal), then filtered by actor and by a part of the path |
//! | POST | `/api/ops/reservations/release-expired` | gives every budget back what its expired reservations hold, now (what each budget's next reserve would do); safe to repeat |
//! | GET | `/api/ops/ledger/check?from=YYYY-MM-DD&to=YYYY-MM-DD` | checks the postings of those days (default: the last 31) against the daily checkpoints (opening + postings = closing) and today's balances against the stored ones, exact for any age of the ledger |

use http::Method;
use scenefin_core::clock::Timestamp;
use scenefin_core::insights::{self, DayRange, Dimension};
use scenefin_core::{ApiError, ledger};
use scenefin_guest::{
    OrProblem, Request, Response, Role, Route, SpinStore, json_response, problem, request_time, require_role, store,
    unmatched,
};
use spin_sdk::http_service;

type Handled = Result<Response, Response>;

/// Longest range a check lists postings of. The check itself stays exact for any age: what lies before the range
/// comes from the ledger's daily checkpoints.
const MAX_DAYS: i64 = 366;

#[http_service]
async fn handle(req: Request) -> Response {
    scenefin_guest::serve(req, dispatch).await
}

/// Routes a checked request to its handler.
async fn dispatch(req: Request, route: &Route) -> Handled {
    let segments = route.segments();
    match (&route.method, segments.as_slice()) {
        (&Method::GET, ["api", "ops", "funnel"]) => funnel(&req, route).await,
        (&Method::GET, ["api", "ops", "lifecycle"]) => lifecycle(&req, route).await,
        (&Method::GET, ["api", "ops", "channels"]) => channels(&req, route).await,
        (&Method::GET, ["api", "ops", "campaigns"]) => campaigns(&req).await,
        (&Method::GET, ["api", "ops", "exceptions"]) => exceptions(&req, route).await,
        (&Method::POST, ["api", "ops", "reservations", "release-expired"]) => release_expired(&req).await,
        (&Method::GET, ["api", "ops", "ledger", "check"]) => ledger_check(&req, route).await,
        (&Method::GET, ["api", "ops", "audit"]) => audit_log(&req, route).await,
        (_, path) => unmatched(route, allowed(path)),
    }
}

/// The methods each path of the route table serves (their `Allow`, for 405s and OPTIONS); `None` for any other path.
fn allowed(path: &[&str]) -> Option<&'static str> {
    Some(match path {
        ["api", "ops", "funnel" | "lifecycle" | "channels" | "campaigns" | "exceptions" | "audit"]
        | ["api", "ops", "ledger", "check"] => "GET",
        ["api", "ops", "reservations", "release-expired"] => "POST",
        _ => return None,
    })
}

/// The operator's range of days (`from`, `to`), relative to the request's day.
async fn day_range(req: &Request, route: &Route) -> Result<DayRange, Response> {
    let now = request_time(req).await?;
    let (from, to) = (route.query_param("from"), route.query_param("to"));
    DayRange::parse(from.as_deref(), to.as_deref(), now).or_problem()
}

async fn funnel(req: &Request, route: &Route) -> Handled {
    require_role(req, Role::Viewer).await?;
    let range = day_range(req, route).await?;
    let (channel, campaign, scenario) =
        (route.query_param("channel"), route.query_param("campaign"), route.query_param("scenario"));
    let dimension = Dimension::parse(channel.as_deref(), campaign.as_deref(), scenario.as_deref()).or_problem()?;
    let report = insights::funnel(&store()?, &range, &dimension).await.or_problem()?;
    Ok(json_response(200, &report))
}

async fn lifecycle(req: &Request, route: &Route) -> Handled {
    require_role(req, Role::Viewer).await?;
    let range = day_range(req, route).await?;
    Ok(json_response(200, &insights::lifecycle(&store()?, &range).await.or_problem()?))
}

async fn channels(req: &Request, route: &Route) -> Handled {
    require_role(req, Role::Viewer).await?;
    let range = day_range(req, route).await?;
    Ok(json_response(200, &insights_domain::channels::review(&store()?, &range).await.or_problem()?))
}

/// `GET /api/ops/exceptions?from=&to=`: money that arrived for orders that could not take it (paid twice, paid
/// after failure or expiry, items re-issued), held in suspense, each with its refund instruction; and the
/// reservations nobody came back for (`expired_reservations`).
async fn exceptions(req: &Request, route: &Route) -> Handled {
    require_role(req, Role::Viewer).await?;
    let range = day_range(req, route).await?;
    let (store, days, now) = (store()?, range.day_numbers(), range.now());
    let items = scenefin_core::orders::exceptions_in(&store, &days, now).await.or_problem()?;
    let total_fen: i64 = items.iter().map(|e| e.exception.amount_fen).sum();
    let expired = insights_domain::reservations::expired(&store, &days, now).await.or_problem()?;
    Ok(json_response(
        200,
        &serde_json::json!({ "items": items, "total_fen": total_fen, "expired_reservations": expired }),
    ))
}

/// `POST /api/ops/reservations/release-expired`: every budget gets back what its expired reservations hold, up to
/// the current hour. Naturally idempotent (a repeat finds nothing more to release), so it takes no
/// `Idempotency-Key`.
async fn release_expired(req: &Request) -> Handled {
    require_role(req, Role::Finance).await?;
    let now = request_time(req).await?;
    let released = insights_domain::reservations::release_expired(&store()?, now).await.or_problem()?;
    let summary = format!("{} expired reservations released across {} budgets", released.released, released.budgets);
    Ok(scenefin_guest::audit::summarize(json_response(200, &released), summary))
}

async fn campaigns(req: &Request) -> Handled {
    require_role(req, Role::Viewer).await?;
    let now = request_time(req).await?;
    Ok(json_response(200, &insights_domain::campaigns::review(&store()?, now).await.or_problem()?))
}

/// `GET /api/ops/audit?day=&actor=&resource=` (admin): a day of the audit log, verified, then filtered.
async fn audit_log(req: &Request, route: &Route) -> Handled {
    require_role(req, Role::Admin).await?;
    let now = request_time(req).await?;
    let day = match route.query_param("day") {
        Some(v) => day("day", &v).or_problem()?,
        None => now,
    }
    .shanghai_day();
    let actor = route.query_param("actor");
    if let Some(a) = &actor
        && (a.is_empty() || a.len() > 64 || !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(problem(&ApiError::validation("actor", "a staff id, break-glass or a partner id")));
    }
    let resource = route.query_param("resource");
    if let Some(r) = &resource
        && (r.is_empty() || r.chars().count() > 200 || r.chars().any(char::is_control))
    {
        return Err(problem(&ApiError::validation("resource", "1 to 200 characters of a path")));
    }
    let secret = scenefin_guest::required_variable("session_secret").await.or_problem()?;
    let filter = scenefin_core::audit::Filter { actor: actor.as_deref(), resource: resource.as_deref() };
    let key = scenefin_core::audit::audit_key(secret.as_bytes());
    let report = scenefin_core::audit::day_report(&store()?, &key, day, &filter, now).await.or_problem()?;
    let mut body = serde_json::to_value(&report).unwrap_or_default();
    body["day"] = scenefin_core::clock::iso_day(day).into();
    Ok(json_response(200, &body))
}

fn day(param: &str, value: &str) -> Result<Timestamp, ApiError> {
    Timestamp::parse_rfc3339(&format!("{value}T12:00:00+08:00"))
        .ok()
        .filter(|_| value.len() == 10)
        .ok_or_else(|| ApiError::validation(param, "YYYY-MM-DD"))
}

async fn ledger_check(req: &Request, route: &Route) -> Handled {
    require_role(req, Role::Finance).await?;
    let now = request_time(req).await?;
    let to = match route.query_param("to") {
        Some(v) => day("to", &v).or_problem()?,
        None => now,
    };
    let from = match route.query_param("from") {
        Some(v) => day("from", &v).or_problem()?,
        None => to.plus_days(-30),
    };
    let span = to.shanghai_day_number() - from.shanghai_day_number();
    if !(0..MAX_DAYS).contains(&span) {
        return Err(problem(&ApiError::validation(
            "from",
            format!("from must be on or before to, at most {MAX_DAYS} days apart"),
        )));
    }
    if to.shanghai_day_number() > now.shanghai_day_number() + 1 {
        return Err(problem(&ApiError::validation("to", "to must not be after tomorrow")));
    }
    let store = SpinStore::open_default().or_problem()?;
    let report = ledger::check_range(&store, from, to, now).await.or_problem()?;
    Ok(json_response(200, &report))
}
