//! Maker-checker: an operator action that moves a lot of money is only proposed by the staff member who asks for it
//! (the maker); it runs once a different staff member holding the same role (the checker) approves it, exactly
//! once, and a proposal nobody decides expires.
//!
//! The actions: refunds above variable `refund_approval_threshold_fen` (finance), coupon stock increases
//! (marketing), partner registration and partner secret rotation (partner admin), bulk customer tag changes
//! (marketing). A proposal is `{owner}:approval:{id}`, created once (its id comes from the maker's request when it
//! carries an `Idempotency-Key`, so a retried request finds the same proposal), listed in the day index
//! `{owner}:approvals:{yyyymmdd}`, then `pending` → `approved` (by the checker, in one CAS that refuses the maker)
//! → `executed`; or `pending` → `rejected`. A proposal records the role that may approve it and the validated
//! request (`payload`); one that mints a secret (a partner's credentials) carries it from the start, so every run
//! of the action installs the same one.
//!
//! Execution runs under a lease ([`start_run`]): of concurrent approvals by the checker one runs the action, the
//! others wait for its result ([`Proposal::result`], replayed to the checker's retries); a run a crash cut short is
//! taken over once its lease ends. The action itself is idempotent given the proposal (an id derived from it, an
//! absolute value, the proposal's credentials), so a run taken over completes it instead of doing it twice.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::kv::{
    Key, Step, Store, StoreError, add_to_index, decode_doc, get_all, get_json, update_json, update_json_new,
};
use crate::partners::Credentials;
use crate::problem::{ErrorKind, Problem};

/// How long a proposal waits for its checker.
pub const PROPOSAL_TTL_SECS: i64 = 24 * 3600;

/// How long a run of an approved action holds its lease: a run that has not finished by then (its instance died)
/// is taken over by the checker's next approval.
pub const RUN_LEASE_SECS: i64 = 30;

/// At most this many pending proposals are listed.
pub const MAX_LISTED: usize = 200;

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalState {
    /// Waiting for a checker.
    Pending,
    /// Approved; the action is being (or was, if a crash cut it short) carried out.
    Approved,
    /// Carried out.
    Executed,
    /// Refused by a checker.
    Rejected,
}

/// A proposed action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Schema version.
    pub v: u32,
    /// The proposal id.
    pub id: String,
    /// What is proposed: `refund`, `increase_stock`, `register_partner`, `rotate_secret`, `bulk_tags`.
    pub action: String,
    /// The role a checker needs (its wire name; proposals from before roles were recorded are refunds: `finance`).
    #[serde(default = "finance")]
    pub role: String,
    /// The order (or other resource) it acts on.
    pub resource: String,
    /// The amount, when the action has one (`None` for a refund: all that is left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_fen: Option<i64>,
    /// What the action would move, as the maker saw it when proposing.
    pub value_fen: i64,
    /// Who proposed it.
    pub maker: String,
    /// When.
    pub created_at: Timestamp,
    /// Undecided after this, it can no longer be approved.
    pub expires_at: Timestamp,
    /// Where it stands.
    pub state: ProposalState,
    /// Who approved or rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checker: Option<String>,
    /// When it was approved or rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Timestamp>,
    /// The validated request the action runs with (`null` for a refund: `resource` and `amount_fen` say it all).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub payload: serde_json::Value,
    /// The credentials the action installs (a partner's id and secret), minted when it was proposed. Never shown
    /// but to the checker, in the action's result ([`Proposal::public`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// Since when a run of the approved action holds the lease ([`start_run`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since: Option<Timestamp>,
    /// What the action answered when it ran (replayed to the checker's retries; may hold the credentials).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub result: serde_json::Value,
}

fn finance() -> String {
    "finance".to_owned()
}

impl Proposal {
    /// A new pending proposal by `maker` at `now`, expiring [`PROPOSAL_TTL_SECS`] later.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        action: &str,
        role: &str,
        resource: String,
        payload: serde_json::Value,
        value_fen: i64,
        maker: &str,
        now: Timestamp,
    ) -> Proposal {
        Proposal {
            v: 1,
            id,
            action: action.to_owned(),
            role: role.to_owned(),
            resource,
            amount_fen: None,
            value_fen,
            maker: maker.to_owned(),
            created_at: now,
            expires_at: now.plus_secs(PROPOSAL_TTL_SECS),
            state: ProposalState::Pending,
            checker: None,
            decided_at: None,
            payload,
            credentials: None,
            running_since: None,
            result: serde_json::Value::Null,
        }
    }

    /// The proposal as anyone but its checker's approval may see it: without credentials or result.
    pub fn public(&self) -> Proposal {
        Proposal { credentials: None, result: serde_json::Value::Null, running_since: None, ..self.clone() }
    }
}

/// Why a proposal could not be made or decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// No such proposal. Code `proposal_not_found`.
    #[error("no such proposal")]
    NotFound,
    /// The maker tried to approve their own proposal. Code `same_staff`.
    #[error("a proposal must be approved by a different staff member than the one who proposed it")]
    SameStaff,
    /// The proposal expired before anyone approved it. Code `proposal_expired`.
    #[error("the proposal expired at {expired_at}; propose it again")]
    Expired {
        /// When it expired.
        expired_at: String,
    },
    /// The proposal was already decided otherwise (rejected, or approved by someone else). Code `proposal_decided`.
    #[error("the proposal was already {state} by {by}")]
    Decided {
        /// `approved`, `executed` or `rejected`.
        state: &'static str,
        /// Who decided it.
        by: String,
    },
    /// Another run of the approved action holds its lease and has not finished yet. Code `proposal_in_progress`.
    #[error("the approved action is being carried out by another request; ask again shortly")]
    InProgress,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Problem for ApprovalError {
    fn kind(&self) -> ErrorKind {
        match self {
            ApprovalError::NotFound => ErrorKind::NotFound,
            ApprovalError::SameStaff => ErrorKind::Forbidden,
            ApprovalError::Expired { .. } | ApprovalError::Decided { .. } | ApprovalError::InProgress => {
                ErrorKind::Conflict
            }
            ApprovalError::Store(e) => e.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApprovalError::NotFound => "proposal_not_found",
            ApprovalError::SameStaff => "same_staff",
            ApprovalError::Expired { .. } => "proposal_expired",
            ApprovalError::Decided { .. } => "proposal_decided",
            ApprovalError::InProgress => "proposal_in_progress",
            ApprovalError::Store(e) => e.code(),
        }
    }
}

/// `{owner}:approval:{id}`.
pub fn key(owner: &str, id: &str) -> Key {
    Key::new(&[owner, "approval", id])
}

/// `{owner}:approvals:{yyyymmdd}`: the ids of the proposals made that (Shanghai) day.
pub fn day_index(owner: &str, day: u32) -> Key {
    Key::new(&[owner, "approvals", &day.to_string()])
}

/// Records `proposal` as pending, once: a proposal already recorded under its id (a retried request) is returned as
/// it stands. It is listed in its day's index first, so a crash in between hides nothing (listing skips ids
/// without a document).
pub async fn propose(store: &impl Store, owner: &str, proposal: Proposal) -> Result<Proposal, ApprovalError> {
    add_to_index(store, &day_index(owner, proposal.created_at.shanghai_day()), &proposal.id).await?;
    update_json_new(store, &key(owner, &proposal.id), |current: Option<&Proposal>| {
        Ok::<_, ApprovalError>(match current {
            Some(existing) => Step::Keep(existing.clone()),
            None => Step::Write(proposal.clone(), proposal.clone()),
        })
    })
    .await
}

/// The pending proposals of `owner` that can still be approved at `now`, oldest first (at most [`MAX_LISTED`]):
/// the indexes of today and yesterday (a proposal lives a day) in one read, then the proposals in one more.
pub async fn pending(store: &impl Store, owner: &str, now: Timestamp) -> Result<Vec<Proposal>, ApprovalError> {
    let days = [now.plus_secs(-PROPOSAL_TTL_SECS).shanghai_day(), now.shanghai_day()];
    let indexes: Vec<Key> = days.iter().map(|day| day_index(owner, *day)).collect();
    let raw = get_all(store, &indexes).await?;
    let mut ids: Vec<String> = Vec::new();
    for (index, raw) in indexes.iter().zip(&raw) {
        if let Some(idx) = decode_doc::<crate::kv::Index>(index, raw.as_deref())? {
            for id in idx.ids {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    let keys: Vec<Key> = ids.iter().map(|id| key(owner, id)).collect();
    let mut out = Vec::new();
    for (k, raw) in keys.iter().zip(get_all(store, &keys).await?) {
        // Pending ones, and approved ones whose run has not completed (a checker's retry, or another checker's
        // approval, carries them out).
        let open = |p: &Proposal| match p.state {
            ProposalState::Pending => now < p.expires_at,
            ProposalState::Approved => true,
            _ => false,
        };
        if let Some(p) = decode_doc::<Proposal>(k, raw.as_deref())?
            && open(&p)
            && out.len() < MAX_LISTED
        {
            out.push(p);
        }
    }
    Ok(out)
}

/// The proposal, as it stands.
pub async fn get(store: &impl Store, owner: &str, id: &str) -> Result<Proposal, ApprovalError> {
    get_json(store, &key(owner, id)).await?.ok_or(ApprovalError::NotFound)
}

/// A checker's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Approve a pending, unexpired proposal; the checker must not be its maker. Approving again as the same checker
    /// returns it as it stands (a retry, which then completes the action); so does another checker's approval of a
    /// proposal approved but not yet carried out.
    Approve,
    /// Reject a pending proposal (its maker may, withdrawing it).
    Reject,
}

/// Records `checker`'s decision on proposal `id`.
pub async fn decide(
    store: &impl Store,
    owner: &str,
    id: &str,
    checker: &str,
    now: Timestamp,
    decision: Decision,
) -> Result<Proposal, ApprovalError> {
    let to = match decision {
        Decision::Approve => ProposalState::Approved,
        Decision::Reject => ProposalState::Rejected,
    };
    update_json(store, &key(owner, id), |current: Option<&Proposal>| {
        let p = current.ok_or(ApprovalError::NotFound)?;
        let decided_by_checker = p.checker.as_deref() == Some(checker);
        match p.state {
            ProposalState::Pending => {}
            ProposalState::Approved | ProposalState::Executed
                if to == ProposalState::Approved && decided_by_checker =>
            {
                return Ok(Step::Keep(p.clone()));
            }
            // Approved but stuck (its run failed or was cut short, and its checker has not come back for a run lease):
            // another checker with the role (not the maker) may carry it out. Sooner, the checker's own approval is
            // running or about to: the answer (which may hold one-time credentials) stays theirs.
            ProposalState::Approved if to == ProposalState::Approved && p.maker != checker && stuck(p, now) => {
                return Ok(Step::Keep(p.clone()));
            }
            ProposalState::Rejected if to == ProposalState::Rejected && decided_by_checker => {
                return Ok(Step::Keep(p.clone()));
            }
            state => {
                let state = match state {
                    ProposalState::Approved => "approved",
                    ProposalState::Executed => "executed",
                    _ => "rejected",
                };
                return Err(ApprovalError::Decided { state, by: p.checker.clone().unwrap_or_default() });
            }
        }
        if to == ProposalState::Approved && p.maker == checker {
            return Err(ApprovalError::SameStaff);
        }
        if to == ProposalState::Approved && now >= p.expires_at {
            return Err(ApprovalError::Expired { expired_at: p.expires_at.to_rfc3339() });
        }
        let next = Proposal { state: to, checker: Some(checker.to_owned()), decided_at: Some(now), ..p.clone() };
        Ok(Step::Write(next.clone(), next))
    })
    .await
}

/// Whether approved proposal `p` has waited a whole run lease since its approval and is not running now.
fn stuck(p: &Proposal, now: Timestamp) -> bool {
    let since = |t: Option<Timestamp>| t.is_none_or(|t| now >= t.plus_secs(RUN_LEASE_SECS));
    since(p.decided_at) && since(p.running_since)
}

/// Takes the lease to run approved proposal `id` at `now`: `(true, proposal)` when this caller runs the action;
/// `(false, proposal)` when it is executed already, or another run holds an unexpired lease ([`RUN_LEASE_SECS`]).
pub async fn start_run(
    store: &impl Store,
    owner: &str,
    id: &str,
    now: Timestamp,
) -> Result<(bool, Proposal), ApprovalError> {
    update_json(store, &key(owner, id), |current: Option<&Proposal>| {
        let p = current.ok_or(ApprovalError::NotFound)?;
        let free = p.running_since.is_none_or(|since| now >= since.plus_secs(RUN_LEASE_SECS) || now < since);
        Ok(if p.state == ProposalState::Approved && free {
            let next = Proposal { running_since: Some(now), ..p.clone() };
            Step::Write(next.clone(), (true, next))
        } else {
            Step::Keep((false, p.clone()))
        })
    })
    .await
}

/// Gives back the lease of a run that failed (the action refused), so the checker's retry runs it again.
pub async fn end_run(store: &impl Store, owner: &str, id: &str) -> Result<(), ApprovalError> {
    update_json(store, &key(owner, id), |current: Option<&Proposal>| {
        let p = current.ok_or(ApprovalError::NotFound)?;
        Ok(match (p.state, p.running_since) {
            (ProposalState::Approved, Some(_)) => Step::Write(Proposal { running_since: None, ..p.clone() }, ()),
            _ => Step::Keep(()),
        })
    })
    .await
}

/// Marks an approved proposal carried out, with what the action answered (the first result recorded stays).
pub async fn executed(
    store: &impl Store,
    owner: &str,
    id: &str,
    result: serde_json::Value,
) -> Result<Proposal, ApprovalError> {
    update_json(store, &key(owner, id), |current: Option<&Proposal>| {
        let p = current.ok_or(ApprovalError::NotFound)?;
        Ok(match p.state {
            ProposalState::Approved => {
                let next = Proposal {
                    state: ProposalState::Executed,
                    running_since: None,
                    result: result.clone(),
                    ..p.clone()
                };
                Step::Write(next.clone(), next)
            }
            _ => Step::Keep(p.clone()),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemStore;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_unix_secs(1_763_870_400 + secs)
    }

    fn proposal(id: &str) -> Proposal {
        Proposal::new(id.into(), "refund", "finance", "o1".into(), serde_json::Value::Null, 200_000, "s_a", t(0))
    }

    #[test]
    fn only_another_staff_member_approves_once_before_expiry() {
        let store = MemStore::default();
        let made = pollster::block_on(propose(&store, "util", proposal("p1"))).expect("propose");
        let again = pollster::block_on(propose(&store, "util", Proposal { maker: "someone".into(), ..proposal("p1") }))
            .expect("again");
        assert_eq!(again, made, "a retried proposal is the same proposal");
        assert_eq!(
            pollster::block_on(decide(&store, "util", "p1", "s_a", t(10), Decision::Approve)),
            Err(ApprovalError::SameStaff)
        );
        let approved =
            pollster::block_on(decide(&store, "util", "p1", "s_b", t(10), Decision::Approve)).expect("approve");
        assert_eq!((approved.state, approved.checker.as_deref()), (ProposalState::Approved, Some("s_b")));
        assert_eq!(
            pollster::block_on(decide(&store, "util", "p1", "s_b", t(11), Decision::Approve))
                .expect("retry")
                .decided_at,
            Some(t(10))
        );
        let other = pollster::block_on(decide(&store, "util", "p1", "s_c", t(12), Decision::Approve));
        assert_eq!(other, Err(ApprovalError::Decided { state: "approved", by: "s_b".into() }));
        assert!(pollster::block_on(start_run(&store, "util", "p1", t(12))).expect("run").0);
        assert!(!pollster::block_on(start_run(&store, "util", "p1", t(13))).expect("held").0);
        assert!(pollster::block_on(start_run(&store, "util", "p1", t(12 + RUN_LEASE_SECS))).expect("taken over").0);
        let done = pollster::block_on(executed(&store, "util", "p1", serde_json::json!({"ok": 1}))).expect("executed");
        assert_eq!(
            (done.state, done.result.clone(), done.public().result),
            (ProposalState::Executed, serde_json::json!({"ok": 1}), serde_json::Value::Null)
        );
        assert!(!pollster::block_on(start_run(&store, "util", "p1", t(99))).expect("done").0);
        assert_eq!(
            pollster::block_on(decide(&store, "util", "p1", "s_b", t(13), Decision::Approve)).expect("after").state,
            ProposalState::Executed
        );
        assert_eq!(
            pollster::block_on(decide(&store, "util", "p1", "s_c", t(13), Decision::Reject)).map_err(|e| e.code()),
            Err("proposal_decided")
        );

        pollster::block_on(propose(&store, "util", proposal("p2"))).expect("propose");
        let late = pollster::block_on(decide(&store, "util", "p2", "s_b", t(PROPOSAL_TTL_SECS), Decision::Approve));
        assert_eq!(late.map_err(|e| e.code()), Err("proposal_expired"));
        assert_eq!(
            pollster::block_on(decide(&store, "util", "p2", "s_a", t(5), Decision::Reject)).expect("withdrawn").state,
            ProposalState::Rejected
        );
        assert_eq!(
            pollster::block_on(decide(&store, "util", "nope", "s_b", t(5), Decision::Approve)),
            Err(ApprovalError::NotFound)
        );
    }

    #[test]
    fn the_pending_list_holds_undecided_unexpired_proposals_of_the_last_day() {
        let store = MemStore::default();
        for id in ["p1", "p2", "p3"] {
            pollster::block_on(propose(&store, "cpn", proposal(id))).expect("propose");
        }
        pollster::block_on(decide(&store, "cpn", "p2", "s_b", t(5), Decision::Reject)).expect("reject");
        let ids = |at: i64| -> Vec<String> {
            pollster::block_on(pending(&store, "cpn", t(at))).expect("pending").into_iter().map(|p| p.id).collect()
        };
        assert_eq!(ids(10), ["p1", "p3"]);
        assert_eq!(ids(PROPOSAL_TTL_SECS - 1), ["p1", "p3"], "yesterday's index is read too");
        assert!(ids(PROPOSAL_TTL_SECS).is_empty(), "expired proposals are not pending");
        assert!(pollster::block_on(pending(&store, "util", t(10))).expect("other owner").is_empty());
    }

    #[test]
    fn refund_proposals_stored_before_roles_read_as_finance() {
        let stored = serde_json::json!({"v": 1, "id": "apr_x", "action": "refund", "resource": "o1", "value_fen": 5,
            "maker": "s_a", "created_at": t(0), "expires_at": t(9), "state": "pending"});
        let p: Proposal = serde_json::from_value(stored).expect("old proposal");
        assert_eq!((p.role.as_str(), p.payload.is_null(), p.credentials.is_none()), ("finance", true, true));
    }

    #[test]
    fn an_approval_whose_run_never_completed_can_be_carried_out_by_another_checker_after_a_lease() {
        let store = MemStore::default();
        pollster::block_on(propose(&store, "util", proposal("p2"))).expect("propose");
        pollster::block_on(decide(&store, "util", "p2", "s_b", t(10), Decision::Approve)).expect("approve");
        let soon = pollster::block_on(decide(&store, "util", "p2", "s_c", t(20), Decision::Approve));
        assert!(matches!(soon, Err(ApprovalError::Decided { .. })), "the checker's own run comes first: {soon:?}");
        let later = pollster::block_on(decide(&store, "util", "p2", "s_c", t(10 + RUN_LEASE_SECS), Decision::Approve));
        assert_eq!(later.map(|p| p.state), Ok(ProposalState::Approved), "stuck: another checker may carry it out");
        let maker = pollster::block_on(decide(&store, "util", "p2", "s_a", t(10 + RUN_LEASE_SECS), Decision::Approve));
        assert!(matches!(maker, Err(ApprovalError::Decided { .. })), "never the maker: {maker:?}");
        let listed = pollster::block_on(pending(&store, "util", t(100))).expect("list");
        assert_eq!(listed.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["p2"], "listed until carried out");
    }
}
