//! The referral-tiers component: referral programs, codes, late attachment, the referrer's page with lazily settled
//! rewards, program statistics and the leaderboard (HTTP adapter over referral-tiers-domain). Routes and rules:
//! README.md.
//!
//! | Method | Path | Who |
//! |---|---|---|
//! | POST | `/api/referrals/programs` | operator |
//! | GET | `/api/referrals/programs` | public |
//! | GET | `/api/referrals/programs/{id}` | public |
//! | POST | `/api/referrals/codes` | customer |
//! | POST | `/api/referrals/attach` | customer |
//! | GET | `/api/referrals/me?program_id=` | customer |
//! | GET | `/api/referrals/programs/{id}/stats` | operator |
//! | GET | `/api/referrals/programs/{id}/leaderboard?limit=` | operator |

use http::Method;
use referral_tiers_domain::programs::{self, NewProgram};
use referral_tiers_domain::{ReferralError, codes, reports};
use scenefin_guest::{
    OrProblem, Request, Response, Role, Route, decode, json_response, lifecycle_rules, request_time, require_customer,
    require_role, store, unmatched,
};
use serde::Deserialize;
use serde_json::json;
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
        (&Method::POST, ["api", "referrals", "programs"]) => create_program(req).await,
        (&Method::GET, ["api", "referrals", "programs"]) => list_programs(&req).await,
        (&Method::GET, ["api", "referrals", "programs", id]) => get_program(id).await,
        (&Method::POST, ["api", "referrals", "codes"]) => code(req).await,
        (&Method::POST, ["api", "referrals", "attach"]) => attach(req).await,
        (&Method::GET, ["api", "referrals", "me"]) => me(&req, route).await,
        (&Method::GET, ["api", "referrals", "programs", id, "stats"]) => stats(&req, id).await,
        (&Method::GET, ["api", "referrals", "programs", id, "leaderboard"]) => leaderboard(&req, route, id).await,
        (_, path) => unmatched(route, allowed(path)),
    }
}

/// The methods each path of the route table serves (their `Allow`, for 405s and OPTIONS); `None` for any other path.
fn allowed(path: &[&str]) -> Option<&'static str> {
    Some(match path {
        ["api", "referrals", "programs"] => "GET, POST",
        ["api", "referrals", "codes" | "attach"] => "POST",
        ["api", "referrals", "me"] => "GET",
        ["api", "referrals", "programs", _] => "GET",
        ["api", "referrals", "programs", _, "stats" | "leaderboard"] => "GET",
        _ => return None,
    })
}

async fn create_program(req: Request) -> Handled {
    require_role(&req, Role::Marketing).await?;
    let now = request_time(&req).await?;
    let input: NewProgram = decode(req).await?;
    let program = programs::create(&store()?, input, now).await.or_problem()?;
    Ok(json_response(201, &program))
}

/// A program as the public sees it: everything but its budget.
fn public(program: &scenefin_core::referrals::Program) -> serde_json::Value {
    let mut value = serde_json::to_value(program).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        fields.remove("budget_fen");
    }
    value
}

async fn list_programs(req: &Request) -> Handled {
    let now = request_time(req).await?;
    let items: Vec<_> = programs::running(&store()?, now).await.or_problem()?.iter().map(public).collect();
    Ok(json_response(200, &json!({ "items": items, "next": null })))
}

async fn get_program(id: &str) -> Handled {
    Ok(json_response(200, &public(&programs::get(&store()?, id).await.or_problem()?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    program_id: String,
}

async fn code(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    let input: CodeBody = decode(req).await?;
    let (code, created) = codes::get_or_create(&store()?, &input.program_id, &customer).await.or_problem()?;
    Ok(json_response(
        if created { 201 } else { 200 },
        &json!({ "code": code.code, "program_id": code.program_id, "share_path": format!("/app?ref={}", code.code) }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    code: String,
}

async fn attach(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    let input: AttachBody = decode(req).await?;
    let referral = codes::attach(&store()?, &customer, &input.code, now).await.or_problem()?;
    Ok(json_response(
        201,
        &json!({ "program_id": referral.program_id, "status": referral.status, "attached_at": referral.attached_at }),
    ))
}

async fn me(req: &Request, route: &Route) -> Handled {
    let now = request_time(req).await?;
    let customer = require_customer(req, now).await?;
    let program_id =
        route.query_param("program_id").ok_or(ReferralError::invalid("program_id", "required")).or_problem()?;
    let rules = lifecycle_rules().await;
    let store = store()?;
    let profile = scenefin_core::customers::lookup(&store, &customer).await.or_problem()?;
    let nudge = profile.is_none_or(|c| c.marketing_allowed());
    Ok(json_response(200, &reports::me(&store, &program_id, &customer, &rules, nudge, now).await.or_problem()?))
}

async fn stats(req: &Request, id: &str) -> Handled {
    require_role(req, Role::Viewer).await?;
    let now = request_time(req).await?;
    let rules = lifecycle_rules().await;
    Ok(json_response(200, &reports::stats(&store()?, id, &rules, now).await.or_problem()?))
}

async fn leaderboard(req: &Request, route: &Route, id: &str) -> Handled {
    require_role(req, Role::Viewer).await?;
    let limit = match route.query_param("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or(ReferralError::invalid("limit", "1 to 100"))
            .or_problem()?,
        None => 10,
    };
    let items = reports::leaderboard(&store()?, id, limit).await.or_problem()?;
    Ok(json_response(200, &json!({ "items": items, "next": null })))
}
