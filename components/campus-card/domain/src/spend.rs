//! Spending at campus merchants: one-time pay codes, the spend (idempotent per merchant and `pos_txn_id`), its
//! same-day reversal, and the merchant's daily settlement reconciled to the ledger.
//!
//! A spend is a record first (`campus:spend:{id}`, `pending`), then a chain of steps each safe to repeat: the card's
//! state, the pay code (claimed by this spend id), the daily limit (an atomic capped counter, flagged as taken on
//! the record), the ledger posting `spend:{id}` — which is the balance check, refused in the same CAS that would
//! apply it — and `completed`, after which the effects (transaction list, settlement, event, statistics) run, each
//! idempotent. A retry of the same `pos_txn_id` resumes wherever the last attempt stopped; a refusal is recorded
//! and replayed.
//!
//! Every imprecision a crash can cause goes the safe way: a limit taken and not yet flagged stays counted (the
//! holder can spend a little less that day), a limit give-back claimed and not yet made stays unmade. A store
//! *error* while flagging the take gives it back, so only a crash leaks.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::LifecycleRules;
use scenefin_core::events::{self, Event, EventKind};
use scenefin_core::ids::{Id, hash_key_part, random_bytes};
use scenefin_core::kv::{self, Step, Store, get_json, put_json};
use scenefin_core::ledger::{self, LedgerError, Line, Posting};
use scenefin_core::limits;
use scenefin_core::settlement::parse_date;
use serde::{Deserialize, Serialize};

use crate::cards::{self, Card};
use crate::schools::{self, Merchant, stat};
use crate::txns::{self, Txn, TxnKind};
use crate::{CampusError, Refusal, SCENARIO, keys};

/// How long a pay code is valid.
pub const PAY_CODE_TTL_SECS: i64 = 60;
/// Digits of a pay code.
pub const PAY_CODE_DIGITS: usize = 18;
/// Largest single spend.
pub const MAX_SPEND_FEN: i64 = 100_000;

/// A one-time pay code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayCode {
    /// Schema version.
    pub v: u32,
    /// The card it pays with.
    pub card_id: String,
    /// Valid until.
    pub expires_at: Timestamp,
    /// The spend that used it.
    pub used_by: Option<String>,
}

/// Issues a pay code for the customer's card (which must be able to pay now).
pub async fn pay_code(
    store: &impl Store,
    customer_id: &str,
    card_id: &str,
    now: Timestamp,
) -> Result<(String, PayCode), CampusError> {
    let card = cards::owned(store, customer_id, card_id).await?;
    if let Some(refusal) = card.refusal_at(now) {
        return Err(CampusError::Refused(refusal));
    }
    let bytes = random_bytes::<16>().map_err(|e| CampusError::invalid("pay_code", e.to_string()))?;
    // 18 digits: "28" (a pay-code prefix, as wallets use) and 16 random ones.
    let n = u128::from_le_bytes(bytes) % 10u128.pow(16);
    let code = format!("28{n:016}");
    let doc = PayCode { v: 1, card_id: card.card_id, expires_at: now.plus_secs(PAY_CODE_TTL_SECS), used_by: None };
    // 10^16 random codes: a collision with a live code is negligible, and would only make this write win.
    put_json(store, &keys::pay_code(&code), &doc).await?;
    Ok((code, doc))
}

/// How the card was presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "value")]
pub enum Presented {
    /// The card id (a tap of the physical card).
    CardId(String),
    /// A pay code; kept as its hash.
    PayCode(String),
}

/// A spend's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendState {
    /// Being processed (or interrupted: a retry resumes it).
    Pending,
    /// Paid.
    Completed,
    /// Refused; `refusal` says why.
    Refused,
    /// Completed, then reversed.
    Reversed,
}

/// A spend record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    /// Schema version.
    pub v: u32,
    /// Id: derived from the merchant and `pos_txn_id`.
    pub spend_id: String,
    /// The merchant.
    pub merchant_id: String,
    /// The merchant's reference.
    pub pos_txn_id: String,
    /// The card.
    pub card_id: String,
    /// How it was presented.
    pub presented: Presented,
    /// Amount.
    pub amount_fen: i64,
    /// State.
    pub state: SpendState,
    /// Why it was refused.
    pub refusal: Option<Refusal>,
    /// The daily limit was taken for it.
    pub limit_taken: bool,
    /// Its day (Asia/Shanghai, `yyyymmdd`): the daily limit and the settlement day.
    pub day: u32,
    /// Received.
    pub created_at: Timestamp,
    /// Paid.
    pub completed_at: Option<Timestamp>,
    /// Reversed.
    pub reversed_at: Option<Timestamp>,
}

impl Spend {
    fn posting(&self) -> Posting {
        Posting {
            v: 1,
            id: format!("spend:{}", self.spend_id),
            at: self.created_at,
            memo: format!("campus spend {} at {}", self.pos_txn_id, self.merchant_id),
            lines: vec![
                Line { account: keys::card_account(&self.card_id), amount_fen: self.amount_fen },
                Line { account: keys::merchant_account(&self.merchant_id), amount_fen: -self.amount_fen },
            ],
        }
    }

    fn reversal(&self, at: Timestamp) -> Posting {
        let spend = self.posting();
        Posting {
            v: 1,
            id: format!("rev:{}", self.spend_id),
            at,
            memo: format!("reversal of campus spend {} at {}", self.pos_txn_id, self.merchant_id),
            lines: spend.lines.into_iter().map(|l| Line { amount_fen: -l.amount_fen, ..l }).collect(),
        }
    }
}

/// What a POS sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendInput {
    /// The merchant's transaction reference.
    pub pos_txn_id: String,
    /// The card, when tapped.
    pub card_id: Option<String>,
    /// The pay code, when scanned.
    pub pay_code: Option<String>,
    /// Amount.
    pub amount_fen: i64,
}

/// The spend id of a merchant's `pos_txn_id`.
pub fn spend_id_for(merchant_id: &str, pos_txn_id: &str) -> String {
    format!("sp_{}", &hash_key_part(&format!("{merchant_id}\n{pos_txn_id}"))[..24])
}

fn valid_pay_code(code: &str) -> bool {
    code.len() == PAY_CODE_DIGITS && code.bytes().all(|b| b.is_ascii_digit())
}

/// Debits a card for a merchant, exactly once per (merchant, `pos_txn_id`). `Ok` is a completed (or since reversed)
/// spend; a refusal is an `Err`, the same on every retry.
pub async fn spend(
    store: &impl Store,
    merchant: &Merchant,
    input: &SpendInput,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Spend, CampusError> {
    if Id::parse(&input.pos_txn_id).is_err() {
        return Err(CampusError::invalid("pos_txn_id", "1 to 64 of [A-Za-z0-9_-]"));
    }
    if !(1..=MAX_SPEND_FEN).contains(&input.amount_fen) {
        return Err(CampusError::invalid("amount_fen", format!("1 to {MAX_SPEND_FEN}")));
    }
    let presented = match (&input.card_id, &input.pay_code) {
        (Some(card), None) => Presented::CardId(card.clone()),
        (None, Some(code)) if valid_pay_code(code) => Presented::PayCode(hash_key_part(code)),
        (None, Some(_)) => return Err(CampusError::PayCodeInvalid),
        _ => return Err(CampusError::invalid("card_id", "exactly one of card_id and pay_code")),
    };
    let spend_id = spend_id_for(&merchant.id, &input.pos_txn_id);
    let key = keys::spend(&spend_id);
    // The card read to create the record serves the rest of this call (a replay reads it when needed).
    let (record, card) = match get_json::<Spend>(store, &key).await? {
        Some(existing) => (existing, None),
        None => {
            let card = match &input.pay_code {
                Some(code) => {
                    let doc: PayCode =
                        get_json(store, &keys::pay_code(code)).await?.ok_or(CampusError::PayCodeInvalid)?;
                    cards::get(store, &doc.card_id).await?
                }
                None => cards::get(store, input.card_id.as_deref().unwrap_or_default()).await?,
            };
            // Another school's card is unknown here.
            if card.school_id != merchant.school_id {
                return Err(CampusError::CardNotFound);
            }
            let mut fresh = Spend {
                v: 1,
                spend_id: spend_id.clone(),
                merchant_id: merchant.id.clone(),
                pos_txn_id: input.pos_txn_id.clone(),
                card_id: card.card_id.clone(),
                presented: presented.clone(),
                amount_fen: input.amount_fen,
                state: SpendState::Pending,
                refusal: None,
                limit_taken: false,
                day: now.shanghai_day(),
                created_at: now,
                completed_at: None,
                reversed_at: None,
            };
            // The card's checks and its daily limit come before the record, so the record is written once with
            // their outcome: refused, or pending with the limit taken.
            let counter = keys::spent(&card.card_id, fresh.day);
            let took = match admit(store, &fresh, &card, input.pay_code.as_deref(), now).await? {
                Some(refusal) => {
                    (fresh.state, fresh.refusal) = (SpendState::Refused, Some(refusal));
                    false
                }
                None => {
                    fresh.limit_taken = true;
                    true
                }
            };
            // Read as absent just now: claim its creation first. A concurrent attempt of the same spend that
            // recorded it first owns the limit: ours goes back.
            let created = kv::update_json_new(store, &key, |doc: Option<&Spend>| match doc {
                Some(existing) => Ok::<_, CampusError>(Step::Keep((existing.clone(), false))),
                None => Ok(Step::Write(fresh.clone(), (fresh.clone(), true))),
            })
            .await;
            let record = match created {
                Ok((record, ours)) => {
                    if took && !ours {
                        limits::give_back(store, &counter, input.amount_fen).await?;
                    }
                    record
                }
                Err(e) => {
                    // Not recorded as ours (absent or another attempt's): the take is ours to give back. If the store
                    // cannot tell, keep it counted (the card may spend a little less today, never more).
                    if took
                        && let Ok(stored) = get_json::<Spend>(store, &key).await
                        && stored.is_none_or(|s| s.created_at != fresh.created_at || !s.limit_taken)
                    {
                        let _ = limits::give_back(store, &counter, input.amount_fen).await;
                    }
                    return Err(e);
                }
            };
            let card = (record.card_id == card.card_id).then_some(card);
            (record, card)
        }
    };
    let same_card = match (&presented, &record.presented) {
        (Presented::CardId(card), _) => *card == record.card_id,
        (Presented::PayCode(hash), Presented::PayCode(recorded)) => hash == recorded,
        (Presented::PayCode(_), Presented::CardId(_)) => false,
    };
    if !same_card || record.amount_fen != input.amount_fen {
        return Err(CampusError::PosTxnConflict(input.pos_txn_id.clone()));
    }
    resume(store, record, card, input.pay_code.as_deref(), rules, now).await
}

/// Drives a spend record to its end from wherever it stands; `card` is the record's card if already read.
async fn resume(
    store: &impl Store,
    record: Spend,
    mut card: Option<Card>,
    pay_code: Option<&str>,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Spend, CampusError> {
    // Whether this call completed the spend (its effects are then almost surely not made yet).
    let (record, first) = match record.state {
        SpendState::Refused => {
            return Err(CampusError::Refused(record.refusal.unwrap_or(Refusal::CardNotActive)));
        }
        SpendState::Completed | SpendState::Reversed => (record, false),
        SpendState::Pending => {
            if !record.limit_taken {
                let current = match card.take() {
                    Some(c) => c,
                    None => cards::get(store, &record.card_id).await?,
                };
                if let Some(refusal) = admit(store, &record, &current, pay_code, now).await? {
                    return refuse(store, &record, refusal).await;
                }
                card = Some(current);
                let counter = keys::spent(&record.card_id, record.day);
                let flagged = update(store, &record.spend_id, |s| {
                    (s.state == SpendState::Pending && !s.limit_taken).then(|| Spend { limit_taken: true, ..s.clone() })
                })
                .await;
                let ours = match flagged {
                    Ok(flagged) => flagged,
                    Err(e) => {
                        // Still not flagged means our CAS did not land, so our take is ours to give back (the retry
                        // takes it again). Otherwise it may have landed: keep it counted.
                        let stored = get_json::<Spend>(store, &keys::spend(&record.spend_id)).await.ok().flatten();
                        if stored.is_some_and(|s| s.state == SpendState::Pending && !s.limit_taken) {
                            let _ = limits::give_back(store, &counter, record.amount_fen).await;
                        }
                        return Err(e);
                    }
                };
                if !ours.1 {
                    // A concurrent attempt of the same spend flagged its own take first: ours is extra.
                    limits::give_back(store, &counter, record.amount_fen).await?;
                }
            }
            match ledger::post(store, &record.posting()).await {
                Ok(_) => {}
                Err(LedgerError::InsufficientFunds { .. }) => {
                    return refuse(store, &record, Refusal::InsufficientBalance).await;
                }
                Err(e) => return Err(e.into()),
            }
            update(store, &record.spend_id, |s| {
                (s.state == SpendState::Pending).then(|| Spend {
                    state: SpendState::Completed,
                    completed_at: Some(now),
                    ..s.clone()
                })
            })
            .await?
        }
    };
    let card = match card {
        Some(c) => c,
        None => cards::get(store, &record.card_id).await?,
    };
    completed_effects(store, &record, &card, rules, first).await?;
    Ok(record)
}

/// Admits a spend on its card: the card-side checks ([`check_card`]), then the day's limit taken. `None` when
/// admitted (the limit is then taken for the spend); otherwise the refusal, with nothing taken.
async fn admit(
    store: &impl Store,
    record: &Spend,
    card: &Card,
    pay_code: Option<&str>,
    now: Timestamp,
) -> Result<Option<Refusal>, CampusError> {
    if let Some(refusal) = check_card(store, record, card, pay_code, now).await? {
        return Ok(Some(refusal));
    }
    let counter = keys::spent(&record.card_id, record.day);
    if !limits::take(store, &counter, card.daily_limit_fen, record.amount_fen).await? {
        return Ok(Some(Refusal::DailyLimitExceeded));
    }
    Ok(None)
}

/// The card-side checks before any money or limit moves: state, expiry, and the pay code (claimed for this spend).
async fn check_card(
    store: &impl Store,
    record: &Spend,
    card: &Card,
    pay_code: Option<&str>,
    now: Timestamp,
) -> Result<Option<Refusal>, CampusError> {
    if let Some(refusal) = card.refusal_at(now) {
        return Ok(Some(refusal));
    }
    let Some(code) = pay_code else { return Ok(None) };
    kv::update_json(store, &keys::pay_code(code), |doc: Option<&PayCode>| {
        let Some(doc) = doc else { return Err(CampusError::PayCodeInvalid) };
        match &doc.used_by {
            Some(by) if *by == record.spend_id => Ok(Step::Keep(None)),
            Some(_) => Ok(Step::Keep(Some(Refusal::PayCodeUsed))),
            None if now > doc.expires_at => Ok(Step::Keep(Some(Refusal::PayCodeExpired))),
            None => Ok(Step::Write(PayCode { used_by: Some(record.spend_id.clone()), ..doc.clone() }, None)),
        }
    })
    .await
}

/// Records the refusal (once) and gives back a daily limit this spend had taken.
async fn refuse(store: &impl Store, record: &Spend, refusal: Refusal) -> Result<Spend, CampusError> {
    let (stored, ours) = update(store, &record.spend_id, |s| {
        (s.state == SpendState::Pending).then(|| Spend {
            state: SpendState::Refused,
            refusal: Some(refusal),
            ..s.clone()
        })
    })
    .await?;
    if ours && stored.limit_taken {
        limits::give_back(store, &keys::spent(&stored.card_id, stored.day), stored.amount_fen).await?;
    }
    match stored.state {
        // A concurrent attempt of the same spend completed it: that outcome stands.
        SpendState::Completed | SpendState::Reversed => Ok(stored),
        _ => Err(CampusError::Refused(stored.refusal.unwrap_or(refusal))),
    }
}

/// CAS on a spend record: `decide` returns the new record or `None` to keep it. Returns the record and whether this
/// call wrote it.
async fn update(
    store: &impl Store,
    spend_id: &str,
    decide: impl Fn(&Spend) -> Option<Spend>,
) -> Result<(Spend, bool), CampusError> {
    kv::update_json(store, &keys::spend(spend_id), |doc: Option<&Spend>| {
        let Some(doc) = doc else { return Err(CampusError::SpendNotFound) };
        Ok(match decide(doc) {
            Some(next) => Step::Write(next.clone(), (next, true)),
            None => Step::Keep((doc.clone(), false)),
        })
    })
    .await
}

/// The effects of a completed spend, each idempotent.
async fn completed_effects(
    store: &impl Store,
    record: &Spend,
    card: &Card,
    rules: &LifecycleRules,
    first: bool,
) -> Result<(), CampusError> {
    let at = record.completed_at.unwrap_or(record.created_at);
    let txn = Txn {
        txn_id: format!("spend:{}", record.spend_id),
        kind: TxnKind::Spend,
        amount_fen: -record.amount_fen,
        reference: record.pos_txn_id.clone(),
        merchant_id: Some(record.merchant_id.clone()),
        at,
    };
    if first {
        txns::append_new(store, &record.card_id, &txn).await?;
    } else {
        txns::append(store, &record.card_id, &txn).await?;
    }
    settle(store, &record.merchant_id, record.day, &format!("spend:{}", record.spend_id)).await?;
    // The school's statistics: the spend's behind one claim, the card's first activity behind the card's own.
    let counters = [
        (keys::stat(&card.school_id, stat::SPENDS), 1),
        (keys::stat(&card.school_id, stat::SPEND_FEN), record.amount_fen),
    ];
    kv::count_all_once(store, &keys::effect(stat::SPENDS, &record.spend_id), &counters).await?;
    schools::count_once(store, &card.school_id, stat::CARDS_ACTIVE, &card.card_id, 1).await?;
    if let Some(customer_id) = &card.customer_id {
        // One `paid` event per card and day: what lifecycle and funnels need, without a profile write per coffee.
        let event = Event {
            amount_fen: Some(record.amount_fen),
            ..Event::new(
                format!("paid:{SCENARIO}:{}:{}", card.card_id, record.day),
                customer_id,
                EventKind::Paid,
                SCENARIO,
                at,
            )
        };
        events::record(store, &event, rules).await?;
    }
    Ok(())
}

/// Lists a posting id on the merchant's settlement day (16 shards, so a busy canteen's day is not one hot document).
async fn settle(store: &impl Store, merchant_id: &str, day: u32, posting_id: &str) -> Result<(), CampusError> {
    let shard = hash_key_part(posting_id).chars().next().unwrap_or('0');
    kv::append_to_log(store, &keys::settlement(merchant_id, day, shard), posting_id).await?;
    Ok(())
}

/// Reverses a completed spend of this merchant, on the spend's own day (idempotent).
pub async fn reverse(
    store: &impl Store,
    merchant: &Merchant,
    spend_id: &str,
    now: Timestamp,
) -> Result<Spend, CampusError> {
    if Id::parse(spend_id).is_err() {
        return Err(CampusError::SpendNotFound);
    }
    let record: Spend = get_json(store, &keys::spend(spend_id)).await?.ok_or(CampusError::SpendNotFound)?;
    if record.merchant_id != merchant.id {
        return Err(CampusError::SpendNotFound);
    }
    match record.state {
        SpendState::Pending | SpendState::Refused => return Err(CampusError::SpendNotCompleted),
        SpendState::Completed if now.shanghai_day() != record.day => return Err(CampusError::ReversalWindowClosed),
        SpendState::Completed | SpendState::Reversed => {}
    }
    let (record, _) = update(store, spend_id, |s| {
        (s.state == SpendState::Completed).then(|| Spend {
            state: SpendState::Reversed,
            reversed_at: Some(now),
            ..s.clone()
        })
    })
    .await?;
    let at = record.reversed_at.unwrap_or(now);
    let posting = record.reversal(at);
    ledger::post(store, &posting).await?;
    // The day's limit comes back once.
    let claim = keys::effect("limit_back", &record.spend_id);
    kv::count_once(store, &claim, &keys::spent(&record.card_id, record.day), -record.amount_fen).await?;
    let txn = Txn {
        txn_id: posting.id.clone(),
        kind: TxnKind::Reversal,
        amount_fen: record.amount_fen,
        reference: record.pos_txn_id.clone(),
        merchant_id: Some(record.merchant_id.clone()),
        at,
    };
    txns::append(store, &record.card_id, &txn).await?;
    settle(store, &record.merchant_id, record.day, &posting.id).await?;
    let card = cards::get(store, &record.card_id).await?;
    schools::count_once(store, &card.school_id, stat::REVERSED_FEN, &record.spend_id, record.amount_fen).await?;
    cards::forward_if_replaced(store, &record.card_id, now).await?;
    Ok(record)
}

/// A settlement line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettlementLine {
    /// Spend.
    pub spend_id: String,
    /// The merchant's reference.
    pub pos_txn_id: String,
    /// `spend` or `reversal`.
    pub kind: &'static str,
    /// Owed to the merchant (negative for reversals).
    pub amount_fen: i64,
    /// What the ledger posted to the merchant's settlement account for it.
    pub ledger_fen: i64,
}

/// A merchant's day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// Merchant.
    pub merchant_id: String,
    /// Day, `YYYY-MM-DD` (Asia/Shanghai).
    pub date: String,
    /// Lines, in spend order.
    pub lines: Vec<SettlementLine>,
    /// Spends.
    pub spends: usize,
    /// Reversals.
    pub reversals: usize,
    /// Net owed.
    pub total_fen: i64,
    /// The same from the ledger.
    pub ledger_total_fen: i64,
    /// Every line matched its posting and the totals agree.
    pub reconciled: bool,
}

/// The merchant's statement for `date` (`YYYY-MM-DD`).
pub async fn statement(store: &impl Store, merchant: &Merchant, date: &str) -> Result<Statement, CampusError> {
    let day = parse_date(date).ok_or_else(|| CampusError::invalid("date", "YYYY-MM-DD"))?;
    let shard_keys: Vec<_> = "0123456789abcdef".chars().map(|s| keys::settlement(&merchant.id, day, s)).collect();
    let posting_ids: Vec<String> = kv::read_logs(store, &shard_keys).await?.into_iter().flatten().collect();
    let account = keys::merchant_account(&merchant.id);
    let mut lines = Vec::with_capacity(posting_ids.len());
    let mut reconciled = true;
    for id in &posting_ids {
        let (kind, spend_id, sign) = match id.split_once(':') {
            Some(("spend", s)) => ("spend", s, 1),
            Some(("rev", s)) => ("reversal", s, -1),
            _ => {
                reconciled = false;
                continue;
            }
        };
        let record: Option<Spend> = get_json(store, &keys::spend(spend_id)).await?;
        let posting = ledger::posting(store, id).await?;
        let (Some(record), Some(posting)) = (record, posting) else {
            reconciled = false;
            continue;
        };
        let ledger_fen: i64 = posting.lines.iter().filter(|l| l.account == account).map(|l| -l.amount_fen).sum();
        let amount_fen = sign * record.amount_fen;
        reconciled &= ledger_fen == amount_fen;
        lines.push(SettlementLine {
            spend_id: record.spend_id,
            pos_txn_id: record.pos_txn_id,
            kind,
            amount_fen,
            ledger_fen,
        });
    }
    lines.sort_by(|a, b| (&a.spend_id, a.kind).cmp(&(&b.spend_id, b.kind)));
    let total_fen = lines.iter().map(|l| l.amount_fen).sum();
    let ledger_total_fen = lines.iter().map(|l| l.ledger_fen).sum();
    Ok(Statement {
        merchant_id: merchant.id.clone(),
        date: date.to_owned(),
        spends: lines.iter().filter(|l| l.kind == "spend").count(),
        reversals: lines.iter().filter(|l| l.kind == "reversal").count(),
        reconciled: reconciled && total_fen == ledger_total_fen,
        total_fen,
        ledger_total_fen,
        lines,
    })
}
