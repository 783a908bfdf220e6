//! Referral facts every component records: who referred whom ([`attach`], called by customers at registration and
//! by referral-tiers for late attachment) and whether the referee qualified or was clawed back ([`on_event`],
//! called by [`crate::events::record`] for every payment and refund, whatever the scenario).
//!
//! Rewards are not granted here: referral-tiers settles them lazily when a referrer or operator reads (no background
//! jobs), from the statuses and counters this module keeps. It owns these keys, with referral-tiers:
//! - `ref:program:{id}`: the [`Program`] (written by referral-tiers);
//! - `ref:code:{code}`: a referral code and its referrer;
//! - `ref:referral:{referee}`: the one [`Referral`] of a referee (whatever the program);
//! - `ref:referrer:{program}:{referrer}:referees`: the referrer's referees (index);
//! - `ref:referrer:{program}:{referrer}:ctr:{attached|qualified}`: the referrer's counters;
//! - `ref:program:{id}:referrers`: referrers with at least one attached referee (index, for the leaderboard);
//! - `ref:program:{id}:ctr:{name}`: program statistics; `ref:fx:…`: one-shot claims for counters.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::customers::Customer;
use crate::events::{Event, EventKind};
use crate::ids::Id;
use crate::kv::{self, Key, Step, Store, StoreError, get_json};

/// How long after registration a customer may still attach a code.
pub const ATTACH_WINDOW_DAYS: i64 = 7;
/// Longest referral chain walked looking for a loop.
const MAX_CHAIN: usize = 32;

/// What a reward is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// Cash credited to the customer's reward account (a ledger posting funded by the bank).
    CashFen,
    /// Loyalty points.
    Points,
    /// A coupon from a merchant-coupons campaign.
    CouponCampaign,
}

/// A reward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reward {
    /// Kind.
    pub kind: RewardKind,
    /// Fen or points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// The coupon campaign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
}

/// A rung of the ladder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Qualified referrals needed.
    pub min_qualified: i64,
    /// The reward for each referral rewarded at this tier.
    pub reward_per_referral: Reward,
    /// Paid once when the tier is reached (and clawed back if it no longer holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_bonus: Option<Reward>,
}

/// What qualifies a referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qualifying {
    /// `first_payment` (a payment or top-up in any scenario).
    pub event: String,
    /// The payment must reach this.
    #[serde(default)]
    pub min_amount_fen: i64,
    /// Within this many days of the referee's registration.
    pub within_days: i64,
}

/// When a program runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Start.
    pub starts_at: Timestamp,
    /// End.
    pub ends_at: Timestamp,
}

/// A referral program (`ref:program:{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// Schema version.
    pub v: u32,
    /// Id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Qualification.
    pub qualifying: Qualifying,
    /// Days a qualified referral waits before it is rewarded (a refund inside them claws it back).
    pub holding_days: i64,
    /// The ladder, by ascending `min_qualified`.
    pub tiers: Vec<Tier>,
    /// The referee's own reward.
    pub referee_reward: Option<Reward>,
    /// Most referrals one referrer may have attached.
    pub max_rewarded_per_referrer: i64,
    /// Budget for cash rewards and bonuses.
    pub budget_fen: i64,
    /// Schedule.
    pub schedule: Schedule,
    /// Created.
    pub created_at: Timestamp,
}

impl Program {
    /// Whether referrals can be attached at `now`.
    pub fn running_at(&self, now: Timestamp) -> bool {
        self.schedule.starts_at <= now && now < self.schedule.ends_at
    }

    /// The tier (index) for `qualified` referrals: the highest whose minimum is reached.
    pub fn tier_for(&self, qualified: i64) -> Option<usize> {
        self.tiers.iter().rposition(|t| t.min_qualified <= qualified)
    }
}

/// A referral's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Attached; waiting for the qualifying payment.
    Pending,
    /// Qualified; rewarded once the holding period is over.
    Qualified,
    /// Rewarded.
    Rewarded,
    /// Refused at attachment, or never qualified in time; `reason` says why.
    Rejected,
    /// The qualifying payment was refunded inside the holding period.
    ClawedBack,
}

/// A referral (`ref:referral:{referee}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    /// Schema version.
    pub v: u32,
    /// Program.
    pub program_id: String,
    /// Referrer.
    pub referrer_id: String,
    /// Referee.
    pub referee_id: String,
    /// The code used.
    pub code: String,
    /// Status.
    pub status: Status,
    /// Rejection reason.
    pub reason: Option<String>,
    /// The referee's registration.
    pub registered_at: Timestamp,
    /// Attached.
    pub attached_at: Timestamp,
    /// Qualified.
    pub qualified_at: Option<Timestamp>,
    /// The order whose payment qualified it.
    pub qualifying_order: Option<String>,
    /// Its amount.
    pub qualifying_fen: Option<i64>,
    /// Clawed back.
    pub clawed_back_at: Option<Timestamp>,
    /// Rewarded.
    pub rewarded_at: Option<Timestamp>,
}

impl Referral {
    /// When a qualified referral becomes rewardable.
    pub fn rewardable_at(&self, program: &Program) -> Option<Timestamp> {
        self.qualified_at.map(|q| q.plus_days(program.holding_days))
    }
}

/// A referral code (`ref:code:{code}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Code {
    /// Schema version.
    pub v: u32,
    /// The code.
    pub code: String,
    /// Program.
    pub program_id: String,
    /// Referrer.
    pub referrer_id: String,
}

/// Keys.
pub mod keys {
    use crate::kv::Key;

    /// `ref:program:{id}`.
    pub fn program(id: &str) -> Key {
        Key::new(&["ref", "program", id])
    }

    /// `ref:program:{id}:ctr:{name}`.
    pub fn program_counter(id: &str, name: &str) -> Key {
        program(id).child(&["ctr", name])
    }

    /// `ref:program:{id}:referrers`.
    pub fn referrers(id: &str) -> Key {
        program(id).child(&["referrers"])
    }

    /// `ref:code:{code}`.
    pub fn code(code: &str) -> Key {
        Key::new(&["ref", "code", code])
    }

    /// `ref:referral:{referee}`.
    pub fn referral(referee_id: &str) -> Key {
        Key::new(&["ref", "referral", referee_id])
    }

    /// `ref:referrer:{program}:{referrer}`: the base of a referrer's keys.
    pub fn referrer(program_id: &str, referrer_id: &str) -> Key {
        Key::new(&["ref", "referrer", program_id, referrer_id])
    }

    /// `ref:referrer:{program}:{referrer}:referees`.
    pub fn referees(program_id: &str, referrer_id: &str) -> Key {
        referrer(program_id, referrer_id).child(&["referees"])
    }

    /// `ref:referrer:{program}:{referrer}:ctr:{name}`.
    pub fn referrer_counter(program_id: &str, referrer_id: &str, name: &str) -> Key {
        referrer(program_id, referrer_id).child(&["ctr", name])
    }

    /// `ref:fx:{what}:{id}`.
    pub fn effect(what: &str, id: &str) -> Key {
        Key::new(&["ref", "fx", what, id])
    }
}

/// Why an attachment was refused before anything was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// No such code.
    #[error("no such referral code")]
    UnknownCode,
    /// The referee already has a referral.
    #[error("you were already referred")]
    AlreadyReferred,
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl crate::problem::Problem for AttachError {
    fn kind(&self) -> crate::problem::ErrorKind {
        match self {
            AttachError::UnknownCode => crate::problem::ErrorKind::NotFound,
            AttachError::AlreadyReferred => crate::problem::ErrorKind::Conflict,
            AttachError::Store(e) => e.kind(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            AttachError::UnknownCode => "referral_code_not_found",
            AttachError::AlreadyReferred => "already_referred",
            AttachError::Store(e) => e.code(),
        }
    }
}

/// Whether `code` is shaped like a referral code (safe in a key).
pub fn valid_code(code: &str) -> bool {
    (4..=16).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// A code by its text (`None` when unknown or malformed).
pub async fn code(store: &impl Store, code: &str) -> Result<Option<Code>, StoreError> {
    let code = code.trim().to_ascii_uppercase();
    if !valid_code(&code) {
        return Ok(None);
    }
    get_json(store, &keys::code(&code)).await
}

/// A program by id.
pub async fn program(store: &impl Store, id: &str) -> Result<Option<Program>, StoreError> {
    if Id::parse(id).is_err() {
        return Ok(None);
    }
    get_json(store, &keys::program(id)).await
}

/// The referee's referral, if any.
pub async fn referral(store: &impl Store, referee_id: &str) -> Result<Option<Referral>, StoreError> {
    if Id::parse(referee_id).is_err() {
        return Ok(None);
    }
    get_json(store, &keys::referral(referee_id)).await
}

/// Attributes `referee` to the owner of `code`, once per referee. The referral is recorded whatever the outcome —
/// `pending`, or `rejected` with a reason (`program_not_running`, `self_referral`, `existing_customer`,
/// `referral_loop`, `shared_identity`, `referrer_over_cap`) — so the referrer and the operator see refusals too.
/// `at_registration` is true when the referee registered with the code.
pub async fn attach(
    store: &impl Store,
    referee: &Customer,
    code_text: &str,
    at_registration: bool,
    now: Timestamp,
) -> Result<Referral, AttachError> {
    let code = code(store, code_text).await?.ok_or(AttachError::UnknownCode)?;
    if let Some(existing) = referral(store, &referee.id).await? {
        return if existing.code == code.code { Ok(existing) } else { Err(AttachError::AlreadyReferred) };
    }
    let program = program(store, &code.program_id).await?.ok_or(AttachError::UnknownCode)?;
    let referrer = crate::customers::lookup(store, &code.referrer_id).await?.ok_or(AttachError::UnknownCode)?;
    let mut reason = rejection(store, &program, referee, &referrer, at_registration, now).await?;
    let fresh = Referral {
        v: 1,
        program_id: program.id.clone(),
        referrer_id: code.referrer_id.clone(),
        referee_id: referee.id.clone(),
        code: code.code.clone(),
        status: Status::Pending,
        reason: None,
        registered_at: referee.created_at,
        attached_at: now,
        qualified_at: None,
        qualifying_order: None,
        qualifying_fen: None,
        clawed_back_at: None,
        rewarded_at: None,
    };
    // The cap is an atomic counter taken last, so only referrals that pass everything else count against it.
    let attached = keys::referrer_counter(&program.id, &code.referrer_id, "attached");
    let claim = keys::effect("attached", &referee.id);
    if reason.is_none()
        && kv::claim_once(store, &claim).await?
        && !crate::limits::take(store, &attached, program.max_rewarded_per_referrer, 1)
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    {
        reason = Some("referrer_over_cap");
    }
    let fresh = match reason {
        Some(r) => Referral { status: Status::Rejected, reason: Some(r.to_owned()), ..fresh },
        None => fresh,
    };
    let stored = kv::update_json(store, &keys::referral(&referee.id), |doc: Option<&Referral>| match doc {
        Some(existing) => Ok::<_, StoreError>(Step::Keep(existing.clone())),
        None => Ok(Step::Write(fresh.clone(), fresh.clone())),
    })
    .await?;
    if stored.code != code.code {
        return Err(AttachError::AlreadyReferred);
    }
    kv::add_to_index(store, &keys::referees(&program.id, &code.referrer_id), &referee.id).await?;
    kv::add_to_index(store, &keys::referrers(&program.id), &code.referrer_id).await?;
    let counter = match &stored.reason {
        Some(r) => format!("rejected_{r}"),
        None => "attached".to_owned(),
    };
    kv::count_once(store, &keys::effect("counted", &referee.id), &keys::program_counter(&program.id, &counter), 1)
        .await?;
    Ok(stored)
}

async fn rejection(
    store: &impl Store,
    program: &Program,
    referee: &Customer,
    referrer: &Customer,
    at_registration: bool,
    now: Timestamp,
) -> Result<Option<&'static str>, StoreError> {
    if !program.running_at(now) {
        return Ok(Some("program_not_running"));
    }
    if referrer.id == referee.id {
        return Ok(Some("self_referral"));
    }
    let window_over = now.secs_since(referee.created_at) > ATTACH_WINDOW_DAYS * 86_400;
    if !at_registration && (window_over || referee.activated_at.is_some()) {
        return Ok(Some("existing_customer"));
    }
    let same_phone = referee.phone_hash.is_some() && referee.phone_hash == referrer.phone_hash;
    let same_card = referee.card_fingerprints.iter().any(|fp| referrer.card_fingerprints.contains(fp));
    if same_phone || same_card {
        return Ok(Some("shared_identity"));
    }
    // A loop: the referee is somewhere up the referrer's chain.
    let mut up = referrer.id.clone();
    for _ in 0..MAX_CHAIN {
        let Some(r) = referral(store, &up).await? else { break };
        if r.status == Status::Rejected {
            break;
        }
        if r.referrer_id == referee.id {
            return Ok(Some("referral_loop"));
        }
        up = r.referrer_id;
    }
    Ok(None)
}

/// Applies a payment (qualifies a pending referral) or a refund (claws back a qualified one inside its holding
/// period) of the event's customer. Idempotent; called by [`crate::events::record`].
pub async fn on_event(store: &impl Store, event: &Event) -> Result<(), StoreError> {
    if !matches!(event.kind, EventKind::Paid | EventKind::ToppedUp | EventKind::Refunded) {
        return Ok(());
    }
    let Some(current) = referral(store, &event.customer_id).await? else { return Ok(()) };
    if !matches!(current.status, Status::Pending | Status::Qualified) {
        return Ok(());
    }
    let Some(program) = program(store, &current.program_id).await? else { return Ok(()) };
    let order = event.id.split_once(':').map(|(_, rest)| rest.to_owned());
    let key = keys::referral(&event.customer_id);
    let changed = kv::update_json(store, &key, |doc: Option<&Referral>| {
        let Some(r) = doc else { return Ok::<_, StoreError>(Step::Keep(None)) };
        match (event.kind, r.status) {
            (EventKind::Paid | EventKind::ToppedUp, Status::Pending) => {
                let amount = event.amount_fen.unwrap_or(0);
                let deadline = r.registered_at.plus_days(program.qualifying.within_days);
                if amount < program.qualifying.min_amount_fen.max(1) || event.at > deadline {
                    return Ok(Step::Keep(None));
                }
                let next = Referral {
                    status: Status::Qualified,
                    qualified_at: Some(event.at),
                    qualifying_order: order.clone(),
                    qualifying_fen: Some(amount),
                    ..r.clone()
                };
                Ok(Step::Write(next, Some(1)))
            }
            (EventKind::Refunded, Status::Qualified) => {
                let in_holding = r.rewardable_at(&program).is_some_and(|end| event.at < end);
                if !in_holding || r.qualifying_order != order {
                    return Ok(Step::Keep(None));
                }
                let next = Referral { status: Status::ClawedBack, clawed_back_at: Some(event.at), ..r.clone() };
                Ok(Step::Write(next, Some(-1)))
            }
            _ => Ok(Step::Keep(None)),
        }
    })
    .await?;
    let Some(delta) = changed else { return Ok(()) };
    let what = if delta > 0 { "qualified" } else { "clawed_back" };
    let referrer_count = keys::referrer_counter(&current.program_id, &current.referrer_id, "qualified");
    kv::count_once(store, &keys::effect(what, &event.customer_id), &referrer_count, delta).await?;
    let program_count = keys::program_counter(&current.program_id, what);
    kv::count_once(store, &keys::effect(&format!("{what}_p"), &event.customer_id), &program_count, 1).await?;
    Ok(())
}

/// Records a referral code for `referrer` in `program` (write-once per code text).
pub async fn put_code(store: &impl Store, code: &Code) -> Result<bool, StoreError> {
    kv::update_json(store, &keys::code(&code.code), |doc: Option<&Code>| match doc {
        Some(existing) => Ok::<_, StoreError>(Step::Keep(existing == code)),
        None => Ok(Step::Write(code.clone(), true)),
    })
    .await
}

/// The key of a referrer's own code in a program (for get-or-create).
pub fn own_code_key(program_id: &str, referrer_id: &str) -> Key {
    keys::referrer(program_id, referrer_id).child(&["code"])
}
