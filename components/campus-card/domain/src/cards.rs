//! Members and their cards: batch issuing, binding (with a lockout on wrong activation codes), the card states
//! (report lost, unfreeze, the school's freeze), daily limits, reissue with the balance moved exactly once, and the
//! card as a customer sees it.
//!
//! States: `unbound` → `active` (bind); `active` ⇄ `lost` (the holder); `active | lost` ⇄ `frozen` (the school);
//! `active | lost` → `replaced` (reissue, final). `expired` is not stored: a card past its `valid_until`
//! (Asia/Shanghai) shows and acts as expired whatever its state.

use scenefin_core::auth::{constant_time_eq, sha256_hex};
use scenefin_core::clock::Timestamp;
use scenefin_core::customers::{LifecycleRules, mask_name};
use scenefin_core::events::{self, Event, EventKind};
use scenefin_core::feed::{self, FeedEvent};
use scenefin_core::ids::{Id, hash_key_part};
use scenefin_core::json::text;
use scenefin_core::kv::{self, Step, Store, get_json};
use scenefin_core::ledger::{self, LedgerError, Line, Posting};
use scenefin_core::limits;
use scenefin_core::settlement::parse_date;
use serde::{Deserialize, Serialize};

use crate::schools::{self, School, stat};
use crate::txns::{self, Txn, TxnKind};
use crate::{CampusError, OWNER, Refusal, SCENARIO, keys};

/// Most members in one upload.
pub const MAX_BATCH: usize = 1000;
/// Daily limit of a new card.
pub const DEFAULT_DAILY_LIMIT_FEN: i64 = 50_000;
/// Highest daily limit a holder may set.
pub const MAX_DAILY_LIMIT_FEN: i64 = 1_000_000;
/// Wrong activation codes before the lock.
pub const MAX_BIND_FAILURES: u32 = 5;
/// How long a lock lasts.
pub const BIND_LOCK_SECS: i64 = 15 * 60;
/// Wrong activation codes one customer may try in a clock hour, over all members: the per-member lock alone lets
/// one customer try a few codes on every member of a roster.
pub const MAX_CUSTOMER_BIND_FAILURES_PER_HOUR: i64 = 10;
/// Most cards a customer can hold.
pub const MAX_CARDS_PER_CUSTOMER: usize = 20;
/// Most balance moves for one replaced card (each moves everything it holds, so more than one is rare).
const MAX_MOVES: u32 = 32;
/// Longest replacement chain followed when money reaches a replaced card.
const MAX_CHAIN: usize = 16;

/// Student or staff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberKind {
    /// Student.
    Student,
    /// Staff.
    Staff,
}

impl MemberKind {
    /// The customer tag binding a card of this kind adds.
    pub fn tag(self) -> &'static str {
        match self {
            MemberKind::Student => "campus_student",
            MemberKind::Staff => "campus_staff",
        }
    }
}

/// A card's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardStatus {
    /// Issued, not bound yet.
    Unbound,
    /// In use.
    Active,
    /// Reported lost by the holder.
    Lost,
    /// Frozen by the school.
    Frozen,
    /// Replaced by a reissued card (final).
    Replaced,
}

/// A member of a school, as uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Schema version.
    pub v: u32,
    /// School.
    pub school_id: String,
    /// Member number.
    pub member_no: String,
    /// Kind.
    pub kind: MemberKind,
    /// Name, masked (the full name is never stored).
    pub name: String,
    /// Last valid day, `YYYY-MM-DD`.
    pub valid_until: String,
    /// SHA-256 of the salted activation code.
    pub code_sha256: String,
    /// The member's current card.
    pub card_id: String,
    /// Wrong codes since the last lock or success.
    pub failures: u32,
    /// Locked until.
    pub locked_until: Option<Timestamp>,
    /// Issued.
    pub issued_at: Timestamp,
}

/// A state change of a card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// New state.
    pub status: CardStatus,
    /// When.
    pub at: Timestamp,
    /// `holder`, `school` or `reissue`.
    pub by: String,
}

/// A card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    /// Schema version.
    pub v: u32,
    /// Id.
    pub card_id: String,
    /// School.
    pub school_id: String,
    /// Member number.
    pub member_no: String,
    /// Kind.
    pub kind: MemberKind,
    /// Holder's name, masked as uploaded (the full name is never stored).
    pub holder_name: String,
    /// Last valid day, `YYYY-MM-DD`.
    pub valid_until: String,
    /// State.
    pub status: CardStatus,
    /// The customer who bound it.
    pub customer_id: Option<String>,
    /// Daily spending limit.
    pub daily_limit_fen: i64,
    /// The card that replaced this one.
    pub replaced_by: Option<String>,
    /// The card this one replaced.
    pub replaces: Option<String>,
    /// Issued.
    pub issued_at: Timestamp,
    /// Bound.
    pub bound_at: Option<Timestamp>,
    /// State changes, oldest first.
    pub history: Vec<Change>,
}

impl Card {
    /// Whether the card is past its last valid day at `now`.
    pub fn expired_at(&self, now: Timestamp) -> bool {
        parse_date(&self.valid_until).is_none_or(|last| now.shanghai_day() > last)
    }

    /// Why the card cannot pay or be topped up at `now`, if it cannot.
    pub fn refusal_at(&self, now: Timestamp) -> Option<Refusal> {
        match self.status {
            CardStatus::Lost => Some(Refusal::CardLost),
            CardStatus::Frozen => Some(Refusal::CardFrozen),
            CardStatus::Unbound | CardStatus::Replaced => Some(Refusal::CardNotActive),
            CardStatus::Active if self.expired_at(now) => Some(Refusal::CardExpired),
            CardStatus::Active => None,
        }
    }

    /// The status shown: the stored state, or `expired`.
    pub fn shown_status(&self, now: Timestamp) -> &'static str {
        match self.status {
            CardStatus::Replaced => "replaced",
            _ if self.expired_at(now) => "expired",
            CardStatus::Unbound => "unbound",
            CardStatus::Active => "active",
            CardStatus::Lost => "lost",
            CardStatus::Frozen => "frozen",
        }
    }

    fn moved(&self, status: CardStatus, at: Timestamp, by: &str) -> Card {
        let mut next = self.clone();
        next.status = status;
        next.history.push(Change { status, at, by: by.to_owned() });
        next
    }
}

/// The id of the first card of a member: derived, so re-uploads and concurrent uploads converge.
pub fn card_id_for(school_id: &str, member_no: &str) -> String {
    format!("cd_{}", &hash_key_part(&format!("{school_id}\n{member_no}"))[..24])
}

/// The id of the card that replaces `card_id`: derived, so a retried reissue finds the same card.
pub fn reissued_id(card_id: &str) -> String {
    format!("cd_{}", &hash_key_part(&format!("{card_id}\nreissue"))[..24])
}

fn code_sha256(school_id: &str, member_no: &str, code: &str) -> String {
    sha256_hex(format!("campus-activation\n{school_id}\n{member_no}\n{code}").as_bytes())
}

/// One row of an upload, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberInput {
    /// Member number.
    pub member_no: String,
    /// `student` or `staff`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Last valid day, `YYYY-MM-DD`.
    pub valid_until: String,
    /// Activation code handed to the member.
    pub activation_code: String,
}

/// A member's card, in upload results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedCard {
    /// Member number.
    pub member_no: String,
    /// Card.
    pub card_id: String,
}

/// What an upload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IssueResult {
    /// New members, each with a new card.
    pub issued: usize,
    /// Known members whose name or validity changed.
    pub updated: usize,
    /// Known members with nothing to change.
    pub unchanged: usize,
    /// Rows refused: `[member_no, code]`.
    pub rejected: Vec<(String, String)>,
    /// Every accepted member's current card.
    pub cards: Vec<IssuedCard>,
}

struct Row {
    member_no: String,
    kind: MemberKind,
    name: String,
    valid_until: String,
    code: String,
}

/// Checks one row (pure): `Err` is the rejection code.
fn check_row(row: &MemberInput) -> Result<Row, &'static str> {
    if Id::parse(&row.member_no).is_err() || row.member_no.len() > 32 {
        return Err("invalid_member_no");
    }
    let kind = match row.kind.as_str() {
        "student" => MemberKind::Student,
        "staff" => MemberKind::Staff,
        _ => return Err("invalid_kind"),
    };
    // Only the masked name is ever stored (PIPL: a store dump shows `张*丰`); it is all anyone is shown.
    let name = mask_name(&text(&row.name, 64).ok_or("invalid_name")?);
    if parse_date(&row.valid_until).is_none() {
        return Err("invalid_valid_until");
    }
    let code = &row.activation_code;
    if !(4..=32).contains(&code.len()) || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("invalid_activation_code_format");
    }
    Ok(Row { member_no: row.member_no.clone(), kind, name, valid_until: row.valid_until.clone(), code: code.clone() })
}

/// Issues cards to new members and updates known ones (idempotent by `member_no`: a known member keeps its card and
/// its activation code once bound).
pub async fn issue(
    store: &impl Store,
    school: &School,
    rows: &[MemberInput],
    now: Timestamp,
) -> Result<IssueResult, CampusError> {
    if rows.is_empty() || rows.len() > MAX_BATCH {
        return Err(CampusError::invalid("members", format!("1 to {MAX_BATCH} members per call")));
    }
    let mut result = IssueResult::default();
    let mut seen = std::collections::BTreeSet::new();
    let mut accepted = Vec::with_capacity(rows.len());
    for row in rows {
        match check_row(row) {
            Ok(row) if seen.insert(row.member_no.clone()) => accepted.push(row),
            Ok(row) => result.rejected.push((row.member_no, "duplicate_member_no".into())),
            Err(code) => result.rejected.push((row.member_no.chars().take(64).collect(), code.into())),
        }
    }
    let member_keys: Vec<_> = accepted.iter().map(|r| keys::member(&school.id, &r.member_no)).collect();
    let existing = kv::get_all(store, &member_keys).await?;
    for ((row, key), raw) in accepted.iter().zip(&member_keys).zip(existing) {
        let known = kv::decode_doc::<Member>(key, raw.as_deref())?;
        let card_id = match known {
            Some(member) => {
                if update_member(store, school, &member, row).await? {
                    result.updated += 1;
                } else {
                    result.unchanged += 1;
                }
                member.card_id
            }
            None => {
                let card_id = issue_one(store, school, row, now).await?;
                result.issued += 1;
                card_id
            }
        };
        result.cards.push(IssuedCard { member_no: row.member_no.clone(), card_id });
    }
    Ok(result)
}

/// Creates a new member's card, then the member (a crash in between leaves an unreferenced card with the derived
/// id, which the retry adopts).
async fn issue_one(store: &impl Store, school: &School, row: &Row, now: Timestamp) -> Result<String, CampusError> {
    let card_id = card_id_for(&school.id, &row.member_no);
    let card = Card {
        v: 1,
        card_id: card_id.clone(),
        school_id: school.id.clone(),
        member_no: row.member_no.clone(),
        kind: row.kind,
        holder_name: row.name.clone(),
        valid_until: row.valid_until.clone(),
        status: CardStatus::Unbound,
        customer_id: None,
        daily_limit_fen: DEFAULT_DAILY_LIMIT_FEN,
        replaced_by: None,
        replaces: None,
        issued_at: now,
        bound_at: None,
        history: vec![Change { status: CardStatus::Unbound, at: now, by: "school".into() }],
    };
    kv::update_json(store, &keys::card(&card_id), |doc: Option<&Card>| match doc {
        Some(_) => Ok::<_, CampusError>(Step::Keep(())),
        None => Ok(Step::Write(card.clone(), ())),
    })
    .await?;
    let member = Member {
        v: 1,
        school_id: school.id.clone(),
        member_no: row.member_no.clone(),
        kind: row.kind,
        name: row.name.clone(),
        valid_until: row.valid_until.clone(),
        code_sha256: code_sha256(&school.id, &row.member_no, &row.code),
        card_id: card_id.clone(),
        failures: 0,
        locked_until: None,
        issued_at: now,
    };
    let current = kv::update_json(store, &keys::member(&school.id, &row.member_no), |doc: Option<&Member>| match doc {
        Some(existing) => Ok::<_, CampusError>(Step::Keep(existing.card_id.clone())),
        None => Ok(Step::Write(member.clone(), card_id.clone())),
    })
    .await?;
    schools::count_once(store, &school.id, stat::CARDS_ISSUED, &card_id, 1).await?;
    Ok(current)
}

/// Applies a re-upload to a known member and its current card; `true` when something changed.
async fn update_member(store: &impl Store, school: &School, member: &Member, row: &Row) -> Result<bool, CampusError> {
    let card: Option<Card> = get_json(store, &keys::card(&member.card_id)).await?;
    let unbound = card.as_ref().is_some_and(|c| c.status == CardStatus::Unbound);
    let code = code_sha256(&school.id, &row.member_no, &row.code);
    let changed = kv::update_json(store, &keys::member(&school.id, &row.member_no), |doc: Option<&Member>| {
        let Some(doc) = doc else { return Err(CampusError::CardNotFound) };
        let mut next = doc.clone();
        next.name.clone_from(&row.name);
        next.valid_until.clone_from(&row.valid_until);
        next.kind = row.kind;
        if unbound {
            next.code_sha256.clone_from(&code);
        }
        if &next == doc {
            return Ok(Step::Keep(false));
        }
        Ok(Step::Write(next, true))
    })
    .await?;
    kv::update_json(store, &keys::card(&member.card_id), |doc: Option<&Card>| {
        let Some(doc) = doc else { return Ok::<_, CampusError>(Step::Keep(())) };
        if doc.holder_name == row.name && doc.valid_until == row.valid_until && doc.kind == row.kind {
            return Ok(Step::Keep(()));
        }
        let mut next = doc.clone();
        next.holder_name.clone_from(&row.name);
        next.valid_until.clone_from(&row.valid_until);
        next.kind = row.kind;
        Ok(Step::Write(next, ()))
    })
    .await?;
    Ok(changed)
}

/// What a bind attempt decided about the member.
enum Attempt {
    /// Locked before this attempt: no code was tried.
    Locked(Timestamp),
    /// A wrong code that locked the member.
    WrongAndLocked(Timestamp),
    /// A wrong code (or no such member), with the attempts left.
    Wrong(u32),
    /// The right code, for this card.
    Right(String),
}

/// Binds the member's card to the customer with the activation code. Returns the card and whether this call bound
/// it (`false`: the caller had bound it already).
pub async fn bind(
    store: &impl Store,
    customer_id: &str,
    school_id: &str,
    member_no: &str,
    activation_code: &str,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<(Card, bool), CampusError> {
    let school = schools::get(store, school_id).await?;
    if Id::parse(member_no).is_err() || activation_code.is_empty() || activation_code.len() > 64 {
        return Err(CampusError::InvalidActivationCode { attempts_left: MAX_BIND_FAILURES });
    }
    // Each attempt holds one of the customer's failures of the hour while it runs, so not even concurrent attempts
    // try more codes than the throttle allows; only a wrong code keeps it.
    let hour = now.unix_secs().div_euclid(3600);
    let failures = keys::bind_failures(customer_id, hour);
    if !limits::take(store, &failures, MAX_CUSTOMER_BIND_FAILURES_PER_HOUR, 1).await? {
        return Err(CampusError::BindThrottled(Timestamp::from_unix_secs((hour + 1) * 3600)));
    }
    let attempt = try_code(store, &school.id, member_no, activation_code, now).await;
    if !matches!(attempt, Ok(Attempt::Wrong(_) | Attempt::WrongAndLocked(_))) {
        limits::give_back(store, &failures, 1).await?;
    }
    let card_id = match attempt? {
        Attempt::Locked(until) | Attempt::WrongAndLocked(until) => return Err(CampusError::BindLocked(until)),
        Attempt::Wrong(left) => return Err(CampusError::InvalidActivationCode { attempts_left: left }),
        Attempt::Right(card_id) => card_id,
    };
    let (card, bound_now) = kv::update_json(store, &keys::card(&card_id), |doc: Option<&Card>| {
        let Some(doc) = doc else { return Err(CampusError::CardNotFound) };
        match (&doc.customer_id, doc.status) {
            (Some(owner), _) if owner == customer_id => Ok(Step::Keep((doc.clone(), false))),
            (Some(_), _) => Err(CampusError::CardAlreadyBound),
            (None, CardStatus::Unbound) => {
                if doc.expired_at(now) {
                    return Err(CampusError::Refused(Refusal::CardExpired));
                }
                let mut next = doc.moved(CardStatus::Active, now, "holder");
                next.customer_id = Some(customer_id.to_owned());
                next.bound_at = Some(now);
                Ok(Step::Write(next.clone(), (next, true)))
            }
            (None, _) => Err(CampusError::Refused(Refusal::CardNotActive)),
        }
    })
    .await?;
    add_to_customer(store, customer_id, &card.card_id).await?;
    schools::count_once(store, &school.id, stat::CARDS_BOUND, &card.card_id, 1).await?;
    let event = Event {
        tags: vec![card.kind.tag().to_owned()],
        ..Event::new(
            format!("bound:{SCENARIO}:{}", card.card_id),
            customer_id,
            EventKind::BoundAccount,
            SCENARIO,
            card.bound_at.unwrap_or(now),
        )
    };
    events::record(store, &event, rules).await?;
    Ok((card, bound_now))
}

/// Tries the activation code on the member, whose wrong codes lock it for [`BIND_LOCK_SECS`] after
/// [`MAX_BIND_FAILURES`].
async fn try_code(
    store: &impl Store,
    school_id: &str,
    member_no: &str,
    activation_code: &str,
    now: Timestamp,
) -> Result<Attempt, CampusError> {
    let code = code_sha256(school_id, member_no, activation_code);
    kv::update_json(store, &keys::member(school_id, member_no), |doc: Option<&Member>| {
        let Some(doc) = doc else {
            // No such member: the same answer as a wrong code, so member numbers cannot be probed.
            return Ok::<_, CampusError>(Step::Keep(Attempt::Wrong(MAX_BIND_FAILURES)));
        };
        if let Some(until) = doc.locked_until
            && now < until
        {
            return Ok(Step::Keep(Attempt::Locked(until)));
        }
        let mut next = doc.clone();
        next.locked_until = None;
        if constant_time_eq(code.as_bytes(), doc.code_sha256.as_bytes()) {
            next.failures = 0;
            return Ok(if next == *doc {
                Step::Keep(Attempt::Right(doc.card_id.clone()))
            } else {
                Step::Write(next, Attempt::Right(doc.card_id.clone()))
            });
        }
        next.failures += 1;
        if next.failures >= MAX_BIND_FAILURES {
            let until = now.plus_secs(BIND_LOCK_SECS);
            next.failures = 0;
            next.locked_until = Some(until);
            return Ok(Step::Write(next, Attempt::WrongAndLocked(until)));
        }
        let left = MAX_BIND_FAILURES - next.failures;
        Ok(Step::Write(next, Attempt::Wrong(left)))
    })
    .await
}

async fn add_to_customer(store: &impl Store, customer_id: &str, card_id: &str) -> Result<(), CampusError> {
    let key = keys::customer_cards(customer_id);
    if kv::read_index(store, &key).await?.len() >= MAX_CARDS_PER_CUSTOMER {
        return Err(CampusError::CardState(format!("at most {MAX_CARDS_PER_CUSTOMER} cards per customer")));
    }
    kv::add_to_index(store, &key, card_id).await?;
    Ok(())
}

/// A card by id.
pub async fn get(store: &impl Store, card_id: &str) -> Result<Card, CampusError> {
    if Id::parse(card_id).is_err() {
        return Err(CampusError::CardNotFound);
    }
    get_json(store, &keys::card(card_id)).await?.ok_or(CampusError::CardNotFound)
}

/// The customer's own card (anyone else's is [`CampusError::CardNotFound`]).
pub async fn owned(store: &impl Store, customer_id: &str, card_id: &str) -> Result<Card, CampusError> {
    let card = get(store, card_id).await?;
    if card.customer_id.as_deref() != Some(customer_id) {
        return Err(CampusError::CardNotFound);
    }
    Ok(card)
}

/// The customer's current cards (replaced ones are left out).
pub async fn list(store: &impl Store, customer_id: &str) -> Result<Vec<Card>, CampusError> {
    let cards: Vec<Card> = kv::read_indexed(store, &keys::customer_cards(customer_id), keys::card).await?;
    Ok(cards.into_iter().filter(|c| c.status != CardStatus::Replaced).collect())
}

/// A card as its holder sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardView {
    /// Id.
    pub card_id: String,
    /// School.
    pub school_id: String,
    /// Member number.
    pub member_no: String,
    /// Kind.
    pub kind: MemberKind,
    /// Holder's name, masked.
    pub holder_masked: String,
    /// `unbound`, `active`, `lost`, `frozen`, `expired` or `replaced`.
    pub status: &'static str,
    /// What the card holds.
    pub balance_fen: i64,
    /// Daily limit.
    pub daily_limit_fen: i64,
    /// Spent today (Asia/Shanghai).
    pub spent_today_fen: i64,
    /// Last valid day.
    pub valid_until: String,
    /// Bound.
    pub bound_at: Option<Timestamp>,
    /// The card that replaced this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
}

/// What a card holds: the negated balance of its credit-normal ledger account.
pub async fn balance_fen(store: &impl Store, card_id: &str) -> Result<i64, CampusError> {
    Ok(-ledger::balance(store, &keys::card_account(card_id)).await?)
}

/// The card with its balance and today's spending.
pub async fn view(store: &impl Store, card: &Card, now: Timestamp) -> Result<CardView, CampusError> {
    let balance = balance_fen(store, &card.card_id).await?;
    let spent = kv::read_counter(store, &keys::spent(&card.card_id, now.shanghai_day())).await?;
    Ok(CardView {
        card_id: card.card_id.clone(),
        school_id: card.school_id.clone(),
        member_no: card.member_no.clone(),
        kind: card.kind,
        holder_masked: mask_name(&card.holder_name),
        status: card.shown_status(now),
        balance_fen: balance,
        daily_limit_fen: card.daily_limit_fen,
        spent_today_fen: spent.max(0),
        valid_until: card.valid_until.clone(),
        bound_at: card.bound_at,
        replaced_by: card.replaced_by.clone(),
    })
}

/// Sets the daily limit of the customer's card.
pub async fn set_daily_limit(
    store: &impl Store,
    customer_id: &str,
    card_id: &str,
    limit_fen: i64,
) -> Result<Card, CampusError> {
    if !(1..=MAX_DAILY_LIMIT_FEN).contains(&limit_fen) {
        return Err(CampusError::invalid("daily_limit_fen", format!("1 to {MAX_DAILY_LIMIT_FEN}")));
    }
    owned(store, customer_id, card_id).await?;
    change(store, card_id, |card| {
        if card.status == CardStatus::Replaced {
            return Err(CampusError::Refused(Refusal::CardNotActive));
        }
        let mut next = card.clone();
        next.daily_limit_fen = limit_fen;
        Ok((next != *card).then_some(next))
    })
    .await
}

/// Who moves a card between states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The customer holding it.
    Holder,
    /// The school.
    School,
}

/// Reports the customer's card lost: every spend is refused from now on.
pub async fn report_lost(
    store: &impl Store,
    customer_id: &str,
    card_id: &str,
    now: Timestamp,
) -> Result<Card, CampusError> {
    owned(store, customer_id, card_id).await?;
    change(store, card_id, |card| match card.status {
        CardStatus::Active => Ok(Some(card.moved(CardStatus::Lost, now, "holder"))),
        CardStatus::Lost => Ok(None),
        CardStatus::Frozen => Err(CampusError::Refused(Refusal::CardFrozen)),
        CardStatus::Unbound | CardStatus::Replaced => Err(CampusError::Refused(Refusal::CardNotActive)),
    })
    .await
}

/// Lifts a freeze: the holder's own (`lost` → `active`) or the school's (`frozen` → `active`).
pub async fn unfreeze(store: &impl Store, card_id: &str, by: Actor, now: Timestamp) -> Result<Card, CampusError> {
    change(store, card_id, |card| match (card.status, by) {
        (CardStatus::Lost, Actor::Holder) => Ok(Some(card.moved(CardStatus::Active, now, "holder"))),
        (CardStatus::Frozen, Actor::School) => Ok(Some(card.moved(CardStatus::Active, now, "school"))),
        (CardStatus::Active, _) => Ok(None),
        (CardStatus::Frozen, Actor::Holder) => Err(CampusError::Refused(Refusal::CardFrozen)),
        (CardStatus::Lost, Actor::School) => {
            Err(CampusError::CardState("the holder reported this card lost; only the holder can unfreeze it".into()))
        }
        (CardStatus::Unbound | CardStatus::Replaced, _) => Err(CampusError::Refused(Refusal::CardNotActive)),
    })
    .await
}

/// The school freezes a card of its own.
pub async fn freeze(store: &impl Store, card_id: &str, now: Timestamp) -> Result<Card, CampusError> {
    change(store, card_id, |card| match card.status {
        CardStatus::Active | CardStatus::Lost => Ok(Some(card.moved(CardStatus::Frozen, now, "school"))),
        CardStatus::Frozen => Ok(None),
        CardStatus::Unbound | CardStatus::Replaced => Err(CampusError::Refused(Refusal::CardNotActive)),
    })
    .await
}

/// CAS on a card: `decide` returns the new card, or `None` to leave it.
async fn change(
    store: &impl Store,
    card_id: &str,
    decide: impl Fn(&Card) -> Result<Option<Card>, CampusError>,
) -> Result<Card, CampusError> {
    kv::update_json(store, &keys::card(card_id), |doc: Option<&Card>| {
        let Some(doc) = doc else { return Err(CampusError::CardNotFound) };
        Ok(match decide(doc)? {
            Some(next) => Step::Write(next.clone(), next),
            None => Step::Keep(doc.clone()),
        })
    })
    .await
}

/// What a reissue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reissued {
    /// The new card.
    pub card: Card,
    /// The card it replaced.
    pub replaced_card_id: String,
    /// Everything moved from the old card to the new one so far.
    pub moved_fen: i64,
}

/// Replaces the customer's `active` or `lost` card by a new one and moves the balance (idempotent: a retry returns
/// the same new card and moves only what has reached the old card since).
///
/// Order: the new card first (derived id, so a retry finds it), then the old card `replaced` (no spend can start on
/// it from here), the member's current card, the customer's list, and last the money, which [`sweep`] moves as
/// often as needed — each move takes whatever the old card holds, and the ledger refuses to move more.
pub async fn reissue(
    store: &impl Store,
    customer_id: &str,
    card_id: &str,
    now: Timestamp,
) -> Result<Reissued, CampusError> {
    let old = owned(store, customer_id, card_id).await?;
    let new_id = match (&old.status, &old.replaced_by) {
        (CardStatus::Replaced, Some(new_id)) => new_id.clone(),
        (CardStatus::Active | CardStatus::Lost, _) => reissued_id(&old.card_id),
        (CardStatus::Frozen, _) => return Err(CampusError::Refused(Refusal::CardFrozen)),
        _ => return Err(CampusError::Refused(Refusal::CardNotActive)),
    };
    let fresh = Card {
        card_id: new_id.clone(),
        status: CardStatus::Active,
        replaced_by: None,
        replaces: Some(old.card_id.clone()),
        issued_at: now,
        bound_at: Some(now),
        history: vec![Change { status: CardStatus::Active, at: now, by: "reissue".into() }],
        ..old.clone()
    };
    let card = kv::update_json(store, &keys::card(&new_id), |doc: Option<&Card>| match doc {
        Some(existing) => Ok::<_, CampusError>(Step::Keep(existing.clone())),
        None => Ok(Step::Write(fresh.clone(), fresh.clone())),
    })
    .await?;
    change(store, &old.card_id, |c| match (c.status, &c.replaced_by) {
        (CardStatus::Replaced, _) => Ok(None),
        (CardStatus::Active | CardStatus::Lost, _) => {
            let mut next = c.moved(CardStatus::Replaced, now, "reissue");
            next.replaced_by = Some(new_id.clone());
            Ok(Some(next))
        }
        (CardStatus::Frozen, _) => Err(CampusError::Refused(Refusal::CardFrozen)),
        (CardStatus::Unbound, _) => Err(CampusError::Refused(Refusal::CardNotActive)),
    })
    .await?;
    kv::update_json(store, &keys::member(&old.school_id, &old.member_no), |doc: Option<&Member>| match doc {
        Some(m) if m.card_id == old.card_id => {
            Ok::<_, CampusError>(Step::Write(Member { card_id: new_id.clone(), ..m.clone() }, ()))
        }
        _ => Ok(Step::Keep(())),
    })
    .await?;
    kv::add_to_index(store, &keys::customer_cards(customer_id), &new_id).await?;
    let moved_fen = sweep(store, &old.card_id, &new_id, now).await?;
    // Last, the school's feed: appended once by the new card's id, whichever attempt gets here (a retry, or a
    // concurrent reissue, appends nothing more); `moved_fen` is what had moved when it was first recorded.
    let data = serde_json::json!({
        "school_id": old.school_id, "member_no": old.member_no, "card_id": new_id,
        "replaced_card_id": old.card_id, "moved_fen": moved_fen, "reissued_at": card.issued_at,
    });
    let event = FeedEvent::new("card.reissued", &new_id, card.issued_at, data);
    feed::append(store, &feed::key(OWNER, &old.school_id), &event).await?;
    Ok(Reissued { card, replaced_card_id: old.card_id, moved_fen })
}

/// Moves everything `from` (a replaced card) holds to `to`, and returns the total ever moved between them.
///
/// Each move is a posting `move:{from}:{n}` for the balance read just before it. Concurrent sweeps read the same
/// balance and post the same posting (applied once), or conflict on `n` and re-read it; a move that finds less than
/// it read is refused by the ledger. Either way nothing moves twice and the loop ends with `from` empty.
pub async fn sweep(store: &impl Store, from: &str, to: &str, now: Timestamp) -> Result<i64, CampusError> {
    let mut total = 0;
    let mut n = 0;
    let mut attempts = 0;
    while n < MAX_MOVES && attempts < MAX_MOVES * 2 {
        attempts += 1;
        let id = format!("move:{from}:{n}");
        let posting = match ledger::posting(store, &id).await? {
            Some(existing) => existing,
            None => {
                let held = balance_fen(store, from).await?;
                if held <= 0 {
                    break;
                }
                Posting {
                    v: 1,
                    id: id.clone(),
                    at: now,
                    memo: format!("balance of replaced card {from} to {to}"),
                    lines: vec![
                        Line { account: keys::card_account(from), amount_fen: held },
                        Line { account: keys::card_account(to), amount_fen: -held },
                    ],
                }
            }
        };
        match ledger::post(store, &posting).await {
            Ok(_) => {
                let amount = posting.lines.first().map_or(0, |l| l.amount_fen);
                total += amount;
                let at = posting.at;
                let out = Txn {
                    txn_id: id.clone(),
                    kind: TxnKind::TransferOut,
                    amount_fen: -amount,
                    reference: to.to_owned(),
                    merchant_id: None,
                    at,
                };
                txns::append(store, from, &out).await?;
                let incoming = Txn { kind: TxnKind::TransferIn, amount_fen: amount, reference: from.to_owned(), ..out };
                txns::append(store, to, &incoming).await?;
                n += 1;
            }
            Err(LedgerError::InsufficientFunds { .. }) => n += 1,
            // Another sweep recorded a different amount under this id: read and complete theirs.
            Err(LedgerError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(total)
}

/// When money reached a replaced card (a late top-up, a reversal), moves it along the replacement chain to the
/// current card.
pub async fn forward_if_replaced(store: &impl Store, card_id: &str, now: Timestamp) -> Result<(), CampusError> {
    let mut card = get(store, card_id).await?;
    for _ in 0..MAX_CHAIN {
        let Some(next) = card.replaced_by.clone() else { return Ok(()) };
        sweep(store, &card.card_id, &next, now).await?;
        card = get(store, &next).await?;
    }
    Ok(())
}
