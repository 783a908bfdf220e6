//! Bulk operator tag changes and the customers component's maker-checker routes (`scenefin_guest::approvals`):
//!
//! | Method | Path | Who | What |
//! |---|---|---|---|
//! | POST | `/api/ops/customers/tags/bulk` | marketing | add or remove a tag on up to 500 customers: a proposal when asked by staff |
//! | GET | `/api/ops/customers/approvals?state=pending`, `/api/ops/customers/approvals/{id}` | any staff | proposals awaiting a checker |
//! | POST | `/api/ops/customers/approvals/{id}/approve`, `…/reject` | marketing, not the maker | carried out once, or not at all |

use customers_domain::CustomerError;
use customers_domain::tags;
use http::Method;
use scenefin_core::approvals::Proposal;
use scenefin_core::clock::Timestamp;
use scenefin_core::json::DEFAULT_LIMIT_BYTES;
use scenefin_core::problem::ApiError;
use scenefin_guest::approvals::{self, Action};
use scenefin_guest::{
    OrProblem, Request, Response, Role, Route, SpinStore, json, problem, request_time, require_role, split, unmatched,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

type Handled = Result<Response, Response>;

/// The owner of the customers component's proposals (`cust:approval:{id}`).
const OWNER: &str = "cust";

/// Most customers one bulk change names.
const MAX_CUSTOMERS: usize = 500;

/// `POST /api/ops/customers/tags/bulk`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct BulkTagBody {
    tag: String,
    action: TagAction,
    customer_ids: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum TagAction {
    Add,
    Remove,
}

/// Routes the paths this module serves.
pub async fn dispatch(req: Request, route: &Route) -> Handled {
    let segments = route.segments();
    match (&route.method, segments.as_slice()) {
        (&Method::POST, ["api", "ops", "customers", "tags", "bulk"]) => bulk_tag(req).await,
        (&Method::GET, ["api", "ops", "customers", "approvals"]) => approvals::list(&req, route, OWNER).await,
        (&Method::GET, ["api", "ops", "customers", "approvals", id]) => approvals::get(&req, OWNER, id, None).await,
        (&Method::POST, ["api", "ops", "customers", "approvals", id, "approve"]) => {
            approvals::approve(req, OWNER, id, None, execute).await
        }
        (&Method::POST, ["api", "ops", "customers", "approvals", id, "reject"]) => {
            approvals::reject(req, OWNER, id, None).await
        }
        (_, path) => unmatched(route, allowed(path)),
    }
}

fn allowed(path: &[&str]) -> Option<&'static str> {
    Some(match path {
        ["api", "ops", "customers", "tags", "bulk"] => "POST",
        ["api", "ops", "customers", "approvals"] | ["api", "ops", "customers", "approvals", _] => "GET",
        ["api", "ops", "customers", "approvals", _, "approve" | "reject"] => "POST",
        _ => return None,
    })
}

/// `POST /api/ops/customers/tags/bulk` `{tag, action, customer_ids}` (marketing): checked (the tag, the action, 1
/// to 500 ids; repeated ids count once), then always a proposal when asked by staff; the break-glass token applies
/// it at once.
async fn bulk_tag(req: Request) -> Handled {
    let actor = require_role(&req, Role::Marketing).await?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let input: BulkTagBody = json(&bytes, DEFAULT_LIMIT_BYTES).or_problem()?;
    let tag = tags::parse_tag(&input.tag).or_problem()?.to_owned();
    if !(1..=MAX_CUSTOMERS).contains(&input.customer_ids.len()) {
        let detail = format!("customer_ids: 1 to {MAX_CUSTOMERS} customer ids");
        return Err(problem(&ApiError::validation("customer_ids", detail)));
    }
    let mut customer_ids: Vec<String> = Vec::with_capacity(input.customer_ids.len());
    for id in input.customer_ids {
        if !customer_ids.contains(&id) {
            customer_ids.push(id);
        }
    }
    let payload = json!(BulkTagBody { tag: tag.clone(), action: input.action, customer_ids });
    let action = Action { name: "bulk_tags", role: Role::Marketing, resource: tag, payload, credentials: None };
    approvals::propose_or_run(&head, &actor, OWNER, action, true, 200, now, execute).await
}

/// Carries out an approved bulk tag change (or a break-glass one): the tag set or cleared on each customer, each
/// change idempotent, so a run repeated after a crash changes nothing twice. Unknown customers, and customers who
/// already hold the most tags, are reported, not fatal.
pub async fn execute(store: &SpinStore, proposal: &Proposal, _now: Timestamp) -> Result<Value, Response> {
    if proposal.action != "bulk_tags" {
        return Err(approvals::unknown(proposal));
    }
    let input: BulkTagBody = approvals::payload(proposal)?;
    let add = input.action == TagAction::Add;
    let mut results = Vec::with_capacity(input.customer_ids.len());
    let (mut applied, mut skipped) = (0usize, 0usize);
    for id in &input.customer_ids {
        let outcome = match tags::set_tag(store, id, &input.tag, add).await {
            Ok(_) => "applied",
            Err(CustomerError::NotFound) => "not_found",
            Err(CustomerError::Invalid { .. }) => "too_many_tags",
            Err(e) => return Err(problem(&e)),
        };
        if outcome == "applied" {
            applied += 1;
        } else {
            skipped += 1;
        }
        results.push(json!({ "customer_id": id, "result": outcome }));
    }
    Ok(json!({ "tag": input.tag, "action": input.action, "applied": applied, "skipped": skipped, "results": results }))
}
