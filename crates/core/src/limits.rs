//! Budgets that concurrent requests reserve from, then commit or release, never over-spent; and capped counters
//! for per-subject and per-day limits.
//!
//! A budget lives under a base key its owner chooses (e.g. `util:budget:discount_w1`); this module owns everything
//! under it:
//! - `{base}`: the configuration `{v, total_fen}` ([`configure`]).
//! - `{base}:ctr:reserved_fen`: fen reserved or committed; `{base}:ctr:committed_fen`: fen committed. Atomic
//!   counters, changed only by `increment`.
//! - `{base}:resv:{id}`: a reservation `{amount_fen, state, expires_at, counters_pending}`, written once the amount
//!   is taken (or refused) and indexed, directly in its first state `reserved` | `rejected` (a new id: the creation
//!   is claimed without a read); `reserved` → `committed` | `released`; `committed` → `released` (a refund).
//!   (`reserving`, a state before the outcome, is only found in documents written by earlier versions.)
//! - `{base}:open:{hour}:{shard}`: ids of granted reservations by the hour they expire (Unix hours, 16 shards by
//!   hashed id), so [`sweep_expired`] finds abandoned ones without listing the store. Each is a log
//!   ([`crate::kv::append_to_log`]), so a busy hour costs each reservation the same.
//! - `{base}:fx:{id}:{effect}`: one-shot claims making each counter change of a reservation happen at most once.
//! - `{base}:swept`: `{v, through_hour}`, the last expiry hour whose reservations were all swept ([`sweep_due`]),
//!   so every exhausted reserve frees expired reservations of any age, each hour once, and a budget read counts
//!   the expired ones of the hours since as free.
//! - `ops:lapsed:{yyyymmdd}`: a log of `{base}/{id}` of the reservations a sweep released because they expired,
//!   by the Shanghai day of the sweep, for every budget: what operators review as reservations nobody came back
//!   for ([`lapsed_in`]; [`expired_unreleased`] lists those expired and not swept yet).
//!
//! Hundreds of concurrent quotes reserve from one budget, so the budget is an atomic counter rather than a CAS'd
//! document: a reserver adds its amount and, if the sum passes the total, subtracts it again at once.
//!
//! Invariant: the amounts of granted reservations (`reserved` or `committed`) never sum to more than the total,
//! under any concurrency, retry or crash, and `reserved_fen` is never below that sum. Every imprecision goes the
//! other way, under-use:
//! - while an over-total addition is being undone, a concurrent reserver may be refused although room remains;
//! - a reserver that dies between adding its amount and recording the grant leaves the amount counted, and its
//!   retry adds it again (a store *error* in that window is undone; only a crash leaks);
//! - a counter change whose claim was taken by a caller that died before making it stays unmade. State changes
//!   record the counter changes they owe (`counters_pending`) in the same CAS, and any later call touching the
//!   reservation makes the outstanding ones, so only that claim-to-increment instant can lose one.
//!
//! Lowering the total below what is reserved is allowed: nothing more is granted until enough is released.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::kv::{Key, MAX_KEY_BYTES, Step, Store, StoreError, claim_once, counter_of};
use crate::kv::{decode_doc, get_all, update_json as update_doc};
use crate::ledger::{SHARDS, shard_of, valid_name};
use crate::problem::{ErrorKind, Problem};

/// Largest budget or reservation: 10^15 fen.
const MAX_FEN: i64 = 1_000_000_000_000_000;
/// How many hours back a budget's first [`sweep_due`] looks (later ones resume where the last one stopped).
const FIRST_SWEEP_HOURS: i64 = 6;
/// Most hours one [`sweep_due`] catches up (a budget nobody touched for longer catches up over several calls).
const SWEEP_CATCH_UP_HOURS: i64 = 168;
/// The longest suffix this module appends to a base key after the reservation id (`:fx:` … `:uncommit`).
const ID_KEY_OVERHEAD: usize = 13;
/// The longest suffix without an id (`:open:{hour}:{shard}` with a 20-character hour, then a log slot's suffix).
const BASE_KEY_OVERHEAD: usize = 28 + crate::kv::LOG_KEY_OVERHEAD;

/// The answer to [`reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reserved {
    /// The amount is held for the caller until it commits, releases or the reservation expires.
    Granted,
    /// Not enough budget left: a normal outcome (the caller goes without, e.g. gives no discount).
    Exhausted,
}

/// A budget's counters, as [`status`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BudgetStatus {
    /// The configured total (0 when never configured).
    pub total_fen: i64,
    /// Reserved or committed.
    pub reserved_fen: i64,
    /// Committed.
    pub committed_fen: i64,
    /// What can still be reserved: total minus reserved, never negative.
    pub available_fen: i64,
}

/// Why a budget or counter operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Malformed input: a bug in the caller.
    #[error("invalid budget request: {0}")]
    Invalid(String),
    /// The reservation is not in a state that allows the operation (unknown, released, rejected...).
    #[error("reservation {id} is not active")]
    NotReserved {
        /// The reservation id.
        id: String,
    },
    /// The reservation is still being decided by a `reserve` call; retry shortly.
    #[error("reservation {id} is still being decided; retry shortly")]
    Pending {
        /// The reservation id.
        id: String,
    },
    /// The reservation id was already used with a different amount.
    #[error("reservation {id} already exists with a different amount")]
    Conflict {
        /// The reservation id.
        id: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Problem for LimitError {
    fn kind(&self) -> ErrorKind {
        match self {
            LimitError::Invalid(_) => ErrorKind::Invalid,
            LimitError::NotReserved { .. } | LimitError::Conflict { .. } => ErrorKind::Conflict,
            LimitError::Pending { .. } => ErrorKind::Unavailable,
            LimitError::Store(e) => e.kind(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            LimitError::Invalid(_) => "validation_failed",
            LimitError::NotReserved { .. } => "reservation_not_active",
            LimitError::Pending { .. } => "reservation_in_progress",
            LimitError::Conflict { .. } => "reservation_conflict",
            LimitError::Store(e) => e.code(),
        }
    }
}

/// Sets the budget's total (raising or lowering it). The first call also marks the hour from which expired
/// reservations are swept ([`sweep_due`]).
pub async fn configure(store: &impl Store, base: &Key, total_fen: i64, now: Timestamp) -> Result<(), LimitError> {
    check_base(base)?;
    if !(0..=MAX_FEN).contains(&total_fen) {
        return Err(LimitError::Invalid(format!("total must be 0 to {MAX_FEN} fen")));
    }
    update_doc(store, base, |doc: Option<&Config>| {
        if doc.is_some_and(|d| d.total_fen == total_fen) {
            return Ok(Step::Keep(()));
        }
        let since_hour = match doc {
            Some(d) => d.since_hour,
            None => Some(hour_of(now) - 1),
        };
        Ok::<_, LimitError>(Step::Write(Config { v: 1, total_fen, since_hour }, ()))
    })
    .await
}

/// Reserves `amount_fen` from the budget under `reservation_id` until `expires_at`, unless that would take the
/// reservations past the total. An unconfigured budget has a total of 0.
///
/// Idempotent per id: a retry returns the recorded outcome (`Granted` while reserved or committed, `Exhausted`
/// once rejected or released) and never holds the amount twice; a retry with another amount is a
/// [`LimitError::Conflict`]. When the budget looks exhausted, expired reservations of the last hours are swept
/// once and the reservation tried again.
pub async fn reserve(
    store: &impl Store,
    base: &Key,
    reservation_id: &str,
    amount_fen: i64,
    expires_at: Timestamp,
    now: Timestamp,
) -> Result<Reserved, LimitError> {
    check_id(base, reservation_id)?;
    if !(1..=MAX_FEN).contains(&amount_fen) {
        return Err(LimitError::Invalid(format!("amount must be 1 to {MAX_FEN} fen")));
    }
    if expires_at <= now {
        return Err(LimitError::Invalid("expires_at must be in the future".into()));
    }

    // 1. Take the amount from the budget, after freeing what expired in the hours since the last sweep. The watermark
    //    and the budget are read together; within an hour of the last sweep nothing else is read.
    let budget = read_budget(store, base).await?;
    let current = hour_of(now);
    let through = watermark(budget.swept_through, budget.since_hour, current);
    let mut taken = if through >= current - 1 {
        take_from(store, base, amount_fen, budget.total, budget.reserved).await?
    } else {
        // Best effort: a failed sweep is retried by the next reserve.
        let _ = sweep_due(store, base, now, false).await;
        take_budget(store, base, amount_fen).await?
    };
    // Abandoned reservations may be holding the budget: free the expired ones and try once more. Best effort:
    // if the sweep fails the answer is simply `Exhausted`.
    if !taken && sweep_due(store, base, now, true).await.is_ok() {
        taken = take_budget(store, base, amount_fen).await?;
    }

    // 2. Index a grant for the sweep before recording it, so every `reserved` document is findable. From here on
    //    an error gives the amount back, unless our grant may have been recorded.
    if taken && let Err(e) = index_open(store, base, reservation_id, expires_at).await {
        let _ = store.increment(&reserved_key(base), -amount_fen).await;
        return Err(e);
    }

    // 3. Record the outcome: the reservation document, created in its final state (claimed first: its id is new).
    //    A retry, or a concurrent attempt, finds it recorded: its own take is extra and goes back, and the
    //    recorded outcome stands.
    let key = resv_key(base, reservation_id);
    let state = if taken { State::Reserved } else { State::Rejected };
    let fresh = Resv {
        v: 1,
        id: reservation_id.to_owned(),
        amount_fen,
        state,
        expires_at,
        counters_pending: Vec::new(),
        lapsed_on: None,
    };
    let recorded = crate::kv::update_json_new(store, &key, |doc: Option<&Resv>| match doc {
        None => Ok(Step::Write(fresh.clone(), (fresh.clone(), true))),
        Some(doc) if doc.amount_fen != amount_fen => Err(LimitError::Conflict { id: reservation_id.to_owned() }),
        Some(doc) => Ok(Step::Keep((doc.clone(), false))),
    })
    .await;
    match recorded {
        Ok((doc, true)) => Ok(outcome(doc.state)),
        Ok((doc, false)) => {
            if taken {
                store.increment(&reserved_key(base), -amount_fen).await?;
            }
            complete(store, base, &doc).await?;
            Ok(outcome(doc.state))
        }
        Err(e) => {
            // A document that is not ours (absent, or another attempt's) means our take is ours to give back. If
            // ours may have landed, or the store cannot tell, keep the amount counted (under-use, never over-use).
            if taken && let Ok(current) = store.get(&key).await {
                let ours = decode_doc::<Resv>(&key, current.as_deref()).ok().flatten().is_some_and(|d| d == fresh);
                if !ours {
                    let _ = store.increment(&reserved_key(base), -amount_fen).await;
                }
            }
            Err(e)
        }
    }
}

/// Turns a reservation into spending: `reserved` → `committed`. Idempotent. Allowed after `expires_at` as long as
/// the reservation was not swept (keep it alive with [`extend`] while an order awaits payment); a released,
/// rejected or unknown reservation is [`LimitError::NotReserved`].
pub async fn commit(store: &impl Store, base: &Key, reservation_id: &str, now: Timestamp) -> Result<(), LimitError> {
    let _ = now; // Part of the contract for symmetry with `release`; committing is not time-bound.
    check_id(base, reservation_id)?;
    transition(store, base, reservation_id, |doc| match doc.state {
        State::Reserved => Ok(Some(doc.moved(State::Committed, &[Effect::Commit]))),
        State::Committed => Ok(None),
        State::Reserving => Err(LimitError::Pending { id: doc.id.clone() }),
        State::Rejected | State::Released => Err(LimitError::NotReserved { id: doc.id.clone() }),
    })
    .await
    .map(drop)
}

/// Moves a reservation's expiry (typically later, while its order awaits payment). A committed reservation no
/// longer expires, so extending it is a no-op.
pub async fn extend(
    store: &impl Store,
    base: &Key,
    reservation_id: &str,
    new_expires_at: Timestamp,
) -> Result<(), LimitError> {
    check_id(base, reservation_id)?;
    let key = resv_key(base, reservation_id);
    let current: Option<Resv> = decode_doc(&key, store.get(&key).await?.as_deref())?;
    if current.is_some_and(|d| d.state == State::Reserved && hour_of(d.expires_at) != hour_of(new_expires_at)) {
        // Indexed under the new hour first (within the same hour its entry serves); the old entry is harmless, as
        // the sweep re-reads the document.
        index_open(store, base, reservation_id, new_expires_at).await?;
    }
    transition(store, base, reservation_id, |doc| match doc.state {
        State::Reserved if doc.expires_at == new_expires_at => Ok(None),
        State::Reserved => Ok(Some(Resv { expires_at: new_expires_at, ..doc.clone() })),
        State::Committed => Ok(None),
        State::Reserving => Err(LimitError::Pending { id: doc.id.clone() }),
        State::Rejected | State::Released => Err(LimitError::NotReserved { id: doc.id.clone() }),
    })
    .await
    .map(drop)
}

/// Gives a reservation's amount back: `reserved` → `released`. Idempotent, and a no-op for a rejected
/// reservation (it holds nothing). A committed reservation is refunded with [`uncommit`] instead.
pub async fn release(store: &impl Store, base: &Key, reservation_id: &str, now: Timestamp) -> Result<(), LimitError> {
    let _ = now; // Part of the contract; releasing early or late is the same.
    check_id(base, reservation_id)?;
    transition(store, base, reservation_id, |doc| match doc.state {
        State::Reserved => Ok(Some(doc.moved(State::Released, &[Effect::Release]))),
        State::Released | State::Rejected => Ok(None),
        State::Reserving => Err(LimitError::Pending { id: doc.id.clone() }),
        State::Committed => Err(LimitError::NotReserved { id: doc.id.clone() }),
    })
    .await
    .map(drop)
}

/// Refunds a committed reservation: `committed` → `released`, taking the amount off both counters, once.
/// Idempotent; a reservation that was never committed is [`LimitError::NotReserved`].
pub async fn uncommit(store: &impl Store, base: &Key, reservation_id: &str) -> Result<(), LimitError> {
    check_id(base, reservation_id)?;
    transition(store, base, reservation_id, |doc| match doc.state {
        State::Committed => Ok(Some(doc.moved(State::Released, &[Effect::Uncommit, Effect::Release]))),
        State::Released => Ok(None),
        State::Reserving => Err(LimitError::Pending { id: doc.id.clone() }),
        State::Reserved | State::Rejected => Err(LimitError::NotReserved { id: doc.id.clone() }),
    })
    .await
    .map(drop)
}

/// Releases reservations still `reserved` after their expiry, looking at the index hours from `max_hours_back`
/// hours ago up to the current one. Returns how many this call released.
///
/// Safe against a concurrent commit or extend: each release is a CAS that re-checks state and expiry.
pub async fn sweep_expired(
    store: &impl Store,
    base: &Key,
    now: Timestamp,
    max_hours_back: u32,
) -> Result<usize, LimitError> {
    check_base(base)?;
    let current = hour_of(now);
    sweep_hours(store, base, now, current - i64::from(max_hours_back), current).await
}

/// Releases every reservation that has expired by `now`, from the hour after the last one swept (`{base}:swept`)
/// up to the current hour, and records the hours passed for good, so the next call resumes there. Returns how many
/// this call released. Every reserve that finds the budget exhausted calls it, so a reservation nobody comes back
/// for is free as soon as it expires, however long ago that was; budget reads ([`status_at`]) count such
/// reservations free without writing.
///
/// Without `this_hour`, only hours that are over are swept: the routine call every reserve makes, which reads one
/// document and does nothing more within an hour.
pub async fn sweep_due(store: &impl Store, base: &Key, now: Timestamp, this_hour: bool) -> Result<usize, LimitError> {
    check_base(base)?;
    let key = swept_key(base);
    let current = hour_of(now);
    let through = swept_through(store, base, current).await?;
    let last = if this_hour { current } else { current - 1 };
    if through >= last {
        return Ok(0);
    }
    let to = last.min(through + SWEEP_CATCH_UP_HOURS);
    let released = sweep_hours(store, base, now, through + 1, to).await?;
    // Hours before the current one hold only expired reservations now, all released: done for good.
    let done = to.min(current - 1);
    if done > through {
        update_doc(store, &key, |doc: Option<&Swept>| {
            if doc.is_some_and(|d| d.through_hour >= done) {
                return Ok::<_, LimitError>(Step::Keep(()));
            }
            Ok(Step::Write(Swept { v: 1, through_hour: done }, ()))
        })
        .await?;
    }
    Ok(released)
}

/// The budget's total and counters as of `now`, with reservations that have expired but are not swept yet counted
/// as free: what a budget read shows. Writes nothing (the next reserve that needs the room releases them).
pub async fn status_at(store: &impl Store, base: &Key, now: Timestamp) -> Result<BudgetStatus, LimitError> {
    check_base(base)?;
    let budget = read_budget(store, base).await?;
    let status = budget.status();
    let lapsed: i64 = unswept_expired(store, base, &budget, now).await?.iter().map(|r| r.amount_fen).sum();
    let reserved_fen = (status.reserved_fen - lapsed).max(status.committed_fen);
    let available_fen = status.total_fen.saturating_sub(reserved_fen).max(0);
    Ok(BudgetStatus { reserved_fen, available_fen, ..status })
}

/// A reservation that expired with nobody coming back for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lapsed {
    /// The budget's key.
    pub budget: String,
    /// The reservation id (a quote, a claimed coupon, a reward).
    pub reservation_id: String,
    /// What it held.
    pub amount_fen: i64,
    /// When it expired.
    pub expired_at: Timestamp,
    /// The Shanghai day (`yyyymmdd`) a sweep gave the amount back to the budget; `None` while not swept yet (budget
    /// reads already count it free; the next reserve that needs the room, or [`sweep_due`], releases it).
    pub released_on: Option<u32>,
}

/// The reservations of the budget that have expired by `now` and are still held (not swept yet), oldest expiry
/// first. Writes nothing.
pub async fn expired_unreleased(store: &impl Store, base: &Key, now: Timestamp) -> Result<Vec<Lapsed>, LimitError> {
    check_base(base)?;
    let budget = read_budget(store, base).await?;
    let mut held = unswept_expired(store, base, &budget, now).await?;
    held.sort_by(|a, b| (a.expires_at, &a.id).cmp(&(b.expires_at, &b.id)));
    Ok(held
        .into_iter()
        .map(|r| Lapsed {
            budget: base.as_str().to_owned(),
            reservation_id: r.id,
            amount_fen: r.amount_fen,
            expired_at: r.expires_at,
            released_on: None,
        })
        .collect())
}

/// The reservations of every budget that sweeps released on the given Asia/Shanghai days (day numbers) because they
/// had expired, by day of release, each once. Which days have any comes from roll-ups (a year costs about sixty
/// keys); a sweep whose log entry a crash delayed past the next day's close is counted released but not listed.
pub async fn lapsed_in(store: &impl Store, day_numbers: &[i64], now: Timestamp) -> Result<Vec<Lapsed>, LimitError> {
    let days = crate::rollups::days_with_entries(store, "lapsed", day_numbers, now, lapsed_log).await?;
    let logs: Vec<Key> = days.iter().map(|d| lapsed_log(*d)).collect();
    let mut seen = BTreeSet::new();
    let mut listed: Vec<(u32, Key, String)> = Vec::new();
    for (day, entries) in days.iter().zip(crate::kv::read_logs(store, &logs).await?) {
        for entry in entries {
            let Some((base, id)) = entry.rsplit_once('/') else { continue };
            let Some(base) = Key::try_from_stored(base) else { continue };
            if check_id(&base, id).is_ok() && seen.insert(entry.clone()) {
                listed.push((*day, base, id.to_owned()));
            }
        }
    }
    let keys: Vec<Key> = listed.iter().map(|(_, base, id)| resv_key(base, id)).collect();
    let mut out = Vec::with_capacity(listed.len());
    for ((key, raw), (day, base, _)) in keys.iter().zip(get_all(store, &keys).await?).zip(&listed) {
        if let Some(doc) = decode_doc::<Resv>(key, raw.as_deref())? {
            out.push(Lapsed {
                budget: base.as_str().to_owned(),
                reservation_id: doc.id,
                amount_fen: doc.amount_fen,
                expired_at: doc.expires_at,
                released_on: Some(*day),
            });
        }
    }
    Ok(out)
}

/// `ops:lapsed:{yyyymmdd}`: the log of reservations swept that Shanghai day because they had expired.
pub fn lapsed_log(day: u32) -> Key {
    Key::new(&["ops", "lapsed", &day.to_string()])
}

/// The reservations still `reserved` past their expiry in the hours since the last sweep (at most
/// [`SWEEP_CATCH_UP_HOURS`] back), for a budget just read.
async fn unswept_expired(
    store: &impl Store,
    base: &Key,
    budget: &BudgetRead,
    now: Timestamp,
) -> Result<Vec<Resv>, LimitError> {
    let current = hour_of(now);
    let through = watermark(budget.swept_through, budget.since_hour, current);
    let from = (through + 1).max(current - SWEEP_CATCH_UP_HOURS);
    let mut docs = indexed(store, base, from, current).await?;
    docs.retain(|r| r.state == State::Reserved && r.expires_at <= now);
    Ok(docs)
}

/// The last expiry hour swept for good: the `{base}:swept` watermark, else the hour before the budget was
/// configured, else (budgets configured before either existed) a few hours back.
async fn swept_through(store: &impl Store, base: &Key, current: i64) -> Result<i64, LimitError> {
    let budget = read_budget(store, base).await?;
    Ok(watermark(budget.swept_through, budget.since_hour, current))
}

/// The Unix hour `t` falls in (expiry hours index reservations).
fn hour_of(t: Timestamp) -> i64 {
    t.unix_secs().div_euclid(3600)
}

/// The last expiry hour swept: the recorded watermark, else the configured start, else a few hours back.
fn watermark(swept_through: Option<i64>, since_hour: Option<i64>, current: i64) -> i64 {
    swept_through.or(since_hour).unwrap_or(current - FIRST_SWEEP_HOURS - 1)
}

/// Releases the expired `reserved` reservations indexed under the expiry hours `from..=to`.
async fn sweep_hours(store: &impl Store, base: &Key, now: Timestamp, from: i64, to: i64) -> Result<usize, LimitError> {
    let mut released = 0;
    for doc in indexed(store, base, from, to).await? {
        if doc.state == State::Reserved && doc.expires_at <= now {
            let (_, changed) = transition(store, base, &doc.id, |doc| match doc.state {
                State::Reserved if doc.expires_at <= now => Ok(Some(Resv {
                    lapsed_on: Some(now.shanghai_day()),
                    ..doc.moved(State::Released, &[Effect::Release, Effect::Lapse])
                })),
                _ => Ok(None),
            })
            .await?;
            released += usize::from(changed);
        } else if !doc.counters_pending.is_empty() {
            complete(store, base, &doc).await?;
        }
    }
    Ok(released)
}

/// The reservations indexed under the expiry hours `from..=to` (each once).
async fn indexed(store: &impl Store, base: &Key, from: i64, to: i64) -> Result<Vec<Resv>, LimitError> {
    let index_keys: Vec<Key> =
        (from..=to).flat_map(|hour| SHARDS.iter().map(move |s| open_key(base, hour, s))).collect();
    let ids: BTreeSet<String> = crate::kv::read_logs(store, &index_keys).await?.into_iter().flatten().collect();
    let keys: Vec<Key> = ids.iter().filter(|id| check_id(base, id).is_ok()).map(|id| resv_key(base, id)).collect();
    let mut docs = Vec::with_capacity(keys.len());
    for (key, raw) in keys.iter().zip(get_all(store, &keys).await?) {
        docs.extend(decode_doc::<Resv>(key, raw.as_deref())?);
    }
    Ok(docs)
}

/// The budget's total and counters (one round trip).
pub async fn status(store: &impl Store, base: &Key) -> Result<BudgetStatus, LimitError> {
    check_base(base)?;
    Ok(read_budget(store, base).await?.status())
}

/// Adds `amount` to a capped counter (per-subject or per-day limits) if the result stays within `cap`: `true` when
/// taken, `false` (and nothing taken) when it would pass the cap.
///
/// Like budgets: an over-cap addition is undone at once, and a concurrent taker may be refused in that instant,
/// but the cap is never exceeded.
pub async fn take(store: &impl Store, counter: &Key, cap: i64, amount: i64) -> Result<bool, LimitError> {
    if amount <= 0 || cap < 0 {
        return Err(LimitError::Invalid("amount must be positive and cap not negative".into()));
    }
    if store.increment(counter, amount).await? <= cap {
        return Ok(true);
    }
    store.increment(counter, -amount).await?;
    Ok(false)
}

/// Returns `amount` taken from a capped counter with [`take`] (e.g. when the action it allowed was undone). Give
/// back only what was taken: the counter cannot tell.
pub async fn give_back(store: &impl Store, counter: &Key, amount: i64) -> Result<(), LimitError> {
    if amount <= 0 {
        return Err(LimitError::Invalid("amount must be positive".into()));
    }
    store.increment(counter, -amount).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------

/// `{base}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Config {
    v: u32,
    total_fen: i64,
    /// The hour before the budget was configured: nothing expired earlier, so sweeping starts after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since_hour: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    Reserving,
    Reserved,
    Rejected,
    Committed,
    Released,
}

/// A counter change a state transition owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Effect {
    /// `committed_fen += amount`.
    Commit,
    /// `committed_fen -= amount`.
    Uncommit,
    /// `reserved_fen -= amount`.
    Release,
    /// An entry in the day's log of lapsed reservations (`ops:lapsed:{lapsed_on}`): at least once, without a claim
    /// (a repeat lists the id again; [`lapsed_in`] keeps one).
    Lapse,
}

impl Effect {
    fn name(self) -> &'static str {
        match self {
            Effect::Commit => "commit",
            Effect::Uncommit => "uncommit",
            Effect::Release => "release",
            Effect::Lapse => "lapse",
        }
    }
}

/// `{base}:swept`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Swept {
    v: u32,
    through_hour: i64,
}

fn swept_key(base: &Key) -> Key {
    base.child(&["swept"])
}

/// `{base}:resv:{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Resv {
    v: u32,
    id: String,
    amount_fen: i64,
    state: State,
    expires_at: Timestamp,
    /// Counter changes (and the lapsed log's entry) owed by the last transition and not yet confirmed made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    counters_pending: Vec<Effect>,
    /// The Shanghai day (`yyyymmdd`) a sweep released it because it had expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lapsed_on: Option<u32>,
}

impl Resv {
    fn moved(&self, state: State, effects: &[Effect]) -> Resv {
        let mut next = Resv { state, ..self.clone() };
        next.counters_pending.extend_from_slice(effects);
        next
    }
}

fn check_base(base: &Key) -> Result<(), LimitError> {
    if base.as_str().len() + BASE_KEY_OVERHEAD > MAX_KEY_BYTES {
        return Err(LimitError::Invalid(format!("budget key {base} is too long")));
    }
    Ok(())
}

fn check_id(base: &Key, id: &str) -> Result<(), LimitError> {
    check_base(base)?;
    if !valid_name(id) || base.as_str().len() + id.len() + ID_KEY_OVERHEAD > MAX_KEY_BYTES {
        return Err(LimitError::Invalid(
            "reservation id must be 1 to 120 characters of A-Z a-z 0-9 _ : - and fit the budget's keys".into(),
        ));
    }
    Ok(())
}

fn reserved_key(base: &Key) -> Key {
    base.child(&["ctr", "reserved_fen"])
}

fn committed_key(base: &Key) -> Key {
    base.child(&["ctr", "committed_fen"])
}

fn resv_key(base: &Key, id: &str) -> Key {
    base.child(&["resv", id])
}

fn open_key(base: &Key, hour: i64, shard: &str) -> Key {
    base.child(&["open", &hour.to_string(), shard])
}

fn effect_key(base: &Key, id: &str, effect: Effect) -> Key {
    // The effect is the last part and never contains `:`, so no id can make two of these keys collide.
    base.child(&["fx", id, effect.name()])
}

fn outcome(state: State) -> Reserved {
    match state {
        State::Reserved | State::Committed => Reserved::Granted,
        State::Reserving | State::Rejected | State::Released => Reserved::Exhausted,
    }
}

/// A budget as one read finds it.
struct BudgetRead {
    total: i64,
    reserved: i64,
    committed: i64,
    /// The last expiry hour swept for good (`{base}:swept`), if any sweep recorded one.
    swept_through: Option<i64>,
    /// Where sweeping starts when none has been recorded (set by [`configure`]).
    since_hour: Option<i64>,
}

impl BudgetRead {
    /// What a budget read shows: total, reserved, committed and what is left.
    fn status(&self) -> BudgetStatus {
        BudgetStatus {
            total_fen: self.total,
            reserved_fen: self.reserved,
            committed_fen: self.committed,
            available_fen: self.total.saturating_sub(self.reserved).max(0),
        }
    }
}

/// Total, reserved, committed and the sweep watermark, in one round trip.
async fn read_budget(store: &impl Store, base: &Key) -> Result<BudgetRead, LimitError> {
    let keys = [base.clone(), reserved_key(base), committed_key(base), swept_key(base)];
    let values = get_all(store, &keys).await?;
    let counter = |i: usize| counter_of(&keys[i], values.get(i).and_then(Option::as_deref));
    let config: Option<Config> = decode_doc(base, values.first().and_then(Option::as_deref))?;
    let swept: Option<Swept> = decode_doc(&keys[3], values.get(3).and_then(Option::as_deref))?;
    Ok(BudgetRead {
        total: config.as_ref().map_or(0, |c| c.total_fen),
        reserved: counter(1)?,
        committed: counter(2)?,
        swept_through: swept.map(|s| s.through_hour),
        since_hour: config.and_then(|c| c.since_hour),
    })
}

/// Adds `amount` to the reserved counter if it stays within the total; `false` (nothing taken) otherwise.
async fn take_budget(store: &impl Store, base: &Key, amount: i64) -> Result<bool, LimitError> {
    let budget = read_budget(store, base).await?;
    take_from(store, base, amount, budget.total, budget.reserved).await
}

/// [`take_budget`] from a budget just read.
async fn take_from(store: &impl Store, base: &Key, amount: i64, total: i64, reserved: i64) -> Result<bool, LimitError> {
    // Refuse on the read when already full: no transient over-addition that could refuse someone else.
    if reserved.saturating_add(amount) > total {
        return Ok(false);
    }
    let counter = reserved_key(base);
    if store.increment(&counter, amount).await? <= total {
        return Ok(true);
    }
    // Over the total: undo at once. Until this lands a concurrent reserver may be refused (under-use), and if it
    // fails the amount stays counted (under-use again); nobody is ever granted past the total.
    store.increment(&counter, -amount).await?;
    Ok(false)
}

/// Lists a granted reservation under the hour it expires.
async fn index_open(store: &impl Store, base: &Key, id: &str, expires_at: Timestamp) -> Result<(), LimitError> {
    let key = open_key(base, hour_of(expires_at), shard_of(id));
    crate::kv::append_to_log(store, &key, id).await?;
    Ok(())
}

/// Applies `step` to a reservation with CAS (`None` = leave it), then makes the counter changes it owes, including
/// any left over from an earlier call. Returns the document and whether this call changed it.
async fn transition(
    store: &impl Store,
    base: &Key,
    id: &str,
    step: impl Fn(&Resv) -> Result<Option<Resv>, LimitError>,
) -> Result<(Resv, bool), LimitError> {
    let key = resv_key(base, id);
    let (doc, changed) = update_doc(store, &key, |doc: Option<&Resv>| match doc {
        None => Err(LimitError::NotReserved { id: id.to_owned() }),
        Some(doc) => Ok(match step(doc)? {
            Some(next) => Step::Write(next.clone(), (next, true)),
            None => Step::Keep((doc.clone(), false)),
        }),
    })
    .await?;
    complete(store, base, &doc).await?;
    Ok((doc, changed))
}

/// Makes the counter changes a reservation owes, each at most once (behind its own claim), then clears them.
async fn complete(store: &impl Store, base: &Key, doc: &Resv) -> Result<(), LimitError> {
    if doc.counters_pending.is_empty() {
        return Ok(());
    }
    for &effect in &doc.counters_pending {
        if effect == Effect::Lapse {
            if let Some(day) = doc.lapsed_on {
                crate::kv::append_to_log(store, &lapsed_log(day), &format!("{base}/{}", doc.id)).await?;
            }
            continue;
        }
        // Claim first: a crash between claim and increment loses the change, which for every effect errs towards
        // under-use (reserved stays high) or an understated committed figure, never towards over-use.
        if claim_once(store, &effect_key(base, &doc.id, effect)).await? {
            let (counter, delta) = match effect {
                Effect::Commit => (committed_key(base), doc.amount_fen),
                Effect::Uncommit => (committed_key(base), -doc.amount_fen),
                Effect::Release | Effect::Lapse => (reserved_key(base), -doc.amount_fen),
            };
            store.increment(&counter, delta).await?;
        }
    }
    let done = &doc.counters_pending;
    update_doc(store, &resv_key(base, &doc.id), |current: Option<&Resv>| match current {
        Some(current) if current.counters_pending.iter().any(|e| done.contains(e)) => {
            let counters_pending = current.counters_pending.iter().filter(|e| !done.contains(e)).copied().collect();
            Ok(Step::Write(Resv { counters_pending, ..current.clone() }, ()))
        }
        _ => Ok::<_, LimitError>(Step::Keep(())),
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::kv::{MemStore, interleave, read_counter};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_unix_secs(1_763_870_400 + secs) // 2025-11-23T12:00:00+08:00, on the hour
    }

    fn budget() -> Key {
        Key::new(&["test", "budget", "discount_w1"])
    }

    fn configured(total: i64) -> MemStore {
        let store = MemStore::default();
        pollster::block_on(configure(&store, &budget(), total, t(0))).expect("configure");
        store
    }

    fn reserve_at(store: &MemStore, id: &str, fen: i64, now: i64) -> Result<Reserved, LimitError> {
        pollster::block_on(reserve(store, &budget(), id, fen, t(now + 900), t(now)))
    }

    fn status_of(store: &MemStore) -> BudgetStatus {
        pollster::block_on(status(store, &budget())).expect("status")
    }

    /// Polls a future `polls` times with a no-op waker and drops it: a guest dying mid-request.
    fn poll_then_drop<F: Future>(fut: F, polls: usize) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..polls {
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return Some(out);
            }
        }
        None
    }

    #[test]
    fn two_hundred_concurrent_reserves_grant_exactly_what_the_budget_holds() {
        let store = configured(5000);
        let base = budget();
        let ids: Vec<String> = (0..200).map(|i| format!("quote:q_{i}")).collect();

        let results = pollster::block_on(interleave::join_all(
            ids.iter().map(|id| reserve(&store, &base, id, 100, t(900), t(0))).collect(),
        ));

        let granted = results.iter().filter(|r| **r == Ok(Reserved::Granted)).count();
        let exhausted = results.iter().filter(|r| **r == Ok(Reserved::Exhausted)).count();
        assert_eq!((granted, exhausted), (50, 150), "{results:?}");
        let expected = BudgetStatus { total_fen: 5000, reserved_fen: 5000, committed_fen: 0, available_fen: 0 };
        assert_eq!(status_of(&store), expected);
    }

    #[test]
    fn concurrent_attempts_of_one_reservation_hold_its_amount_once() {
        let store = configured(1000);
        let base = budget();

        let attempts = (0..10).map(|_| reserve(&store, &base, "quote:q_1", 100, t(900), t(0))).collect();
        let results = pollster::block_on(interleave::join_all(attempts));

        assert!(results.iter().all(|r| *r == Ok(Reserved::Granted)), "{results:?}");
        assert_eq!(status_of(&store).reserved_fen, 100);
    }

    #[test]
    fn a_retried_reserve_returns_the_recorded_outcome_without_reserving_twice() {
        let store = configured(100);
        assert_eq!(reserve_at(&store, "q_1", 100, 0), Ok(Reserved::Granted));
        assert_eq!(reserve_at(&store, "q_1", 100, 5), Ok(Reserved::Granted));
        assert_eq!(reserve_at(&store, "q_2", 100, 5), Ok(Reserved::Exhausted));
        assert_eq!(status_of(&store).reserved_fen, 100);

        let err = reserve_at(&store, "q_1", 50, 5).expect_err("other amount");
        assert_eq!(err, LimitError::Conflict { id: "q_1".into() });
        assert_eq!((err.kind(), err.code()), (ErrorKind::Conflict, "reservation_conflict"));

        // Outcomes are final per id: freeing the budget does not turn q_2 into a grant, a new id gets it.
        pollster::block_on(release(&store, &budget(), "q_1", t(10))).expect("release");
        assert_eq!(reserve_at(&store, "q_2", 100, 10), Ok(Reserved::Exhausted));
        assert_eq!(reserve_at(&store, "q_1", 100, 10), Ok(Reserved::Exhausted), "released holds nothing");
        assert_eq!(reserve_at(&store, "q_3", 100, 10), Ok(Reserved::Granted));
        assert_eq!(status_of(&store).reserved_fen, 100);
    }

    #[test]
    fn commit_release_and_uncommit_follow_the_state_machine() {
        let store = configured(1000);
        let b = &budget();
        reserve_at(&store, "a", 300, 0).expect("a");
        reserve_at(&store, "b", 200, 0).expect("b");

        // Commit, twice.
        pollster::block_on(commit(&store, b, "a", t(1))).expect("commit");
        pollster::block_on(commit(&store, b, "a", t(2))).expect("commit again");
        let expected = BudgetStatus { total_fen: 1000, reserved_fen: 500, committed_fen: 300, available_fen: 500 };
        assert_eq!(status_of(&store), expected);
        // A committed reservation is refunded, not released.
        let err = pollster::block_on(release(&store, b, "a", t(3))).expect_err("release committed");
        assert_eq!((err.kind(), err.code()), (ErrorKind::Conflict, "reservation_not_active"));
        // Refund, twice.
        pollster::block_on(uncommit(&store, b, "a")).expect("uncommit");
        pollster::block_on(uncommit(&store, b, "a")).expect("uncommit again");
        let expected = BudgetStatus { total_fen: 1000, reserved_fen: 200, committed_fen: 0, available_fen: 800 };
        assert_eq!(status_of(&store), expected);
        assert_eq!(
            pollster::block_on(commit(&store, b, "a", t(4))),
            Err(LimitError::NotReserved { id: "a".into() }),
            "refunded stays refunded"
        );

        // Release, twice; then it cannot be committed or refunded.
        pollster::block_on(release(&store, b, "b", t(5))).expect("release");
        pollster::block_on(release(&store, b, "b", t(6))).expect("release again");
        assert_eq!(pollster::block_on(commit(&store, b, "b", t(7))), Err(LimitError::NotReserved { id: "b".into() }));
        assert_eq!(status_of(&store).reserved_fen, 0);

        // Unknown reservations, and refunding what was never committed.
        assert_eq!(pollster::block_on(commit(&store, b, "zz", t(8))), Err(LimitError::NotReserved { id: "zz".into() }));
        assert_eq!(pollster::block_on(uncommit(&store, b, "zz")), Err(LimitError::NotReserved { id: "zz".into() }));
        reserve_at(&store, "c", 100, 10).expect("c");
        assert_eq!(pollster::block_on(uncommit(&store, b, "c")), Err(LimitError::NotReserved { id: "c".into() }));
        assert_eq!(
            pollster::block_on(extend(&store, b, "b", t(5000))),
            Err(LimitError::NotReserved { id: "b".into() })
        );
        let expected = BudgetStatus { total_fen: 1000, reserved_fen: 100, committed_fen: 0, available_fen: 900 };
        assert_eq!(status_of(&store), expected);
    }

    #[test]
    fn expired_reservations_are_swept_so_a_later_reserve_succeeds() {
        let store = configured(100);
        assert_eq!(reserve_at(&store, "abandoned", 100, 0), Ok(Reserved::Granted)); // expires at t(900)
        assert_eq!(reserve_at(&store, "early", 100, 60), Ok(Reserved::Exhausted), "not expired yet");

        assert_eq!(reserve_at(&store, "later", 100, 4000), Ok(Reserved::Granted));

        assert_eq!(status_of(&store).reserved_fen, 100);
        let swept = pollster::block_on(commit(&store, &budget(), "abandoned", t(4001)));
        assert_eq!(swept, Err(LimitError::NotReserved { id: "abandoned".into() }));
    }

    #[test]
    fn a_budget_read_counts_expired_reservations_free_without_writing_and_a_reserve_days_later_frees_them() {
        let store = configured(100);
        assert_eq!(reserve_at(&store, "abandoned", 60, 0), Ok(Reserved::Granted)); // expires at t(900)
        let read = |at: i64| pollster::block_on(status_at(&store, &budget(), t(at))).expect("status");
        assert_eq!((read(600).reserved_fen, read(600).available_fen), (60, 40), "still live");
        let writes = store.writes();
        assert_eq!((read(901).reserved_fen, read(901).available_fen), (0, 100), "expired: free");
        assert_eq!(store.writes(), writes, "a read writes nothing");

        // Three days later (far past the first sweep's six hours), a reserve needing the room frees it.
        let days = 3 * 24 * 3600;
        assert_eq!(reserve_at(&store, "fresh", 100, days), Ok(Reserved::Granted));
        assert_eq!(status_of(&store).reserved_fen, 100);
        // The watermark moved: the next read only looks at the current hour.
        let swept: Swept =
            pollster::block_on(crate::kv::get_json(&store, &swept_key(&budget()))).expect("read").expect("swept");
        assert_eq!(swept.through_hour, t(days).unix_secs().div_euclid(3600) - 1);
    }

    #[test]
    fn a_reservation_nobody_came_back_for_is_listed_as_held_then_once_as_released_on_the_sweeps_day() {
        let store = configured(100);
        let b = &budget();
        assert_eq!(reserve_at(&store, "abandoned", 60, 0), Ok(Reserved::Granted)); // expires at t(900)
        assert_eq!(reserve_at(&store, "paid", 40, 0), Ok(Reserved::Granted));
        pollster::block_on(commit(&store, b, "paid", t(10))).expect("commit");
        let held = |at: i64| pollster::block_on(expired_unreleased(&store, b, t(at))).expect("held");
        assert_eq!(held(600), vec![], "not expired yet");
        let expected = Lapsed {
            budget: b.as_str().to_owned(),
            reservation_id: "abandoned".into(),
            amount_fen: 60,
            expired_at: t(900),
            released_on: None,
        };
        assert_eq!(held(901), vec![expected.clone()], "expired and still held; the committed one never lapses");

        // A day later a reserve needing the room sweeps it; sweeping again (and a repeat of the log entry after a
        // crash before the entry was confirmed) lists it once, on the sweep's day.
        let later = 24 * 3600;
        assert_eq!(reserve_at(&store, "fresh", 60, later), Ok(Reserved::Granted));
        pollster::block_on(sweep_expired(&store, b, t(later + 1), 48)).expect("sweep again");
        let entry = format!("{}/abandoned", b.as_str());
        let log = lapsed_log(t(later).shanghai_day());
        pollster::block_on(crate::kv::append_to_log(&store, &log, &entry)).expect("repeat");
        assert_eq!(held(later + 1), vec![], "released");
        let days: Vec<i64> = (0..=1).map(|d| t(d * 24 * 3600).shanghai_day_number()).collect();
        let listed = pollster::block_on(lapsed_in(&store, &days, t(later + 2))).expect("lapsed");
        assert_eq!(listed, vec![Lapsed { released_on: Some(t(later).shanghai_day()), ..expected }]);
        assert_eq!(status_of(&store).reserved_fen, 100, "fresh 60 + paid 40");
    }

    #[test]
    fn an_extended_reservation_survives_the_sweep_and_can_be_committed_late() {
        let store = configured(100);
        let b = &budget();
        assert_eq!(reserve_at(&store, "order_1", 100, 0), Ok(Reserved::Granted));
        pollster::block_on(extend(&store, b, "order_1", t(20_000))).expect("extend");

        assert_eq!(pollster::block_on(sweep_expired(&store, b, t(4000), 24)), Ok(0));
        assert_eq!(reserve_at(&store, "other", 100, 4000), Ok(Reserved::Exhausted));
        // Past even the extended expiry, an unswept reservation still commits.
        pollster::block_on(commit(&store, b, "order_1", t(25_000))).expect("late commit");
        assert_eq!(pollster::block_on(sweep_expired(&store, b, t(30_000), 24)), Ok(0), "committed never expires");
        assert_eq!(status_of(&store).committed_fen, 100);
    }

    #[test]
    fn the_sweep_releases_each_expired_reservation_once() {
        let store = configured(1000);
        let b = &budget();
        for i in 0..5 {
            reserve_at(&store, &format!("q_{i}"), 100, i * 1000).expect("reserve");
        }
        // At t(4000) the reservations made at 0..=3000 (expiring by 3900) have expired; the one made at 4000 not.
        // That reserve already swept the hour that ended (the three expiring in it); three concurrent sweeps
        // release the fourth, once.
        let sweeps = (0..3).map(|_| sweep_expired(&store, b, t(4000), 2)).collect();
        let released: Vec<usize> =
            pollster::block_on(interleave::join_all(sweeps)).into_iter().map(|r| r.expect("sweep")).collect();
        assert_eq!(released.iter().sum::<usize>(), 1, "{released:?}");
        assert_eq!(status_of(&store).reserved_fen, 100);
    }

    fn setup_with_one_reservation(total: i64) -> MemStore {
        let store = configured(total);
        assert_eq!(reserve_at(&store, "q_1", 100, 0), Ok(Reserved::Granted));
        store
    }

    #[test]
    fn a_failed_write_at_any_point_of_reserve_never_over_reserves_and_retries_complete() {
        for (total, expected, reserved) in [(200, Reserved::Granted, 200), (100, Reserved::Exhausted, 100)] {
            let probe = setup_with_one_reservation(total);
            let before = probe.writes();
            assert_eq!(reserve_at(&probe, "q_2", 100, 0), Ok(expected));
            let writes = probe.writes() - before;

            for n in 1..=writes {
                let store = setup_with_one_reservation(total);
                store.fail_write(n);
                let mut result = reserve_at(&store, "q_2", 100, 0);
                let mut retries = 0;
                while result.is_err() {
                    assert!(status_of(&store).reserved_fen <= total, "write {n}: over-reserved after an error");
                    retries += 1;
                    assert!(retries < 3, "write {n}: {result:?}");
                    result = reserve_at(&store, "q_2", 100, 0);
                }
                assert_eq!(result, Ok(expected), "write {n}");
                // A store error is undone, so the counters are exact after the retry.
                assert_eq!(status_of(&store).reserved_fen, reserved, "write {n}");
            }
        }
    }

    #[test]
    fn a_crash_at_any_point_of_reserve_never_over_reserves() {
        let mut polls = 1;
        loop {
            let store = setup_with_one_reservation(1000);
            let done = poll_then_drop(reserve(&store, &budget(), "q_2", 100, t(900), t(0)), polls).is_some();
            // A creation the crash left claimed is taken over once its lease has passed.
            store.set_now(store.now_unix_secs() + crate::kv::CREATION_LEASE_SECS + 1);

            assert_eq!(reserve_at(&store, "q_2", 100, 0), Ok(Reserved::Granted), "crash after {polls} polls");

            // A crash after taking and before recording leaks the first take (under-use), never more.
            let reserved = status_of(&store).reserved_fen;
            assert!(reserved == 200 || reserved == 300, "crash after {polls} polls: {reserved}");
            if done {
                assert_eq!(reserved, 200);
                break;
            }
            polls += 1;
        }
        assert!(polls > 5, "swept {polls} crash points");
    }

    #[test]
    fn a_reserve_that_died_before_recording_leaves_nothing_to_commit_and_its_retry_grants() {
        let b = &budget();
        // Every crash point before the reservation document exists (it is written last, in its final state).
        for polls in 1..50 {
            let store = configured(1000);
            if poll_then_drop(reserve(&store, b, "q_1", 100, t(900), t(0)), polls).is_some() {
                break;
            }
            if store.raw("test:budget:discount_w1:resv:q_1").is_some_and(|raw| raw.first() == Some(&b'{')) {
                continue;
            }
            assert_eq!(
                pollster::block_on(commit(&store, b, "q_1", t(1))),
                Err(LimitError::NotReserved { id: "q_1".into() }),
                "crash after {polls} polls"
            );
            if store.raw("test:budget:discount_w1:resv:q_1:~born").is_some() {
                // It died holding the document's creation: the retry takes it over once the lease has passed.
                store.set_now(store.now_unix_secs() + crate::kv::CREATION_LEASE_SECS + 1);
            }
            assert_eq!(reserve_at(&store, "q_1", 100, 1), Ok(Reserved::Granted), "crash after {polls} polls");
            pollster::block_on(commit(&store, b, "q_1", t(2))).expect("commit");
            assert_eq!(status_of(&store).committed_fen, 100);
            // The crashed attempt's take may stay counted: under-use, never over-use.
            assert!((100..=200).contains(&status_of(&store).reserved_fen), "crash after {polls} polls");
        }
    }

    #[test]
    fn owed_counter_changes_are_made_by_the_next_call() {
        let store = configured(1000);
        let b = &budget();
        reserve_at(&store, "q_1", 100, 0).expect("reserve");
        // The release's state change lands, then its counter change fails.
        let writes_of_release = {
            let probe = configured(1000);
            reserve_at(&probe, "q_1", 100, 0).expect("reserve");
            let before = probe.writes();
            pollster::block_on(release(&probe, b, "q_1", t(1))).expect("release");
            probe.writes() - before
        };
        assert_eq!(writes_of_release, 4, "cas, claim, increment, clear");
        store.fail_write(2);
        assert!(pollster::block_on(release(&store, b, "q_1", t(1))).is_err());
        assert_eq!(status_of(&store).reserved_fen, 100, "claim failed: nothing changed yet");

        pollster::block_on(release(&store, b, "q_1", t(2))).expect("retry");

        assert_eq!(status_of(&store).reserved_fen, 0);
        let doc: Resv =
            serde_json::from_slice(&store.raw("test:budget:discount_w1:resv:q_1").expect("doc")).expect("json");
        assert!(doc.counters_pending.is_empty());
    }

    #[test]
    fn capped_counters_never_pass_their_cap() {
        let store = MemStore::default();
        let counter = Key::new(&["test", "cap", "c_1", "20251123"]);
        let takes = (0..30).map(|_| take(&store, &counter, 10, 1)).collect();

        let results = pollster::block_on(interleave::join_all(takes));

        assert_eq!(results.iter().filter(|r| **r == Ok(true)).count(), 10, "{results:?}");
        assert_eq!(pollster::block_on(read_counter(&store, &counter)), Ok(10));
        pollster::block_on(give_back(&store, &counter, 1)).expect("give back");
        assert_eq!(pollster::block_on(take(&store, &counter, 10, 1)), Ok(true));
        assert_eq!(pollster::block_on(take(&store, &counter, 10, 1)), Ok(false));
        assert_eq!(pollster::block_on(read_counter(&store, &counter)), Ok(10));
        assert!(matches!(pollster::block_on(take(&store, &counter, 10, 0)), Err(LimitError::Invalid(_))));
    }

    #[test]
    fn malformed_requests_are_refused_before_touching_the_store() {
        let store = MemStore::default();
        let b = &budget();
        let bad = [
            pollster::block_on(reserve(&store, b, "q", 0, t(900), t(0))),
            pollster::block_on(reserve(&store, b, "q", 100, t(0), t(0))),
            pollster::block_on(reserve(&store, b, "q 1", 100, t(900), t(0))),
            pollster::block_on(reserve(&store, b, &"q".repeat(121), 100, t(900), t(0))),
        ];
        for result in bad {
            let err = result.expect_err("invalid");
            assert_eq!((err.kind(), err.code()), (ErrorKind::Invalid, "validation_failed"));
        }
        let long_base = Key::new(&[&"b".repeat(200)]);
        assert!(matches!(
            pollster::block_on(reserve(&store, &long_base, &"q".repeat(40), 1, t(900), t(0))),
            Err(LimitError::Invalid(_))
        ));
        assert!(matches!(pollster::block_on(configure(&store, b, -1, t(0))), Err(LimitError::Invalid(_))));
        assert!(store.keys().is_empty());
        // An unconfigured budget holds nothing.
        assert_eq!(reserve_at(&store, "q", 1, 0), Ok(Reserved::Exhausted));
    }
}
