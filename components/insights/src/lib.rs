//! The insights component (`/api/ops`, operator token): what operators read.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/api/ops/ledger/check?from=YYYY-MM-DD&to=YYYY-MM-DD` | recomputes every posting of those days (default: the last 31) and compares account balances |

use http::Method;
use scenefin_core::clock::Timestamp;
use scenefin_core::{ApiError, ledger};
use scenefin_guest::{
    OrProblem, Request, Response, Route, SpinStore, json_response, no_route, problem, request_time, require_operator,
};
use spin_sdk::http_service;

/// Longest range a check covers.
const MAX_DAYS: i64 = 366;

#[http_service]
async fn handle(req: Request) -> Response {
    let route = Route::of(&req);
    let result = match (&route.method, route.segments().as_slice()) {
        (&Method::GET, ["api", "ops", "ledger", "check"]) => ledger_check(&req, &route).await,
        (_, ["api", "ops", "ledger", "check"]) => Err(problem(&ApiError::method_not_allowed())),
        _ => Err(problem(&no_route())),
    };
    result.unwrap_or_else(|response| response)
}

fn day(param: &str, value: &str) -> Result<Timestamp, ApiError> {
    Timestamp::parse_rfc3339(&format!("{value}T12:00:00+08:00"))
        .ok()
        .filter(|_| value.len() == 10)
        .ok_or_else(|| ApiError::validation(param, "YYYY-MM-DD"))
}

async fn ledger_check(req: &Request, route: &Route) -> Result<Response, Response> {
    require_operator(req).await?;
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
    let days: Vec<u32> = (0..=span).map(|i| from.plus_days(i).shanghai_day()).collect();
    let store = SpinStore::open_default().or_problem()?;
    let report = ledger::check(&store, &days).await.or_problem()?;
    Ok(json_response(200, &report))
}
