//! Staff sign-in, sign-out and revocation (`/api/staff`): bank staff act as themselves, with the roles the bank's
//! identity provider grants, instead of sharing the operator token. See `scenefin_core::staff` and
//! docs/SECURITY.md.

use scenefin_core::clock::Timestamp;
use scenefin_core::ids::{Id, new_id};
use scenefin_core::kv::{Step, put_json, update_json};
use scenefin_core::problem::{ApiError, ErrorKind};
use scenefin_core::staff::{self, Actor, Revocation, Role, StaffSession};
use scenefin_guest::{OrProblem, Request, Response, decode, json_response, problem, request_time, require_role};
use scenefin_guest::{require_staff, required_variable, store};
use serde::{Deserialize, Serialize};

type Handled = Result<Response, Response>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInBody {
    assertion: String,
}

/// A staff member as a session shows them.
#[derive(Serialize)]
struct StaffView<'a> {
    staff_id: &'a str,
    name: &'a str,
    roles: Vec<&'static str>,
    /// `staff` or `break_glass`.
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

impl<'a> StaffView<'a> {
    fn of(session: &'a StaffSession, token: Option<&'a str>) -> Self {
        StaffView {
            staff_id: &session.staff_id,
            name: &session.name,
            roles: session.roles.iter().map(|r| r.as_str()).collect(),
            kind: "staff",
            expires_at: Some(Timestamp::from_unix_secs(session.expires_at)),
            token,
        }
    }
}

/// `POST /api/staff/sessions {assertion}`: a staff session for a fresh assertion from the bank's identity provider
/// (variable `staff_identity_secret`), valid for eight hours.
pub async fn sign_in(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let idp = required_variable("staff_identity_secret").await.or_problem()?;
    let sessions = required_variable("session_secret").await.or_problem()?;
    let input: SignInBody = decode(req).await?;
    let assertion = staff::verify_staff_assertion(idp.as_bytes(), &input.assertion, now.unix_secs()).or_problem()?;
    let sid = new_id("sid", now.unix_ms()).map_err(|e| problem(&ApiError::internal(e.to_string())))?;
    let token = staff::issue_staff_session(sessions.as_bytes(), &assertion, &sid, now.unix_secs());
    let session = staff::verify_staff_session(sessions.as_bytes(), &token, now.unix_secs()).or_problem()?;
    eprintln!("staff sign-in: {} ({}) as {:?}", session.staff_id, session.sid, session.roles);
    Ok(json_response(201, &StaffView::of(&session, Some(&token))))
}

/// `GET /api/staff/me`: who this token acts as.
pub async fn me(req: Request) -> Handled {
    Ok(match require_staff(&req).await? {
        Actor::Staff(session) => json_response(200, &StaffView::of(&session, None)),
        Actor::BreakGlass => json_response(
            200,
            &StaffView {
                staff_id: "break-glass",
                name: "break-glass operator token",
                roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
                kind: "break_glass",
                expires_at: None,
                token: None,
            },
        ),
    })
}

/// `DELETE /api/staff/sessions/current`: signs this session out; the token stops working at once.
pub async fn sign_out(req: Request) -> Handled {
    match require_staff(&req).await? {
        Actor::Staff(session) => {
            put_json(&store()?, &staff::keys::signed_out(&session.sid), &true).await.or_problem()?;
            Ok(json_response(200, &serde_json::json!({ "signed_out": session.sid })))
        }
        Actor::BreakGlass => Err(problem(&ApiError::new(
            ErrorKind::Conflict,
            "break_glass_token",
            "the break-glass operator token is not a session: rotate variable operator_token to end its use",
        ))),
    }
}

/// `POST /api/staff/members/{staff_id}/revoke` (admin): every session the staff member holds stops working at once;
/// a later sign-in (from the next second) works again, if the identity provider still signs them in.
pub async fn revoke(req: Request, staff_id: &str) -> Handled {
    let actor = require_role(&req, Role::Admin).await?;
    let now = request_time(&req).await?;
    let staff_id = Id::parse(staff_id).map_err(|e| problem(&ApiError::validation("staff_id", e.to_string())))?;
    let before = now.unix_secs() + 1;
    let by = actor.id().to_owned();
    let key = staff::keys::revoked(staff_id.as_str());
    let revocation = update_json(&store()?, &key, |current: Option<&Revocation>| {
        Ok::<_, scenefin_core::kv::StoreError>(match current {
            Some(r) if r.before >= before => Step::Keep(r.clone()),
            _ => {
                let next = Revocation { before, by: by.clone() };
                Step::Write(next.clone(), next)
            }
        })
    })
    .await
    .or_problem()?;
    eprintln!("staff revoked: {} by {}", staff_id.as_str(), actor.id());
    let before = Timestamp::from_unix_secs(revocation.before);
    let answer = json_response(
        200,
        &serde_json::json!({ "staff_id": staff_id.as_str(), "sessions_issued_before": before, "by": revocation.by }),
    );
    let summary = format!("staff {}: sessions issued before {} → revoked", staff_id.as_str(), before.to_rfc3339());
    Ok(scenefin_guest::audit::summarize(answer, summary))
}
