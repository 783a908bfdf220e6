//! HTTP handlers of partner secret rotation (`scenefin_core::partners`), shared by every scenario that onboards
//! partners: `POST /api/{scenario}/partners/{partner_id}/rotate-secret` and
//! `POST /api/{scenario}/partners/{partner_id}/revoke-previous-secret`, both for the operator only.

use scenefin_core::json::DEFAULT_LIMIT_BYTES;
use scenefin_core::partners::{self, DEFAULT_OVERLAP_SECS};
use serde::Deserialize;
use serde_json::json;

use crate::{OrProblem, Request, Response, Role, json, json_response, request_time, require_role, split, store};

type Handled = Result<Response, Response>;

/// The body of a rotation (optional: no body means the default overlap).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the current secret stays accepted, in seconds.
    overlap_secs: Option<i64>,
}

/// `POST …/partners/{partner_id}/rotate-secret` `{overlap_secs?}`: a new secret for partner `partner_id` of scenario
/// `owner` (returned once), the current one accepted for `overlap_secs` more (default 24 h, at most 7 days).
pub async fn rotate_secret(req: Request, owner: &str, partner_id: &str) -> Handled {
    require_role(&req, Role::PartnerAdmin).await?;
    let now = request_time(&req).await?;
    let (_, body) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let overlap_secs = if body.iter().all(u8::is_ascii_whitespace) {
        DEFAULT_OVERLAP_SECS
    } else {
        json::<RotateBody>(&body, DEFAULT_LIMIT_BYTES).or_problem()?.overlap_secs.unwrap_or(DEFAULT_OVERLAP_SECS)
    };
    let rotated = partners::rotate_secret(&store()?, owner, partner_id, overlap_secs, now).await.or_problem()?;
    Ok(json_response(200, &rotated))
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
