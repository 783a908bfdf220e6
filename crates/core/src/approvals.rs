//! Maker-checker: an operator action that moves a lot of money is only proposed by the staff member who asks for it
//! (the maker); it runs once a different staff member holding the same role (the checker) approves it, exactly
//! once, and a proposal nobody decides expires.
//!
//! Today's actions: refunds above variable `refund_approval_threshold_fen`. A proposal is `{owner}:approval:{id}`,
//! created once (its id comes from the maker's request, so a retried request finds the same proposal), then
//! `pending` → `approved` (by the checker, in one CAS that refuses the maker) → `executed`; or `pending` →
//! `rejected`. Execution is the action's own idempotent operation under an id derived from the proposal, so an
//! approval retried after a crash completes the same action instead of doing it twice.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::kv::{Key, Step, Store, StoreError, get_json, update_json, update_json_new};
use crate::problem::{ErrorKind, Problem};

/// How long a proposal waits for its checker.
pub const PROPOSAL_TTL_SECS: i64 = 24 * 3600;

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
    /// What is proposed: `refund`.
    pub action: String,
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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Problem for ApprovalError {
    fn kind(&self) -> ErrorKind {
        match self {
            ApprovalError::NotFound => ErrorKind::NotFound,
            ApprovalError::SameStaff => ErrorKind::Forbidden,
            ApprovalError::Expired { .. } | ApprovalError::Decided { .. } => ErrorKind::Conflict,
            ApprovalError::Store(e) => e.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApprovalError::NotFound => "proposal_not_found",
            ApprovalError::SameStaff => "same_staff",
            ApprovalError::Expired { .. } => "proposal_expired",
            ApprovalError::Decided { .. } => "proposal_decided",
            ApprovalError::Store(e) => e.code(),
        }
    }
}

/// `{owner}:approval:{id}`.
pub fn key(owner: &str, id: &str) -> Key {
    Key::new(&[owner, "approval", id])
}

/// Records `proposal` as pending, once: a proposal already recorded under its id (a retried request) is returned as
/// it stands.
pub async fn propose(store: &impl Store, owner: &str, proposal: Proposal) -> Result<Proposal, ApprovalError> {
    update_json_new(store, &key(owner, &proposal.id), |current: Option<&Proposal>| {
        Ok::<_, ApprovalError>(match current {
            Some(existing) => Step::Keep(existing.clone()),
            None => Step::Write(proposal.clone(), proposal.clone()),
        })
    })
    .await
}

/// The proposal, as it stands.
pub async fn get(store: &impl Store, owner: &str, id: &str) -> Result<Proposal, ApprovalError> {
    get_json(store, &key(owner, id)).await?.ok_or(ApprovalError::NotFound)
}

/// A checker's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Approve a pending, unexpired proposal; the checker must not be its maker. Approving again as the same checker
    /// returns it as it stands (a retry, which then completes the action).
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

/// Marks an approved proposal carried out.
pub async fn executed(store: &impl Store, owner: &str, id: &str) -> Result<Proposal, ApprovalError> {
    update_json(store, &key(owner, id), |current: Option<&Proposal>| {
        let p = current.ok_or(ApprovalError::NotFound)?;
        Ok(match p.state {
            ProposalState::Approved => {
                let next = Proposal { state: ProposalState::Executed, ..p.clone() };
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
        Proposal {
            v: 1,
            id: id.into(),
            action: "refund".into(),
            resource: "o1".into(),
            amount_fen: None,
            value_fen: 200_000,
            maker: "s_a".into(),
            created_at: t(0),
            expires_at: t(PROPOSAL_TTL_SECS),
            state: ProposalState::Pending,
            checker: None,
            decided_at: None,
        }
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
        assert_eq!(
            pollster::block_on(executed(&store, "util", "p1")).expect("executed").state,
            ProposalState::Executed
        );
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
}
