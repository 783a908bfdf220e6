//! HTTP handlers of partner secret rotation (`scenefin_core::partners`), shared by every scenario that onboards
//! partners: `POST /api/{scenario}/partners/{partner_id}/rotate-secret` and
//! `POST /api/{scenario}/partners/{partner_id}/revoke-previous-secret`, both for the operator only. A staff member's
//! rotation is only proposed (maker-checker, [`crate::approvals`]); the new secret is minted with the proposal and
//! installed, and shown to the checker, when another partner admin approves it.

use scenefin_core::approvals::Proposal;
use scenefin_core::clock::Timestamp;
use scenefin_core::json::DEFAULT_LIMIT_BYTES;
use scenefin_core::partners::{self, Credentials, DEFAULT_OVERLAP_SECS};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::approvals::{self, Action, Run};
use crate::{
    OrProblem, Request, Response, Role, SpinStore, json, json_response, request_time, require_role, split, store,
};

type Handled = Result<Response, Response>;

/// The body of a rotation (optional: no body means the default overlap).
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the current secret stays accepted, in seconds.
    overlap_secs: Option<i64>,
}

/// `POST …/partners/{partner_id}/rotate-secret` `{overlap_secs?}`: a new secret for partner `partner_id` of scenario
/// `owner` (returned once), the current one accepted for `overlap_secs` more (default 24 h, at most 7 days). Checked
/// first (bad input writes nothing); a staff member's rotation is a proposal, carried out by `run` on approval.
pub async fn rotate_secret(req: Request, owner: &str, partner_id: &str, run: impl Run) -> Handled {
    let actor = require_role(&req, Role::PartnerAdmin).await?;
    let now = request_time(&req).await?;
    let (head, body) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let overlap_secs = if body.iter().all(u8::is_ascii_whitespace) {
        DEFAULT_OVERLAP_SECS
    } else {
        json::<RotateBody>(&body, DEFAULT_LIMIT_BYTES).or_problem()?.overlap_secs.unwrap_or(DEFAULT_OVERLAP_SECS)
    };
    partners::check_rotation(&store()?, owner, partner_id, overlap_secs).await.or_problem()?;
    let minted = partners::new_credentials(now).or_problem()?;
    let action = Action {
        name: "rotate_secret",
        role: Role::PartnerAdmin,
        resource: partner_id.to_owned(),
        payload: json!(RotateBody { overlap_secs: Some(overlap_secs) }),
        credentials: Some(Credentials { partner_id: partner_id.to_owned(), partner_secret: minted.partner_secret }),
    };
    approvals::propose_or_run(&head, &actor, owner, action, true, 200, now, run).await
}

/// Carries out a rotation proposal of scenario `owner`: its partner gets the proposal's secret (idempotent), the
/// overlap counted from the approval.
pub async fn execute_rotation(
    store: &SpinStore,
    owner: &str,
    proposal: &Proposal,
    now: Timestamp,
) -> Result<serde_json::Value, Response> {
    let body: RotateBody = approvals::payload(proposal)?;
    let secret = &approvals::credentials(proposal)?.partner_secret;
    let at = proposal.decided_at.unwrap_or(now);
    let overlap_secs = body.overlap_secs.unwrap_or(DEFAULT_OVERLAP_SECS);
    let rotated =
        partners::rotate_secret_to(store, owner, &proposal.resource, secret, overlap_secs, at).await.or_problem()?;
    Ok(json!(rotated))
}

/// `POST …/partners/{partner_id}/revoke-previous-secret`: ends the overlap of partner `partner_id`'s earlier secrets
/// at once; `{partner_id, revoked}` says how many were still accepted.
pub async fn revoke_previous_secret(req: Request, owner: &str, partner_id: &str) -> Handled {
    require_role(&req, Role::PartnerAdmin).await?;
    let now = request_time(&req).await?;
    // Nothing to read in a body, but it is read all the same: Spin cuts an answer off while the body is unread.
    let _ = split(req, DEFAULT_LIMIT_BYTES).await?;
    let revoked = partners::revoke_previous_secrets(&store()?, owner, partner_id, now).await.or_problem()?;
    Ok(json_response(200, &json!({ "partner_id": partner_id, "revoked": revoked })))
}

/// `GET /api/{scenario}/partners/events?after=&limit=` (signed as the partner): what happened to the partner's
/// biller, community, school or merchant, in order, from the cursor (`after`: the `next` of the previous page;
/// absent: from the start; passing it confirms the events up to it). Each event once; a page stops before an event
/// still being recorded (`scenefin_core::feed`). Where the scenario has daily statements (`statements`), the days
/// that ended since are closed first (`statement.closed`).
pub async fn events(req: Request, route: &crate::Route, owner: &str, statements: Statements) -> Handled {
    events_of(req, route, owner, feed_of(owner), statements).await
}

/// How a scenario's daily settlement statements are made, by resource id (`None`: the scenario has none).
pub type Statements = Option<fn(&str) -> scenefin_core::settlement::StatementSpec>;

/// The feed of a partner of scenario `owner` whose resource has one feed: `{owner}:feed:{resource_id}`.
pub fn feed_of(owner: &str) -> impl Fn(&partners::Partner) -> scenefin_core::kv::Key + '_ {
    move |partner| scenefin_core::feed::key(owner, &partner.resource_id)
}

/// [`events`] where the partner's feed is `feed_of(partner)` (a scenario whose partners of different kinds could
/// share a resource id keeps their feeds apart).
pub async fn events_of(
    req: Request,
    route: &crate::Route,
    owner: &str,
    feed_of: impl Fn(&partners::Partner) -> scenefin_core::kv::Key,
    statements: Statements,
) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let partner = crate::require_partner(&head, &store, owner, &bytes, now).await?;
    let after = match route.query_param("after") {
        None => 0,
        Some(raw) => raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            crate::problem(&scenefin_core::ApiError::validation("after", "after: the `next` cursor of an earlier page"))
        })?,
    };
    let limit = route.limit(50, 200).or_problem()?;
    let feed = feed_of(&partner);
    if after > 0 {
        // Reading on from `after` confirms everything up to it (the console shows the partner's lag).
        scenefin_core::feed::acknowledge(&store, &feed, after, now).await.or_problem()?;
    }
    if let Some(spec) = statements {
        // The statements of the days that ended since the partner last looked.
        let resource = &partner.resource_id;
        scenefin_core::settlement::close_due(&store, owner, resource, &spec(resource), &feed, now)
            .await
            .or_problem()?;
    }
    let page = scenefin_core::feed::read(&store, &feed, after, limit, now).await.or_problem()?;
    let items: Vec<serde_json::Value> = page
        .events
        .iter()
        .map(|(seq, e)| json!({ "seq": seq, "id": e.id, "type": e.kind, "occurred_at": e.occurred_at, "data": e.data }))
        .collect();
    Ok(json_response(
        200,
        &json!({ "items": items, "next": page.next.to_string(), "has_more": page.next < page.appended }),
    ))
}
