//! Bank staff as operators: who they are, what each may do, and how long a sign-in lasts.
//!
//! - **Identity.** Staff sign in with a [`StaffAssertion`] from the bank's identity provider: the same sealed format
//!   as customers' identity assertions (`base64url(json) + "." + base64url(HMAC-SHA256(secret, base64url(json)))`),
//!   under its own secret (variable `staff_identity_secret`), carrying the staff id, name and roles, valid for five
//!   minutes from `iat`.
//! - **Sessions.** A sign-in gives a [`StaffSession`] token valid for [`STAFF_SESSION_TTL_SECS`], sealed with a key
//!   derived from `session_secret` for staff only ([`staff_key`]), so a customer's session token is never a staff
//!   one nor the other way round. Tokens start with `stf.` so the two are told apart before any check.
//! - **Revocation.** An admin revokes a staff member (`staff:revoked:{staff_id}`: sessions issued before it stop
//!   working at once), and a staff member signs out one session (`staff:signout:{sid}`); each staff request reads
//!   both in one batch.
//! - **Roles** ([`Role`]), least privilege: every operator route declares the one role it needs; a staff member may
//!   hold several. The operator token (variable `operator_token`) remains as break-glass access with every role
//!   ([`Actor::BreakGlass`]), logged loudly on every use.

use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, check_assertion_time, hmac_sha256, seal, unseal};
use crate::ids::Id;
use crate::kv::Key;
use crate::problem::{ErrorKind, Problem};

/// How long a staff session lasts: a working shift, no more.
pub const STAFF_SESSION_TTL_SECS: i64 = 8 * 3600;
/// The prefix of a staff session token.
pub const STAFF_TOKEN_PREFIX: &str = "stf.";

/// What a staff member may do. Each operator route needs exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads the insights: funnel, lifecycle, channels, campaigns, exceptions.
    Viewer,
    /// Campaigns, coupons, referral programmes, channel codes, customer tags.
    Marketing,
    /// Refunds, settlements, budgets, the ledger check, expired reservations.
    Finance,
    /// Billers, communities, schools, merchants and their partner secrets.
    PartnerAdmin,
    /// Staff and roles: revoking staff.
    Admin,
}

impl Role {
    /// Every role, in the order above.
    pub const ALL: [Role; 5] = [Role::Viewer, Role::Marketing, Role::Finance, Role::PartnerAdmin, Role::Admin];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Marketing => "marketing",
            Role::Finance => "finance",
            Role::PartnerAdmin => "partner_admin",
            Role::Admin => "admin",
        }
    }
}

/// Why a staff credential or action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaffError {
    /// The credential itself (assertion or token) was refused.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The staff member was revoked after this session was issued, or signed it out. Code `session_revoked`.
    #[error("this staff session was revoked or signed out; sign in again")]
    Revoked,
    /// The staff member does not hold the role the route needs. Code `forbidden_role`.
    #[error("this needs the {} role, which {staff_id} does not hold", needed.as_str())]
    Forbidden {
        /// The staff member.
        staff_id: String,
        /// The role the route needs.
        needed: Role,
    },
    /// The assertion's claims are not acceptable (bad staff id, no roles, name too long). Code `invalid_assertion`.
    #[error("invalid staff assertion: {0}")]
    InvalidClaims(&'static str),
}

impl Problem for StaffError {
    fn kind(&self) -> ErrorKind {
        match self {
            StaffError::Auth(e) => e.kind(),
            StaffError::Revoked | StaffError::InvalidClaims(_) => ErrorKind::Unauthenticated,
            StaffError::Forbidden { .. } => ErrorKind::Forbidden,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            StaffError::Auth(e) => e.code(),
            StaffError::Revoked => "session_revoked",
            StaffError::Forbidden { .. } => "forbidden_role",
            StaffError::InvalidClaims(_) => "invalid_assertion",
        }
    }
}

/// A signed statement from the bank's identity provider that a staff member signed in at `iat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffAssertion {
    /// The staff id (1 to 64 of `A-Z a-z 0-9 _ -`).
    pub staff_id: String,
    /// The staff member's name, as operators see it in the audit trail (1 to 64 characters).
    pub name: String,
    /// The roles the identity provider grants (at least one).
    pub roles: Vec<Role>,
    /// When the staff member signed in, Unix seconds.
    pub iat: i64,
}

/// Signs a staff assertion the way the identity provider does (tests, demo and local development).
pub fn sign_staff_assertion(secret: &[u8], assertion: &StaffAssertion) -> String {
    seal(secret, assertion)
}

/// Verifies a staff identity assertion: genuine, fresh (`iat` at most 60 s ahead, less than 300 s old) and with
/// acceptable claims.
pub fn verify_staff_assertion(secret: &[u8], assertion: &str, now: i64) -> Result<StaffAssertion, StaffError> {
    if secret.is_empty() {
        return Err(AuthError::Misconfigured("the staff identity secret is empty").into());
    }
    let json = unseal(secret, assertion).map_err(AuthError::InvalidAssertion)?;
    let parsed: StaffAssertion = serde_json::from_slice(&json).map_err(|_| {
        AuthError::InvalidAssertion("the payload is not a staff assertion (staff_id, name, roles, iat)")
    })?;
    check_assertion_time(parsed.iat, now)?;
    if Id::parse(&parsed.staff_id).is_err() {
        return Err(StaffError::InvalidClaims("staff_id must be 1 to 64 of A-Z a-z 0-9 _ -"));
    }
    if parsed.name.trim().is_empty() || parsed.name.chars().count() > 64 || parsed.name.chars().any(char::is_control) {
        return Err(StaffError::InvalidClaims("name must be 1 to 64 printable characters"));
    }
    if parsed.roles.is_empty() {
        return Err(StaffError::InvalidClaims("roles must name at least one role"));
    }
    Ok(parsed)
}

/// The claims of a staff session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffSession {
    /// The session id (random), for signing out this session alone.
    pub sid: String,
    /// The staff member.
    pub staff_id: String,
    /// Their name.
    pub name: String,
    /// Their roles, sorted, each once.
    pub roles: Vec<Role>,
    /// Issued, Unix seconds.
    pub issued_at: i64,
    /// Valid while `now < expires_at`, Unix seconds.
    pub expires_at: i64,
}

/// The key staff sessions are sealed with: derived from `session_secret` for this purpose only.
pub fn staff_key(session_secret: &[u8]) -> [u8; 32] {
    hmac_sha256(session_secret, b"scenefin staff sessions v1")
}

/// Issues a staff session token for a verified assertion, valid from `now` for [`STAFF_SESSION_TTL_SECS`].
pub fn issue_staff_session(session_secret: &[u8], assertion: &StaffAssertion, sid: &str, now: i64) -> String {
    let mut roles = assertion.roles.clone();
    roles.sort();
    roles.dedup();
    let claims = StaffSession {
        sid: sid.to_owned(),
        staff_id: assertion.staff_id.clone(),
        name: assertion.name.clone(),
        roles,
        issued_at: now,
        expires_at: now.saturating_add(STAFF_SESSION_TTL_SECS),
    };
    format!("{STAFF_TOKEN_PREFIX}{}", seal(&staff_key(session_secret), &claims))
}

/// Whether a bearer token is a staff session token (by its prefix; nothing is verified).
pub fn is_staff_token(token: &str) -> bool {
    token.starts_with(STAFF_TOKEN_PREFIX)
}

/// Verifies a staff session token (signature and expiry; revocation is the caller's store read, [`check_revoked`]).
pub fn verify_staff_session(session_secret: &[u8], token: &str, now: i64) -> Result<StaffSession, StaffError> {
    if session_secret.is_empty() {
        return Err(AuthError::Misconfigured("the session secret is empty").into());
    }
    let sealed = token.strip_prefix(STAFF_TOKEN_PREFIX).ok_or(AuthError::InvalidToken("not a staff session token"))?;
    let json = unseal(&staff_key(session_secret), sealed).map_err(AuthError::InvalidToken)?;
    let claims: StaffSession =
        serde_json::from_slice(&json).map_err(|_| AuthError::InvalidToken("the claims are not valid"))?;
    if now >= claims.expires_at {
        return Err(AuthError::TokenExpired { expires_at: claims.expires_at }.into());
    }
    Ok(claims)
}

/// A revocation of a staff member: sessions issued before `before` (Unix seconds) no longer work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Sessions issued before this instant are refused.
    pub before: i64,
    /// Who revoked.
    pub by: String,
}

/// Refuses a session its staff member's revocation (`revoked`, read from [`keys::revoked`]) or its own sign-out
/// (`signed_out`, [`keys::signed_out`]) came after.
pub fn check_revoked(session: &StaffSession, revoked: Option<&Revocation>, signed_out: bool) -> Result<(), StaffError> {
    if signed_out || revoked.is_some_and(|r| session.issued_at < r.before) {
        return Err(StaffError::Revoked);
    }
    Ok(())
}

/// Who acts through an operator route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in staff member.
    Staff(StaffSession),
    /// The break-glass operator token: every role, logged loudly.
    BreakGlass,
}

impl Actor {
    /// The actor's id as the audit trail records it: the staff id, or `break-glass`.
    pub fn id(&self) -> &str {
        match self {
            Actor::Staff(s) => &s.staff_id,
            Actor::BreakGlass => "break-glass",
        }
    }

    /// `Ok` when the actor may act in `role`.
    pub fn require(&self, role: Role) -> Result<(), StaffError> {
        match self {
            Actor::BreakGlass => Ok(()),
            Actor::Staff(s) if s.roles.contains(&role) => Ok(()),
            Actor::Staff(s) => Err(StaffError::Forbidden { staff_id: s.staff_id.clone(), needed: role }),
        }
    }
}

/// Staff keys.
pub mod keys {
    use super::Key;

    /// `staff:revoked:{staff_id}` — a [`super::Revocation`].
    pub fn revoked(staff_id: &str) -> Key {
        Key::new(&["staff", "revoked", staff_id])
    }

    /// `staff:signout:{sid}` — present once the session was signed out.
    pub fn signed_out(sid: &str) -> Key {
        Key::new(&["staff", "signout", sid])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const IDP: &[u8] = b"staff-identity-secret";
    const SESSIONS: &[u8] = b"session-secret";

    fn assertion(roles: Vec<Role>) -> StaffAssertion {
        StaffAssertion { staff_id: "s_li".into(), name: "李娜".into(), roles, iat: NOW }
    }

    #[test]
    fn a_fresh_genuine_assertion_gives_a_session_that_carries_the_roles_sorted_once() {
        let signed = sign_staff_assertion(IDP, &assertion(vec![Role::Finance, Role::Viewer, Role::Finance]));
        let verified = verify_staff_assertion(IDP, &signed, NOW + 10).expect("valid");
        let token = issue_staff_session(SESSIONS, &verified, "sid1", NOW + 10);
        assert!(is_staff_token(&token));
        let session = verify_staff_session(SESSIONS, &token, NOW + 20).expect("session");
        assert_eq!(session.roles, vec![Role::Viewer, Role::Finance]);
        assert_eq!((session.staff_id.as_str(), session.expires_at), ("s_li", NOW + 10 + STAFF_SESSION_TTL_SECS));
        let actor = Actor::Staff(session);
        assert_eq!(actor.require(Role::Finance), Ok(()));
        assert_eq!(
            actor.require(Role::PartnerAdmin),
            Err(StaffError::Forbidden { staff_id: "s_li".into(), needed: Role::PartnerAdmin })
        );
        assert_eq!(StaffError::Forbidden { staff_id: "x".into(), needed: Role::Admin }.code(), "forbidden_role");
        assert!(Role::ALL.iter().all(|r| Actor::BreakGlass.require(*r).is_ok()));
    }

    #[test]
    fn forged_stale_or_unacceptable_assertions_and_tokens_are_refused() {
        let signed = sign_staff_assertion(IDP, &assertion(vec![Role::Viewer]));
        assert_eq!(verify_staff_assertion(b"other", &signed, NOW).map_err(|e| e.code()), Err("invalid_assertion"));
        assert_eq!(verify_staff_assertion(IDP, &signed, NOW + 300).map_err(|e| e.code()), Err("assertion_expired"));
        assert_eq!(verify_staff_assertion(IDP, &signed, NOW - 61).map_err(|e| e.code()), Err("assertion_expired"));
        for bad in [
            StaffAssertion { roles: vec![], ..assertion(vec![]) },
            StaffAssertion { staff_id: "a:b".into(), ..assertion(vec![Role::Viewer]) },
            StaffAssertion { name: " ".into(), ..assertion(vec![Role::Viewer]) },
        ] {
            let signed = sign_staff_assertion(IDP, &bad);
            assert_eq!(verify_staff_assertion(IDP, &signed, NOW).map_err(|e| e.code()), Err("invalid_assertion"));
        }
        // An unknown role or field is not a staff assertion.
        let unknown = seal(IDP, &serde_json::json!({"staff_id": "s", "name": "n", "roles": ["root"], "iat": NOW}));
        assert_eq!(verify_staff_assertion(IDP, &unknown, NOW).map_err(|e| e.code()), Err("invalid_assertion"));

        // A customer session token is not a staff token, nor is a staff token sealed with the plain session secret.
        let customer = crate::auth::issue_session(SESSIONS, "c1", NOW, 3600);
        assert_eq!(verify_staff_session(SESSIONS, &customer, NOW).map_err(|e| e.code()), Err("invalid_token"));
        let claims = serde_json::json!({"sid": "s", "staff_id": "x", "name": "n", "roles": ["admin"],
                                        "issued_at": NOW, "expires_at": NOW + 60});
        let wrong_key = format!("{STAFF_TOKEN_PREFIX}{}", seal(SESSIONS, &claims));
        assert_eq!(verify_staff_session(SESSIONS, &wrong_key, NOW).map_err(|e| e.code()), Err("invalid_token"));
        let token = issue_staff_session(SESSIONS, &assertion(vec![Role::Viewer]), "sid", NOW);
        let late = NOW + STAFF_SESSION_TTL_SECS;
        assert_eq!(verify_staff_session(SESSIONS, &token, late).map_err(|e| e.code()), Err("token_expired"));
    }

    #[test]
    fn a_revocation_refuses_sessions_issued_before_it_and_a_sign_out_refuses_its_own() {
        let token = issue_staff_session(SESSIONS, &assertion(vec![Role::Viewer]), "sid", NOW);
        let session = verify_staff_session(SESSIONS, &token, NOW).expect("session");
        let revoked = Revocation { before: NOW + 1, by: "admin".into() };
        assert_eq!(check_revoked(&session, Some(&revoked), false), Err(StaffError::Revoked));
        let earlier = Revocation { before: NOW, by: "admin".into() };
        assert_eq!(check_revoked(&session, Some(&earlier), false), Ok(()), "issued at the revocation: a new sign-in");
        assert_eq!(check_revoked(&session, None, true), Err(StaffError::Revoked));
        assert_eq!(check_revoked(&session, None, false), Ok(()));
    }
}
