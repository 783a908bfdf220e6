//! The double-entry ledger: balanced postings, each line applied to its account balance exactly once, whatever the
//! concurrency, retries or crashes.
//!
//! It owns every key under `ledger:`:
//! - `ledger:posting:{id}`: the posting and its `state` (`pending` → `applied`, or `rejected` by a floor). Write-once:
//!   posting the same id again with identical lines is a replay, with different lines a conflict. Callers choose ids
//!   such as `pay:{order_id}`, which makes posting idempotent end to end.
//! - `ledger:idx:{yyyymmdd}:{shard}`: ids of the postings of a Shanghai day, in 16 shards (first hex character of
//!   the hashed id), so [`check`] finds every posting without listing the store. Each shard is a log
//!   ([`crate::kv::append_to_log`]: `…:ctr:n` and one write-once entry per slot, `…:s:{n}`), so a busy day costs each posting the same.
//! - `ledger:accounts:{shard}`: every account ever posted to, in 16 shards (by hashed account name).
//! - `ledger:acct:{account}:{shard}`: one of an account's 16 balance shards, `{balance_fen, recent}`. A posting
//!   lands on the shard named by its hashed id, so hundreds of concurrent postings to one hot account (gateway
//!   clearing, marketing) spread over 16 CAS documents. `recent` holds the ids already applied to the shard, written
//!   in the same CAS as the amount: that is what makes application exactly-once.
//! - `ledger:svq:{account}`: a stored-value account's queue (a log), where its lines wait when its one balance
//!   document is contended, until a waiter folds them all in one CAS (see [`apply_stored_value`]).
//! - `ledger:checkpoint:{yyyymmdd}`: a closed day (its index's slot counts, its net movement per account and, on a
//!   month's last day, every closing balance), and `ledger:checkpoint:head`: the first posting's day, the last
//!   closed day, the closer's lease. Built by [`check_range`] (see [`close_days`] and `note_day`), so a check of
//!   any range is exact however old the ledger is, and costs the days since the last checkpoint, not all history.
//!
//! Invariants:
//! 1. Every stored posting balances (its lines sum to zero), so the balances of all accounts sum to zero.
//! 2. A line is applied at most once (dedupe in the shard's CAS) and, once `post` has returned `Ok`, exactly once.
//! 3. A stored-value account (name ending in [`STORED_VALUE_SUFFIX`]: money the bank holds for a customer, a
//!    credit-normal liability) never goes above zero, i.e. never pays out more than it holds. It lives on shard `0`
//!    alone, so its whole balance is one document and the check is part of the CAS that applies its line. The rule
//!    follows from the name, so no caller can post to such an account without it.
//!
//! `post` is a chain of idempotent steps (record, index, reopen the day if closed, register accounts, apply lines,
//! mark applied), so re-running it after a failure at any point completes the posting without applying anything
//! twice. That holds only while the posting's id is still in the `recent` window (the newest 1000 postings of the
//! shard): a posting left `pending` by a crash must be retried before a thousand more postings land on the same
//! account shard. [`check_range`] lists pending postings as `unapplied`, and no day is closed into a checkpoint
//! while it has one.
//!
//! Documents are created and updated with [`crate::kv::update_json`], whose creation survives a crash at any point;
//! checkpoints are the exception, written with a plain `set` by the one closer holding the head's lease.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::clock::{Timestamp, day_of_number, iso_day, number_of_day};
use crate::ids::hash_key_part;
use crate::kv::{
    Key, Retries, Step, Store, StoreError, Tried, counter_of, decode_doc, get_all, get_json, log_counter_key,
    log_slot_key, put_json, read_counter, try_update_json, update_json as update_doc,
};
use crate::problem::{ErrorKind, Problem};

/// The schema version callers put in [`Posting::v`].
const POSTING_V: u32 = 1;
/// Largest amount of one line: 10^15 fen, far above any real payment, far below `i64` overflow.
const MAX_LINE_FEN: u64 = 1_000_000_000_000_000;
/// Longest account name or posting id.
const MAX_NAME_LEN: usize = 120;
/// Most lines in one posting (more is a caller bug, and would bloat the document).
const MAX_LINES: usize = 100;
/// Longest memo, in characters.
const MAX_MEMO_CHARS: usize = 500;
/// How many applied posting ids a balance shard remembers for deduplication.
const RECENT_KEPT: usize = 1000;
/// How many rejected posting ids a floored account remembers.
const REJECTED_KEPT: usize = 1000;
/// The 16 shard names: the possible first characters of [`hash_key_part`].
pub(crate) const SHARDS: [&str; 16] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f"];
/// The shard every line of a stored-value account goes to.
const FLOOR_SHARD: &str = "0";
/// Accounts whose name ends with this hold customers' stored value: credited when money comes in, debited when it
/// is spent, and never debited past zero.
pub const STORED_VALUE_SUFFIX: &str = ":stored_value";

/// One line of a posting: an amount debited (positive) or credited (negative) to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Account name: 1 to 120 characters of `A-Z a-z 0-9 _ : -`, e.g. `biller:w1:settlement`.
    pub account: String,
    /// Amount in fen: positive is a debit, negative a credit; never zero, at most 10^15 either way.
    pub amount_fen: i64,
}

/// A balanced set of lines, recorded once under its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    /// Schema version: 1.
    pub v: u32,
    /// Idempotency id, e.g. `pay:{order_id}`: 1 to 120 characters of `A-Z a-z 0-9 _ : -`.
    pub id: String,
    /// When the business event happened; decides the day index the posting is listed in.
    pub at: Timestamp,
    /// Human explanation (at most 500 characters).
    pub memo: String,
    /// At least two lines summing to zero.
    pub lines: Vec<Line>,
}

/// What [`post`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PostOutcome {
    /// This call applied the posting (or completed one an earlier, failed call had started).
    Applied,
    /// The posting had already been applied in full: nothing was done.
    AlreadyApplied,
}

/// One account in a [`CheckReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountCheck {
    /// The account.
    pub account: String,
    /// Its balance as stored (sum of its shards).
    pub stored_fen: i64,
    /// Its balance recomputed: the last checkpoint's closing balance plus its lines in the applied postings since.
    pub recomputed_fen: i64,
    /// Its closing balance on the day before the range (its opening balance).
    pub opening_fen: i64,
    /// The sum of its lines in the range's applied postings.
    pub movement_fen: i64,
}

/// The result of [`check_range`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// No discrepancy found.
    pub balanced: bool,
    /// The range's first day, `YYYY-MM-DD`.
    pub from: String,
    /// The range's last day, `YYYY-MM-DD`.
    pub to: String,
    /// Postings listed in the day indexes of the range.
    pub postings: usize,
    /// The last day closed into a checkpoint (`YYYY-MM-DD`), if any: the days after it are recomputed from their
    /// postings by every check until they are closed.
    pub closed_through: Option<String>,
    /// Days this check closed.
    pub days_closed: usize,
    /// The latest days reopened because a posting arrived for them after they were closed (newest last).
    pub reopened: Vec<Reopened>,
    /// Every registered or touched account, with stored and recomputed balances.
    pub accounts: Vec<AccountCheck>,
    /// What is wrong, one sentence each.
    pub discrepancies: Vec<String>,
}

/// A closed day something landed in after it was closed: it and every later day are closed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reopened {
    /// The day, `YYYY-MM-DD`.
    pub day: String,
    /// The late posting; `None` when the day's index changed while it was being closed.
    pub posting_id: Option<String>,
}

/// Why a posting was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The lines do not sum to zero: a bug in the caller.
    #[error("posting does not balance: its lines sum to {sum_fen} fen")]
    Unbalanced {
        /// The sum of the lines.
        sum_fen: i128,
    },
    /// The posting or an account name is malformed: a bug in the caller.
    #[error("invalid posting: {0}")]
    Invalid(String),
    /// The id was already posted with different lines.
    #[error("posting {id} was already recorded with different lines")]
    Conflict {
        /// The posting id.
        id: String,
    },
    /// The stored-value account does not hold enough for the posting.
    #[error("insufficient funds in {account}: it holds {balance_fen} fen, {needed_fen} fen needed")]
    InsufficientFunds {
        /// The stored-value account.
        account: String,
        /// What it held when the posting was refused.
        balance_fen: i64,
        /// What the posting would have taken from it.
        needed_fen: i64,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Problem for LedgerError {
    fn kind(&self) -> ErrorKind {
        match self {
            LedgerError::Unbalanced { .. } | LedgerError::Invalid(_) => ErrorKind::Invalid,
            LedgerError::Conflict { .. } => ErrorKind::Conflict,
            LedgerError::InsufficientFunds { .. } => ErrorKind::Unprocessable,
            LedgerError::Store(e) => e.kind(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            LedgerError::Unbalanced { .. } => "ledger_unbalanced",
            LedgerError::Invalid(_) => "validation_failed",
            LedgerError::Conflict { .. } => "posting_conflict",
            LedgerError::InsufficientFunds { .. } => "insufficient_funds",
            LedgerError::Store(e) => e.code(),
        }
    }
}

/// Whether `name` is a valid account name or posting id: 1 to 120 characters of `A-Z a-z 0-9 _ : -`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':' || b == b'-')
}

/// Checks a posting without touching the store: version, id, memo, 2 to 100 lines with valid accounts and non-zero
/// amounts of at most 10^15 fen, summing to zero.
pub fn validate(posting: &Posting) -> Result<(), LedgerError> {
    let invalid = |detail: String| Err(LedgerError::Invalid(detail));
    if posting.v != POSTING_V {
        return invalid(format!("posting v must be {POSTING_V}, not {}", posting.v));
    }
    if !valid_name(&posting.id) {
        return invalid("posting id must be 1 to 120 characters of A-Z a-z 0-9 _ : -".into());
    }
    if posting.memo.chars().count() > MAX_MEMO_CHARS {
        return invalid(format!("memo must be at most {MAX_MEMO_CHARS} characters"));
    }
    if posting.lines.len() < 2 || posting.lines.len() > MAX_LINES {
        return invalid(format!("a posting needs 2 to {MAX_LINES} lines, not {}", posting.lines.len()));
    }
    let mut sum: i128 = 0;
    for (i, line) in posting.lines.iter().enumerate() {
        if !valid_name(&line.account) {
            return invalid(format!("line {i}: account must be 1 to 120 characters of A-Z a-z 0-9 _ : -"));
        }
        if line.amount_fen == 0 {
            return invalid(format!("line {i}: amount must not be zero"));
        }
        if line.amount_fen.unsigned_abs() > MAX_LINE_FEN {
            return invalid(format!("line {i}: amount must be at most {MAX_LINE_FEN} fen either way"));
        }
        // Cannot overflow (100 lines of at most 10^15), but the check costs nothing and needs no argument.
        sum = sum
            .checked_add(i128::from(line.amount_fen))
            .ok_or_else(|| LedgerError::Invalid("line amounts overflow".into()))?;
    }
    if sum != 0 {
        return Err(LedgerError::Unbalanced { sum_fen: sum });
    }
    Ok(())
}

/// Records and applies a balanced posting, exactly once per id.
///
/// Safe to call again with the same posting after any failure: it completes what an earlier call started. A call
/// with the same id and different lines fails with [`LedgerError::Conflict`].
///
/// A posting may debit at most one stored-value account (see [`STORED_VALUE_SUFFIX`]). That line is applied first,
/// and the posting fails with [`LedgerError::InsufficientFunds`] before any other line is applied if the account
/// does not hold the amount. The refusal is final for this id: the posting is recorded `rejected` and a retry
/// returns the same error, so a later attempt needs a new id.
pub async fn post(store: &impl Store, posting: &Posting) -> Result<PostOutcome, LedgerError> {
    post_inner(store, posting).await
}

/// Whether `account` holds customers' stored value (never debited past zero).
pub fn is_stored_value(account: &str) -> bool {
    account.ends_with(STORED_VALUE_SUFFIX)
}

/// The balance of an account (debits positive): the sum of its 16 shards. Unknown accounts have balance 0.
pub async fn balance(store: &impl Store, account: &str) -> Result<i64, LedgerError> {
    if !valid_name(account) {
        return Err(LedgerError::Invalid("account must be 1 to 120 characters of A-Z a-z 0-9 _ : -".into()));
    }
    if is_stored_value(account) {
        // Every line of a stored-value account lands in its one balance document (the floor is decided there).
        let key = balance_key(account, FLOOR_SHARD);
        return Ok(get_json::<BalanceShard>(store, &key).await?.map_or(0, |shard| shard.balance_fen));
    }
    let balances = balances(store, &[account.to_owned()]).await?;
    Ok(balances.into_iter().next().unwrap_or(0))
}

/// The posting recorded under `id`, whatever its state.
pub async fn posting(store: &impl Store, id: &str) -> Result<Option<Posting>, LedgerError> {
    if !valid_name(id) {
        return Err(LedgerError::Invalid("posting id must be 1 to 120 characters of A-Z a-z 0-9 _ : -".into()));
    }
    let key = posting_key(id);
    let doc: Option<PostingDoc> = decode_doc(&key, store.get(&key).await?.as_deref())?;
    Ok(doc.map(|d| d.posting))
}

/// Audits the ledger over the Shanghai days `from` to `to`, as of `now`: exact whatever the ledger's age, at the
/// cost of the days since the last checkpoint.
///
/// First closes what is due: every day from go-live to `now`'s day `-` [`SETTLE_DAYS`] `- 1` gets a checkpoint
/// holding its net movements (and, on a month's last day, every closing balance), built once and reused.
/// Then it compares like with like:
/// - every posting listed in the range exists, balances and is `applied` (a `pending` one is reported `unapplied`:
///   re-running `post` completes it); `postings` counts them;
/// - per account, the opening balance of the range (the closing of the day before, from the checkpoints and the
///   postings of the days not closed yet) plus the range's applied postings equals the closing of the range's last
///   day as the checkpoints recorded it, when that day is closed;
/// - per account, the closing balance today (the last checkpoint plus every applied posting of the days since, up
///   to tomorrow for clock skew) equals the stored balance, and the stored balances of all accounts sum to zero.
///
/// So the default check of the last month is as exact as a recomputation from go-live, and a full audit from
/// go-live is a sequence of ranges, each checked against the same chain. A posting that lands in a closed day (a
/// late one) reopens that day when it is posted (see `post`), so the next check closes it again; reopened days are
/// listed in the report.
///
/// Closing writes (one checkpoint per day, the head twice), at most 366 days per call (the next call goes on, and
/// checks stay exact meanwhile), by one caller at a time (a lease in the head), and never past a day with a posting
/// that is not final. `from` after `to` is [`LedgerError::Invalid`].
pub async fn check_range(
    store: &impl Store,
    from: Timestamp,
    to: Timestamp,
    now: Timestamp,
) -> Result<CheckReport, LedgerError> {
    check_days(store, from.shanghai_day_number(), to.shanghai_day_number(), now.shanghai_day_number()).await
}

/// [`check_range`] over the span of `days` (`yyyymmdd`: from the earliest to the latest), as of the latest.
pub async fn check(store: &impl Store, days: &[u32]) -> Result<CheckReport, LedgerError> {
    let numbers = days
        .iter()
        .map(|day| number_of_day(*day).ok_or_else(|| LedgerError::Invalid(format!("{day} is not a yyyymmdd date"))))
        .collect::<Result<Vec<i64>, _>>()?;
    let (Some(&from), Some(&to)) = (numbers.iter().min(), numbers.iter().max()) else {
        return Err(LedgerError::Invalid("a check needs at least one day".into()));
    };
    check_days(store, from, to, to).await
}

/// [`check_range`] over Shanghai day numbers.
async fn check_days(store: &impl Store, from: i64, to: i64, today: i64) -> Result<CheckReport, LedgerError> {
    if from > to {
        return Err(LedgerError::Invalid("from must be on or before to".into()));
    }
    let chain = close_days(store, today).await?;
    let end = today.max(to) + AHEAD_DAYS;
    // Without a head nothing was ever posted (the first posting creates it): every day through `end` is known to
    // be empty, so only the range itself is read, however far back it lies.
    let (genesis, through) = match &chain.head {
        Some(head) => head_bounds(head)?,
        None => (end + 1, end),
    };
    let numbers: BTreeSet<i64> = (from..=to).chain(through + 1..=end).collect();
    let numbers: Vec<i64> = numbers.into_iter().collect();
    let days: Vec<u32> = numbers.iter().map(|n| day_of_number(*n)).collect();
    let reads = read_days(store, &days).await?;

    let mut discrepancies = Vec::new();
    let mut postings = 0;
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut moved_by_day: BTreeMap<i64, Balances> = BTreeMap::new();
    for (number, read) in numbers.iter().zip(&reads) {
        if (from..=to).contains(number) {
            postings += read.postings.len();
        }
        for (id, listed) in &read.postings {
            match listed {
                Listed::Applied(lines) => {
                    touched.extend(lines.keys().cloned());
                    add(moved_by_day.entry(*number).or_default(), lines);
                }
                Listed::Pending => discrepancies.push(format!("unapplied: posting {id} is still pending")),
                Listed::Missing => discrepancies.push(format!("posting {id} is listed in a day index but missing")),
                Listed::Malformed(e) => discrepancies.push(format!("posting {id} is malformed: {e}")),
                // A rejected posting applied nothing: its stored-value line was refused before any other line.
                Listed::Rejected => {}
            }
        }
    }
    let moved_over = |days: std::ops::RangeInclusive<i64>| {
        let mut sum = Balances::new();
        for moved in moved_by_day.range(days).map(|(_, moved)| moved) {
            add(&mut sum, moved);
        }
        sum
    };

    let last_closed = closing_at(store, genesis, through).await?;
    let mut now_balances = last_closed.clone();
    add(&mut now_balances, &moved_over(through + 1..=end));
    let mut opening =
        if from - 1 <= through { closing_at(store, genesis, from - 1).await? } else { last_closed.clone() };
    if from - 1 > through {
        add(&mut opening, &moved_over(through + 1..=from - 1));
    }
    let movement = moved_over(from..=to);
    // Paired with the assertion in `post`: applied postings balance, so the range's movements do too.
    debug_assert_eq!(movement.values().sum::<i128>(), 0, "applied postings must sum to zero");
    if to <= through {
        let closing = closing_at(store, genesis, to).await?;
        let names: BTreeSet<&String> = closing.keys().chain(opening.keys()).chain(movement.keys()).collect();
        for account in names {
            let (o, m) = (fen(&opening, account), fen(&movement, account));
            let c = fen(&closing, account);
            if o + m != c {
                discrepancies.push(format!(
                    "account {account}: its checkpoint closes {} at {c} fen, but its opening {o} plus the range's \
                     postings {m} make {}",
                    iso_day(day_of_number(to)),
                    o + m
                ));
            }
        }
    }

    let registered = registered_accounts(store).await?;
    for account in touched.iter().filter(|a| !registered.contains(*a)) {
        discrepancies.push(format!("account {account} has applied postings but is not in the account index"));
    }
    let names: BTreeSet<String> = registered
        .into_iter()
        .chain(now_balances.keys().cloned())
        .chain(opening.keys().cloned())
        .chain(movement.keys().cloned())
        .collect();
    let names: Vec<String> = names.into_iter().collect();
    let stored = balances(store, &names).await?;
    let mut accounts = Vec::with_capacity(names.len());
    let mut total: i128 = 0;
    for (account, stored_fen) in names.into_iter().zip(stored) {
        let recomputed = fen(&now_balances, &account);
        if i128::from(stored_fen) != recomputed {
            discrepancies.push(format!("account {account}: stored {stored_fen} fen, postings sum to {recomputed}"));
        }
        total += i128::from(stored_fen);
        accounts.push(AccountCheck {
            stored_fen,
            recomputed_fen: clamp(recomputed),
            opening_fen: clamp(fen(&opening, &account)),
            movement_fen: clamp(fen(&movement, &account)),
            account,
        });
    }
    if total != 0 {
        discrepancies.push(format!("stored balances of all accounts sum to {total} fen, not zero"));
    }

    let head = chain.head.as_ref();
    Ok(CheckReport {
        balanced: discrepancies.is_empty(),
        from: iso_day(day_of_number(from)),
        to: iso_day(day_of_number(to)),
        postings,
        closed_through: head.filter(|h| h.through != 0).map(|h| iso_day(h.through)),
        days_closed: chain.closed_now,
        reopened: head.map(|h| h.reopened.clone()).unwrap_or_default(),
        accounts,
        discrepancies,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Posting

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    Pending,
    Applied,
    Rejected,
}

/// Why a floored posting was refused, kept so a retry gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rejection {
    balance_fen: i64,
    needed_fen: i64,
}

/// `ledger:posting:{id}`: the posting's own fields, flattened, next to its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PostingDoc {
    #[serde(flatten)]
    posting: Posting,
    state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    floored: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rejection: Option<Rejection>,
}

/// A set of ids or names: day index and account index shards.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct IdSet {
    v: u32,
    ids: BTreeSet<String>,
}

/// `ledger:acct:{account}:{shard}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct BalanceShard {
    v: u32,
    balance_fen: i64,
    /// Posting ids applied here, oldest first, at most [`RECENT_KEPT`].
    recent: Vec<String>,
    /// Floored accounts only: postings refused here, so the decision is made once, in this CAS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rejected: Vec<RejectedId>,
    /// Stored-value shards only: the last slot of the account's queue ([`queue_key`]) folded in.
    #[serde(default, skip_serializing_if = "is_zero")]
    through: i64,
    /// Stored-value shards only: queue slots folded past while still empty (their writer re-queues), newest last,
    /// at most [`REJECTED_KEPT`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    skipped: Vec<i64>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One entry of a stored-value account's queue: a line waiting to be folded into its balance.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Queued {
    v: u32,
    id: String,
    net: i64,
    floor: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RejectedId {
    id: String,
    #[serde(flatten)]
    rejection: Rejection,
}

/// What step 1 of `post` found.
enum Recorded {
    Pending(Posting),
    Applied,
    Rejected { account: String, rejection: Rejection },
}

fn posting_key(id: &str) -> Key {
    Key::new(&["ledger", "posting", id])
}

fn day_index_key(day: u32, shard: &str) -> Key {
    Key::new(&["ledger", "idx", &day.to_string(), shard])
}

fn accounts_key(shard: &str) -> Key {
    Key::new(&["ledger", "accounts", shard])
}

/// `ledger:svq:{account}`: the queue of a stored-value account (a log: `…:ctr:n`, `…:s:{slot}`), where lines wait
/// when its balance document is contended.
fn queue_key(account: &str) -> Key {
    Key::new(&["ledger", "svq", account])
}

fn balance_key(account: &str, shard: &str) -> Key {
    Key::new(&["ledger", "acct", account, shard])
}

/// The shard of an id or name: the first hex character of its hash.
pub(crate) fn shard_of(s: &str) -> &'static str {
    let hash = hash_key_part(s);
    SHARDS.iter().copied().find(|shard| hash.starts_with(*shard)).unwrap_or(SHARDS[0])
}

fn line_sum(lines: &[Line]) -> i128 {
    lines.iter().map(|l| i128::from(l.amount_fen)).sum()
}

/// Net amount per account: lines of one posting on the same account are applied together, since the shard's
/// dedupe is per posting id.
fn nets(lines: &[Line]) -> Result<BTreeMap<&str, i64>, LedgerError> {
    let mut nets: BTreeMap<&str, i64> = BTreeMap::new();
    for line in lines {
        let net = nets.entry(line.account.as_str()).or_default();
        *net = net.checked_add(line.amount_fen).ok_or_else(|| LedgerError::Invalid("line amounts overflow".into()))?;
    }
    Ok(nets)
}

async fn post_inner(store: &impl Store, posting: &Posting) -> Result<PostOutcome, LedgerError> {
    validate(posting)?;
    // The stored-value account this posting takes money from, if any: the one line that can be refused.
    let debited: Vec<&str> = nets(&posting.lines)?
        .into_iter()
        .filter(|(account, net)| is_stored_value(account) && *net > 0)
        .map(|(account, _)| account)
        .collect();
    if debited.len() > 1 {
        return Err(LedgerError::Invalid("a posting may debit at most one stored-value account".into()));
    }
    let floored = debited.first().copied();
    debug_assert_eq!(line_sum(&posting.lines), 0, "a validated posting balances");

    // 1. Record the posting write-once. From here on the stored copy is the truth: a retry with another `at` or
    //    memo must not land in another day index.
    let key = posting_key(&posting.id);
    let recorded = crate::kv::update_json_new(store, &key, |doc: Option<&PostingDoc>| match doc {
        None => {
            let fresh = PostingDoc {
                posting: posting.clone(),
                state: State::Pending,
                floored: floored.map(str::to_owned),
                rejection: None,
            };
            Ok(Step::Write(fresh, Recorded::Pending(posting.clone())))
        }
        Some(doc) if doc.posting.lines != posting.lines => Err(LedgerError::Conflict { id: posting.id.clone() }),
        Some(doc) => Ok(Step::Keep(match (&doc.state, &doc.rejection, &doc.floored) {
            (State::Applied, _, _) => Recorded::Applied,
            (State::Rejected, Some(rejection), Some(account)) => {
                Recorded::Rejected { account: account.clone(), rejection: rejection.clone() }
            }
            _ => Recorded::Pending(doc.posting.clone()),
        })),
    })
    .await?;
    let stored = match recorded {
        Recorded::Pending(stored) => stored,
        Recorded::Applied => return Ok(PostOutcome::AlreadyApplied),
        Recorded::Rejected { account, rejection } => return Err(insufficient(account, &rejection)),
    };
    let id = stored.id.as_str();

    // 2. List it in its day index, so `check` can find it.
    let day = stored.at.shanghai_day();
    crate::kv::append_to_log(store, &day_index_key(day, shard_of(id)), id).await?;
    // 2b. A posting listed in a day that is already closed reopens it (after listing it, see `note_day`).
    // 3. Register the accounts before touching their balances, so `check` sees every account that has one.
    //    The head and the account registers are read in one batch; each is written only when it lacks this posting's
    //    day or account (rare once the ledger is warm).
    let nets = nets(&stored.lines)?;
    let registers: Vec<Key> = nets.keys().map(|account| accounts_key(shard_of(account))).collect();
    let mut keys = vec![head_key()];
    keys.extend(registers.iter().cloned());
    let found = crate::kv::get_all(store, &keys).await?;
    note_day(store, day, id, found[0].as_deref()).await?;
    for ((account, register), held) in nets.keys().zip(&registers).zip(&found[1..]) {
        if !crate::kv::index_holds(register, held.as_deref(), account)? {
            add_to_set(store, register, account).await?;
        }
    }

    // 4. Apply the lines: the debited stored-value account first, so a refusal leaves nothing else applied.
    if let Some(account) = floored
        && let Some(&net) = nets.get(account)
        && let Err(rejection) = apply_stored_value(store, account, id, net, true).await?
    {
        mark(store, &key, State::Rejected, Some(rejection.clone())).await?;
        return Err(insufficient(account.to_owned(), &rejection));
    }
    for (&account, &net) in nets.iter().filter(|(a, net)| Some(**a) != floored && **net != 0) {
        // Every other line only adds to what an account holds, or is on an unbounded account: none can refuse.
        let _applied = if is_stored_value(account) {
            apply_stored_value(store, account, id, net, false).await?
        } else {
            apply(store, account, shard_of(id), id, net, false).await?
        };
    }

    // 5. Done: later calls skip everything above.
    mark(store, &key, State::Applied, None).await?;
    Ok(PostOutcome::Applied)
}

fn insufficient(account: String, rejection: &Rejection) -> LedgerError {
    LedgerError::InsufficientFunds { account, balance_fen: rejection.balance_fen, needed_fen: rejection.needed_fen }
}

/// Adds `id` to the set document at `key` (index shards), if not there yet.
async fn add_to_set(store: &impl Store, key: &Key, id: &str) -> Result<(), LedgerError> {
    crate::kv::add_to_index(store, key, id).await?;
    Ok(())
}

/// Applies one account's net amount of posting `id` to a balance shard, once. With `floor` (a stored-value account
/// being debited), refuses (and remembers the refusal) when the balance would go above zero, i.e. the account would
/// pay out more than it holds; the `Err` inside is that refusal.
async fn apply(
    store: &impl Store,
    account: &str,
    shard: &str,
    id: &str,
    net: i64,
    floor: bool,
) -> Result<Result<(), Rejection>, LedgerError> {
    update_doc(store, &balance_key(account, shard), |doc: Option<&BalanceShard>| {
        let fresh = || BalanceShard { v: 1, ..BalanceShard::default() };
        fold_step(doc.cloned().unwrap_or_else(fresh), account, id, net, floor)
    })
    .await
}

/// [`fold_line`] as a step of a read-modify-write: keep the shard when it knew the posting, else write it.
fn fold_step(
    mut shard: BalanceShard,
    account: &str,
    id: &str,
    net: i64,
    floor: bool,
) -> Result<Step<BalanceShard, Result<(), Rejection>>, LedgerError> {
    Ok(match fold_line(&mut shard, account, id, net, floor)? {
        Folded::Known(outcome) => Step::Keep(outcome),
        Folded::New(outcome) => Step::Write(shard, outcome),
    })
}

/// What [`fold_line`] found.
enum Folded {
    /// The shard had already applied or refused the posting: nothing changed.
    Known(Result<(), Rejection>),
    /// The line was applied (or refused) just now, in the shard passed in.
    New(Result<(), Rejection>),
}

/// Applies posting `id`'s net amount to a balance shard in memory, once: a posting the shard already applied or
/// refused is [`Folded::Known`]. With `floor` (a stored-value account being debited), refuses, and remembers the
/// refusal, when the balance would go above zero, i.e. the account would pay out more than it holds.
fn fold_line(shard: &mut BalanceShard, account: &str, id: &str, net: i64, floor: bool) -> Result<Folded, LedgerError> {
    if shard.recent.iter().any(|r| r == id) {
        return Ok(Folded::Known(Ok(())));
    }
    if let Some(r) = shard.rejected.iter().find(|r| r.id == id) {
        return Ok(Folded::Known(Err(r.rejection.clone())));
    }
    let balance = shard
        .balance_fen
        .checked_add(net)
        .ok_or_else(|| LedgerError::Invalid(format!("the balance of {account} would overflow")))?;
    if floor && net > 0 && balance > 0 {
        let rejection = Rejection { balance_fen: -shard.balance_fen, needed_fen: net };
        shard.rejected.push(RejectedId { id: id.to_owned(), rejection: rejection.clone() });
        trim_front(&mut shard.rejected, REJECTED_KEPT);
        return Ok(Folded::New(Err(rejection)));
    }
    shard.balance_fen = balance;
    shard.recent.push(id.to_owned());
    trim_front(&mut shard.recent, RECENT_KEPT);
    Ok(Folded::New(Ok(())))
}

/// How many queued lines one fold applies at most.
const FOLD_MAX: i64 = 200;

/// Applies posting `id`'s net amount to a stored-value account, whose balance is one document (shard `0`), once;
/// `floor` as in [`fold_line`]. The `Err` inside is a refusal.
///
/// Hundreds of concurrent spends on one card all need that one document. A plain compare-and-swap loop serves one
/// of them per round, and on a slow store (Spin's Redis store opens a connection per swap) the others run out of
/// patience. So only the first attempt is a plain swap; after losing it, the line joins the account's queue
/// ([`queue_key`], a log: a slot from an atomic counter, then a write-once entry) and every waiter folds *all* the
/// queued lines it can read into the document in one swap (flat combining): each successful swap serves many.
/// Folding is in slot order and decides each line exactly as [`fold_line`] would; the document records the last
/// slot folded (`through`), so a line is folded once, and the posting ids it applied or refused, so a posting
/// applied by its own swap and queued too (a retry after a crash) is applied once.
///
/// A slot taken but still empty (its writer is between taking it and writing it, or died there) stops the fold;
/// a waiter that finds the same slot still empty on a later round folds past it and records it in `skipped`. Its
/// writer, finding its slot skipped, queues its line again under a new slot.
async fn apply_stored_value(
    store: &impl Store,
    account: &str,
    id: &str,
    net: i64,
    floor: bool,
) -> Result<Result<(), Rejection>, LedgerError> {
    let key = balance_key(account, FLOOR_SHARD);
    let Some(mut current) = store.get(&key).await? else {
        // The account's first line creates its document: no queue to fold yet.
        return apply(store, account, FLOOR_SHARD, id, net, floor).await;
    };
    // 1. One plain swap: enough whenever the account is not contended.
    let tried =
        try_update_json(store, &key, &current, |doc: &BalanceShard| fold_step(doc.clone(), account, id, net, floor))
            .await?;
    match tried {
        Tried::Done(outcome) => return Ok(outcome),
        Tried::Lost(Some(now)) => current = now,
        Tried::Lost(None) => return Err(vanished(&key)),
    }

    // 2. Queue the line, then fold until it is in.
    let queue = queue_key(account);
    let entry = Queued { v: 1, id: id.to_owned(), net, floor };
    let mut slot = enqueue(store, &queue, &entry).await?;
    let mut empty_seen: BTreeSet<i64> = BTreeSet::new();
    let mut retries = Retries::start(store);
    while retries.next(store).await {
        if !retries.first() {
            current = store.get(&key).await?.ok_or_else(|| vanished(&key))?;
        }
        let doc: BalanceShard = decode_doc(&key, Some(&current))?.ok_or_else(|| vanished(&key))?;
        if let Some(outcome) = known_outcome(&doc, id) {
            return Ok(outcome);
        }
        if doc.through >= slot {
            if doc.skipped.contains(&slot) {
                slot = enqueue(store, &queue, &entry).await?;
                continue;
            }
            return Err(StoreError::Corrupt {
                key: key.to_string(),
                detail: format!("queue slot {slot} of posting {id} was folded but the posting is not recorded"),
            }
            .into());
        }
        // Read what is queued after `through` (at most FOLD_MAX), and fold it.
        let queued = read_counter(store, &log_counter_key(&queue)).await?.min(doc.through + FOLD_MAX);
        let slots: Vec<i64> = (doc.through + 1..=queued).collect();
        let keys: Vec<Key> = slots.iter().map(|s| log_slot_key(&queue, *s)).collect();
        let entries = get_all(store, &keys).await?;
        let mut next = doc.clone();
        for ((slot, key), raw) in slots.iter().zip(&keys).zip(entries) {
            match decode_doc::<Queued>(key, raw.as_deref())? {
                Some(line) => {
                    let _folded = fold_line(&mut next, account, &line.id, line.net, line.floor)?;
                }
                None if empty_seen.contains(slot) => {
                    next.skipped.push(*slot);
                    trim_front(&mut next.skipped, REJECTED_KEPT);
                }
                None => {
                    empty_seen.insert(*slot);
                    break;
                }
            }
            next.through = *slot;
        }
        if next.through == doc.through {
            continue;
        }
        match try_update_json(store, &key, &current, |_: &BalanceShard| {
            Ok::<_, LedgerError>(Step::Write(next.clone(), ()))
        })
        .await?
        {
            Tried::Done(()) => {
                if let Some(outcome) = known_outcome(&next, id) {
                    return Ok(outcome);
                }
            }
            // The next round pauses and reads again.
            Tried::Lost(_) => {}
        }
    }
    Err(StoreError::Contention { key: key.to_string() }.into())
}

/// What a shard recorded for posting `id`, if anything.
fn known_outcome(shard: &BalanceShard, id: &str) -> Option<Result<(), Rejection>> {
    if shard.recent.iter().any(|r| r == id) {
        return Some(Ok(()));
    }
    shard.rejected.iter().find(|r| r.id == id).map(|r| Err(r.rejection.clone()))
}

/// Queues a line: takes a slot, then writes the entry once under it.
async fn enqueue(store: &impl Store, queue: &Key, entry: &Queued) -> Result<i64, LedgerError> {
    let slot = store.increment(&log_counter_key(queue), 1).await?;
    put_json(store, &log_slot_key(queue, slot), entry).await?;
    Ok(slot)
}

fn vanished(key: &Key) -> LedgerError {
    LedgerError::Store(StoreError::Corrupt { key: key.to_string(), detail: "balance document vanished".into() })
}

fn trim_front<T>(items: &mut Vec<T>, keep: usize) {
    if items.len() > keep {
        items.drain(..items.len() - keep);
    }
}

/// Moves a pending posting to `state`; a posting already out of `pending` keeps its state (a concurrent call got
/// there first, and both transitions it could have made agree with ours: see the floored shard's single decision).
async fn mark(store: &impl Store, key: &Key, state: State, rejection: Option<Rejection>) -> Result<(), LedgerError> {
    update_doc(store, key, |doc: Option<&PostingDoc>| match doc {
        Some(doc) if doc.state == State::Pending => {
            Ok(Step::Write(PostingDoc { state, rejection: rejection.clone(), ..doc.clone() }, ()))
        }
        Some(_) => Ok(Step::Keep(())),
        None => Err(LedgerError::Store(StoreError::Corrupt {
            key: key.to_string(),
            detail: "posting vanished while being applied".into(),
        })),
    })
    .await
}

/// Balances of several accounts, each the sum of its 16 shards, in as few round trips as possible.
async fn balances(store: &impl Store, accounts: &[String]) -> Result<Vec<i64>, LedgerError> {
    let keys: Vec<Key> = accounts.iter().flat_map(|a| SHARDS.iter().map(move |s| balance_key(a, s))).collect();
    let raw = get_all(store, &keys).await?;
    let mut out = Vec::with_capacity(accounts.len());
    for (keys, values) in keys.chunks(SHARDS.len()).zip(raw.chunks(SHARDS.len())) {
        let mut sum: i128 = 0;
        for (key, value) in keys.iter().zip(values) {
            if let Some(shard) = decode_doc::<BalanceShard>(key, value.as_deref())? {
                sum += i128::from(shard.balance_fen);
            }
        }
        let sum = i64::try_from(sum).map_err(|_| StoreError::Corrupt {
            key: keys.first().map(Key::to_string).unwrap_or_default(),
            detail: "account balance overflows i64".into(),
        })?;
        out.push(sum);
    }
    Ok(out)
}

async fn registered_accounts(store: &impl Store) -> Result<BTreeSet<String>, LedgerError> {
    let keys: Vec<Key> = SHARDS.iter().map(|s| accounts_key(s)).collect();
    let mut accounts = BTreeSet::new();
    for (key, raw) in keys.iter().zip(get_all(store, &keys).await?) {
        if let Some(doc) = decode_doc::<IdSet>(key, raw.as_deref())? {
            accounts.extend(doc.ids);
        }
    }
    Ok(accounts)
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints: the chain of closed days

/// Full days a Shanghai day stays open after it ends before a check closes it: postings dated that day may still
/// arrive (a gateway's late notification, a retried request) without reopening anything.
pub const SETTLE_DAYS: i64 = 2;
/// Days after today a check still reads, for postings dated a little ahead (clock skew between callers).
const AHEAD_DAYS: i64 = 1;
/// Most days one check closes: the next check goes on from there, and checks stay exact meanwhile.
const CLOSE_MAX_DAYS: i64 = 366;
/// How many reopened days the head remembers.
const REOPENED_KEPT: usize = 20;

/// Balances or movements per account, in `i128` so that sums cannot overflow.
type Balances = BTreeMap<String, i128>;

/// `ledger:checkpoint:head`: where the chain of closed days starts and ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    v: u32,
    /// The earliest day any posting is listed in (`yyyymmdd`).
    genesis: u32,
    /// The last closed day (`yyyymmdd`), 0 for none: every day from `genesis` to it has a valid checkpoint.
    #[serde(default)]
    through: u32,
    /// Bumped whenever the chain is cut back, so a closer that started from an older head never extends it.
    #[serde(default)]
    epoch: u64,
    /// The closer at work: only the lease holder writes checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease: Option<Lease>,
    /// The latest days reopened, newest last, at most [`REOPENED_KEPT`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reopened: Vec<Reopened>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    token: String,
    /// When it was taken, Unix seconds by the real clock.
    since: i64,
}

/// `ledger:checkpoint:{yyyymmdd}`: a closed day. Written only by the lease holder, and valid while the day is at
/// or before the head's `through`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    v: u32,
    day: u32,
    /// The slots taken in each of the day's 16 index shards when it was closed.
    counts: Vec<i64>,
    /// Slots taken but still empty then (`[shard, slot]`): a posting being listed at that moment, or one whose
    /// writer died before listing it (it lists it again under a new slot when retried).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    empty: Vec<(usize, i64)>,
    /// The day's applied postings.
    postings: usize,
    /// The day's net movement of every account that moved.
    moved: BTreeMap<String, i64>,
    /// Every non-zero closing balance, on the last day of a month only: another day's closing balances are the
    /// month before's plus the movements since, so a lookup reads at most 32 checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    closing: Option<BTreeMap<String, i64>>,
}

/// An entry of a day index: the log entry of [`crate::kv::append_to_log`] (`{"v":1,"id":…}`).
#[derive(Deserialize)]
struct Listing {
    id: String,
}

/// A posting listed in a day index, as read.
enum Listed {
    /// Applied: its net amount per account.
    Applied(Balances),
    Rejected,
    Pending,
    Missing,
    Malformed(String),
}

/// One day's index as read.
struct DayRead {
    day: u32,
    /// The slots taken in each shard.
    counts: Vec<i64>,
    /// Slots taken but empty (`[shard, slot]`).
    empty: Vec<(usize, i64)>,
    /// Each listed posting once.
    postings: Vec<(String, Listed)>,
}

/// What [`close_days`] left.
struct Chain {
    /// The head after closing (`None`: nothing was ever posted).
    head: Option<Head>,
    /// Days closed by this call.
    closed_now: usize,
}

fn head_key() -> Key {
    Key::new(&["ledger", "checkpoint", "head"])
}

fn checkpoint_key(day: u32) -> Key {
    Key::new(&["ledger", "checkpoint", &day.to_string()])
}

fn is_month_end(number: i64) -> bool {
    day_of_number(number + 1) % 100 == 1
}

fn corrupt(key: &Key, detail: &str) -> LedgerError {
    LedgerError::Store(StoreError::Corrupt { key: key.to_string(), detail: detail.into() })
}

/// The head's `genesis` and `through` as day numbers; `through` is the day before `genesis` when nothing is closed.
fn head_bounds(head: &Head) -> Result<(i64, i64), LedgerError> {
    let bad = || corrupt(&head_key(), "not a yyyymmdd day");
    let genesis = number_of_day(head.genesis).ok_or_else(bad)?;
    let through = if head.through == 0 { genesis - 1 } else { number_of_day(head.through).ok_or_else(bad)? };
    Ok((genesis, through))
}

fn add(balances: &mut Balances, moved: &Balances) {
    for (account, fen) in moved {
        *balances.entry(account.clone()).or_default() += fen;
    }
}

fn fen(balances: &Balances, account: &str) -> i128 {
    balances.get(account).copied().unwrap_or(0)
}

fn clamp(fen: i128) -> i64 {
    i64::try_from(fen).unwrap_or(if fen < 0 { i64::MIN } else { i64::MAX })
}

/// `balances` as stored in a checkpoint: zero balances left out.
fn stored_form(key: &Key, balances: &Balances) -> Result<BTreeMap<String, i64>, LedgerError> {
    balances
        .iter()
        .filter(|(_, fen)| **fen != 0)
        .map(|(account, fen)| Ok((account.clone(), i64::try_from(*fen).map_err(|_| corrupt(key, "overflows i64"))?)))
        .collect()
}

fn widened(balances: &BTreeMap<String, i64>) -> Balances {
    balances.iter().map(|(account, fen)| (account.clone(), i128::from(*fen))).collect()
}

/// Step 2b of `post`, after the posting is listed in its day's index: starts the chain at the first posting's day,
/// and reopens the posting's day if it is already closed (or moves the chain's start back to it). One read, and a
/// write only in those rare cases.
///
/// Listing first, then reading the head, is what makes a closer and a late posting always meet: a closer advances
/// the head and then re-reads the indexes of the days it closed (see [`close_days`]), so either this read sees the
/// day closed, or that re-read sees the posting listed.
async fn note_day(store: &impl Store, day: u32, id: &str, read: Option<&[u8]>) -> Result<(), LedgerError> {
    let key = head_key();
    let covered = |head: &Head| head.genesis <= day && head.through < day;
    if crate::kv::decode_doc::<Head>(&key, read)?.is_some_and(|head| covered(&head)) {
        return Ok(());
    }
    update_doc(store, &key, |head: Option<&Head>| match head {
        None => {
            let head = Head { v: 1, genesis: day, through: 0, epoch: 0, lease: None, reopened: Vec::new() };
            Ok(Step::Write(head, ()))
        }
        Some(head) if covered(head) => Ok(Step::Keep(())),
        Some(head) => Ok(Step::Write(reopen(head, day, Some(id))?, ())),
    })
    .await
}

/// `head` with `day` and every later day reopened, and the chain's start moved back to `day` if earlier.
fn reopen(head: &Head, day: u32, posting_id: Option<&str>) -> Result<Head, LedgerError> {
    let mut next = head.clone();
    let closed = head.through != 0 && day <= head.through;
    if day < head.genesis {
        next.genesis = day;
        next.through = 0;
    } else if closed {
        let number = number_of_day(day).ok_or_else(|| LedgerError::Invalid(format!("{day} is not a yyyymmdd date")))?;
        next.through = if day == head.genesis { 0 } else { day_of_number(number - 1) };
    }
    next.epoch += 1;
    if closed {
        next.reopened.push(Reopened { day: iso_day(day), posting_id: posting_id.map(str::to_owned) });
        trim_front(&mut next.reopened, REOPENED_KEPT);
    }
    Ok(next)
}

/// Closes the days that are due: from the day after the head's `through` up to `today -` [`SETTLE_DAYS`] `- 1`,
/// at most [`CLOSE_MAX_DAYS`] per call, stopping before the first day with a posting that is not final (`pending`,
/// missing or malformed: the check reports it, and the day closes once it is fixed).
///
/// One closer at a time: it takes a lease on the head (a closer finding another's live lease closes nothing; the
/// check is exact anyway), writes one checkpoint per day, then advances `through` in the same write that gives the
/// lease back, unless a late posting cut the chain back meanwhile (`epoch` changed). Finally it re-reads the index
/// counters (and the slots it found empty) of the days it closed: if anything was listed meanwhile, that posting
/// may have read the head before it advanced and not reopened its day, so the closer reopens it.
async fn close_days(store: &impl Store, today: i64) -> Result<Chain, LedgerError> {
    let key = head_key();
    let Some(head) = get_json::<Head>(store, &key).await? else {
        return Ok(Chain { head: None, closed_now: 0 });
    };
    let target = today - SETTLE_DAYS - 1;
    if target <= head_bounds(&head)?.1 {
        return Ok(Chain { head: Some(head), closed_now: 0 });
    }

    // 1. Take the lease.
    let token: String = crate::ids::random_bytes::<8>()
        .map_err(|e| StoreError::Backend(e.to_string()))?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (now, lease_secs) = (store.now_unix_secs(), store.creation_lease_secs().await);
    let taken = update_doc(store, &key, |current: Option<&Head>| {
        let Some(current) = current else { return Err(corrupt(&key, "the head vanished")) };
        if current.lease.as_ref().is_some_and(|l| now.saturating_sub(l.since) < lease_secs) {
            return Ok(Step::Keep(None));
        }
        let next = Head { lease: Some(Lease { token: token.clone(), since: now }), ..current.clone() };
        Ok(Step::Write(next.clone(), Some(next)))
    })
    .await?;
    let Some(head) = taken else {
        return Ok(Chain { head: Some(head), closed_now: 0 });
    };

    // 2. Close day after day, from the last closing balances.
    let (genesis, through) = head_bounds(&head)?;
    let last = target.min(through + CLOSE_MAX_DAYS);
    let numbers: Vec<i64> = (through + 1..=last).collect();
    let reads = read_days(store, &numbers.iter().map(|n| day_of_number(*n)).collect::<Vec<_>>()).await?;
    let mut balances = closing_at(store, genesis, through).await?;
    let mut written: Vec<Checkpoint> = Vec::new();
    for (number, read) in numbers.iter().zip(reads) {
        if read.postings.iter().any(|(_, listed)| !matches!(listed, Listed::Applied(_) | Listed::Rejected)) {
            break;
        }
        let mut moved = Balances::new();
        let mut applied = 0;
        for (_, listed) in &read.postings {
            if let Listed::Applied(lines) = listed {
                add(&mut moved, lines);
                applied += 1;
            }
        }
        add(&mut balances, &moved);
        let key = checkpoint_key(read.day);
        let checkpoint = Checkpoint {
            v: 1,
            day: read.day,
            counts: read.counts,
            empty: read.empty,
            postings: applied,
            moved: stored_form(&key, &moved)?,
            closing: if is_month_end(*number) { Some(stored_form(&key, &balances)?) } else { None },
        };
        put_json(store, &key, &checkpoint).await?;
        written.push(checkpoint);
    }
    let closed = through + i64::try_from(written.len()).unwrap_or(0);

    // 3. Advance (unless the chain was cut back meanwhile) and give the lease back, in one write.
    let advanced = update_doc(store, &key, |current: Option<&Head>| {
        let Some(current) = current else { return Err(corrupt(&key, "the head vanished")) };
        if current.lease.as_ref().is_none_or(|l| l.token != token) {
            // The lease expired and was taken over: the new holder decides.
            return Ok(Step::Keep(None));
        }
        let mut next = Head { lease: None, ..current.clone() };
        let advance = current.epoch == head.epoch && closed > through;
        if advance {
            next.through = day_of_number(closed);
        }
        Ok(Step::Write(next.clone(), Some((next, advance))))
    })
    .await?;
    let (mut head, advance) = match advanced {
        Some(found) => found,
        None => (get_json(store, &key).await?.ok_or_else(|| corrupt(&key, "the head vanished"))?, false),
    };
    if !advance {
        return Ok(Chain { head: Some(head), closed_now: 0 });
    }

    // 4. Re-read what the closed days listed: anything new reopens its day.
    if let Some(day) = changed_since_closed(store, &written).await? {
        head = update_doc(store, &key, |current: Option<&Head>| {
            let Some(current) = current else { return Err(corrupt(&key, "the head vanished")) };
            if current.through == 0 || day > current.through {
                return Ok(Step::Keep(current.clone()));
            }
            let next = reopen(current, day, None)?;
            Ok(Step::Write(next.clone(), next))
        })
        .await?;
    }
    Ok(Chain { head: Some(head), closed_now: written.len() })
}

/// The first of the closed days whose index lists more than when it was closed (a slot taken since, or filled
/// since), if any.
async fn changed_since_closed(store: &impl Store, closed: &[Checkpoint]) -> Result<Option<u32>, LedgerError> {
    let mut keys = Vec::new();
    for checkpoint in closed {
        keys.extend(SHARDS.iter().map(|s| log_counter_key(&day_index_key(checkpoint.day, s))));
        keys.extend(checkpoint.empty.iter().map(|(shard, slot)| {
            log_slot_key(&day_index_key(checkpoint.day, SHARDS.get(*shard).copied().unwrap_or(SHARDS[0])), *slot)
        }));
    }
    let mut raws = keys.iter().zip(get_all(store, &keys).await?);
    for checkpoint in closed {
        let mut changed = false;
        for (count, (key, raw)) in checkpoint.counts.iter().zip(raws.by_ref().take(SHARDS.len())) {
            let now = counter_of(key, raw.as_deref())?.max(0);
            changed |= now != *count;
        }
        for (key, raw) in raws.by_ref().take(checkpoint.empty.len()) {
            changed |= decode_doc::<Listing>(key, raw.as_deref())?.is_some();
        }
        if changed {
            return Ok(Some(checkpoint.day));
        }
    }
    Ok(None)
}

/// Every account's closing balance at the end of day `number`, from the checkpoints (which must cover it: `number`
/// at most the head's `through`): the last month-end's closing balances plus the movements of the days since.
/// Before `genesis` nothing was posted.
async fn closing_at(store: &impl Store, genesis: i64, number: i64) -> Result<Balances, LedgerError> {
    if number < genesis {
        return Ok(Balances::new());
    }
    let month_end = if is_month_end(number) { number } else { number - i64::from(day_of_number(number) % 100) };
    let numbers: Vec<i64> = (month_end.max(genesis)..=number).collect();
    let keys: Vec<Key> = numbers.iter().map(|n| checkpoint_key(day_of_number(*n))).collect();
    let mut balances = Balances::new();
    for ((n, key), raw) in numbers.iter().zip(&keys).zip(get_all(store, &keys).await?) {
        let checkpoint: Checkpoint =
            decode_doc(key, raw.as_deref())?.ok_or_else(|| corrupt(key, "a closed day has no checkpoint"))?;
        if *n == month_end {
            let closing = checkpoint.closing.as_ref().ok_or_else(|| corrupt(key, "a month's end has no balances"))?;
            balances = widened(closing);
        } else {
            add(&mut balances, &widened(&checkpoint.moved));
        }
    }
    Ok(balances)
}

/// The indexes of `days` (`yyyymmdd`) and the postings they list, in as few round trips as the store allows: the
/// slot counters, then every slot, then every posting.
async fn read_days(store: &impl Store, days: &[u32]) -> Result<Vec<DayRead>, LedgerError> {
    let bases: Vec<Key> = days.iter().flat_map(|day| SHARDS.iter().map(move |s| day_index_key(*day, s))).collect();
    let counter_keys: Vec<Key> = bases.iter().map(log_counter_key).collect();
    let mut counts = Vec::with_capacity(bases.len());
    for (key, raw) in counter_keys.iter().zip(get_all(store, &counter_keys).await?) {
        counts.push(counter_of(key, raw.as_deref())?.max(0));
    }
    let slots: Vec<(usize, i64)> =
        counts.iter().enumerate().flat_map(|(base, count)| (1..=*count).map(move |slot| (base, slot))).collect();
    let slot_keys: Vec<Key> = slots.iter().map(|(base, slot)| log_slot_key(&bases[*base], *slot)).collect();
    let mut reads: Vec<DayRead> = days
        .iter()
        .zip(counts.chunks(SHARDS.len()))
        .map(|(day, counts)| DayRead { day: *day, counts: counts.to_vec(), empty: Vec::new(), postings: Vec::new() })
        .collect();
    let mut ids: Vec<BTreeSet<String>> = vec![BTreeSet::new(); days.len()];
    for (((base, slot), key), raw) in slots.iter().zip(&slot_keys).zip(get_all(store, &slot_keys).await?) {
        let day = base / SHARDS.len();
        match decode_doc::<Listing>(key, raw.as_deref())? {
            Some(listing) => {
                ids[day].insert(listing.id);
            }
            None => reads[day].empty.push((base % SHARDS.len(), *slot)),
        }
    }
    let posting_keys: Vec<Key> = ids.iter().flatten().map(|id| posting_key(id)).collect();
    let mut docs = posting_keys.iter().zip(get_all(store, &posting_keys).await?);
    for (read, ids) in reads.iter_mut().zip(ids) {
        for (id, (key, raw)) in ids.into_iter().zip(docs.by_ref()) {
            let listed = match decode_doc::<PostingDoc>(key, raw.as_deref())? {
                None => Listed::Missing,
                Some(doc) => match (validate(&doc.posting), doc.state) {
                    (Err(e), _) => Listed::Malformed(e.to_string()),
                    (Ok(()), State::Applied) => {
                        Listed::Applied(doc.posting.lines.iter().fold(Balances::new(), |mut nets, line| {
                            *nets.entry(line.account.clone()).or_default() += i128::from(line.amount_fen);
                            nets
                        }))
                    }
                    (Ok(()), State::Pending) => Listed::Pending,
                    (Ok(()), State::Rejected) => Listed::Rejected,
                },
            };
            read.postings.push((id, listed));
        }
    }
    Ok(reads)
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::kv::{MemStore, interleave};

    const CLEARING: &str = "gateway:clearing";
    const MARKETING: &str = "bank:marketing";
    const WALLET: &str = "customer:c_1:stored_value";

    fn at() -> Timestamp {
        Timestamp::from_unix_secs(1_763_870_400) // 2025-11-23T12:00:00+08:00
    }

    fn posting(id: &str, lines: &[(&str, i64)]) -> Posting {
        Posting {
            v: 1,
            id: id.into(),
            at: at(),
            memo: "test".into(),
            lines: lines.iter().map(|(a, f)| Line { account: (*a).into(), amount_fen: *f }).collect(),
        }
    }

    fn pay(id: &str, fen: i64) -> Posting {
        posting(id, &[(CLEARING, fen), (MARKETING, -fen)])
    }

    fn bal(store: &MemStore, account: &str) -> i64 {
        pollster::block_on(balance(store, account)).expect("balance")
    }

    fn check_today(store: &MemStore) -> CheckReport {
        pollster::block_on(check(store, &[at().shanghai_day()])).expect("check")
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
    fn validation_accepts_balanced_postings_and_refuses_malformed_ones() {
        let ok = posting("pay:o_1", &[(CLEARING, 1_000_000_000_000_000), (MARKETING, -1_000_000_000_000_000)]);
        assert_eq!(validate(&ok), Ok(()));
        let three = posting("p", &[("a", 5), ("b", -2), ("c", -3)]);
        assert_eq!(validate(&three), Ok(()));

        let unbalanced = posting("p", &[("a", 5), ("b", -4)]);
        assert_eq!(validate(&unbalanced), Err(LedgerError::Unbalanced { sum_fen: 1 }));
        let cases = [
            posting("p", &[("a", 5)]),
            posting("p", &[("a", 0), ("b", 0)]),
            posting("p", &[("a", 1_000_000_000_000_001), ("b", -1_000_000_000_000_001)]),
            posting("p", &[("a", i64::MIN), ("b", i64::MAX)]),
            posting("p", &[("a b", 5), ("b", -5)]),
            posting("p", &[(&"x".repeat(121), 5), ("b", -5)]),
            posting("p", &[("", 5), ("b", -5)]),
            posting("", &[("a", 5), ("b", -5)]),
            posting("pay/1", &[("a", 5), ("b", -5)]),
            Posting { v: 2, ..posting("p", &[("a", 5), ("b", -5)]) },
            Posting { memo: "m".repeat(501), ..posting("p", &[("a", 5), ("b", -5)]) },
        ];
        for case in &cases {
            let err = validate(case).expect_err("malformed");
            assert_eq!((err.kind(), err.code()), (ErrorKind::Invalid, "validation_failed"), "{case:?}");
        }
        assert_eq!(validate(&posting("p", &[(&"x".repeat(120), 5), ("b", -5)])), Ok(()));
        assert_eq!(LedgerError::Unbalanced { sum_fen: 1 }.code(), "ledger_unbalanced");

        // Invalid postings are refused before anything is written.
        let store = MemStore::default();
        assert!(pollster::block_on(post(&store, &unbalanced)).is_err());
        assert!(store.keys().is_empty());
    }

    #[test]
    fn posting_the_same_id_again_is_a_harmless_replay() {
        let store = MemStore::default();
        assert_eq!(pollster::block_on(post(&store, &pay("pay:o_1", 250))), Ok(PostOutcome::Applied));
        let before: Vec<_> = store.keys().into_iter().map(|k| (store.raw(&k), k)).collect();
        // A replay carrying another timestamp and memo still refers to the recorded posting.
        let replay = Posting { at: at().plus_secs(86_400 * 3), memo: "again".into(), ..pay("pay:o_1", 250) };
        assert_eq!(pollster::block_on(post(&store, &replay)), Ok(PostOutcome::AlreadyApplied));
        // It changes nothing: its creation claim (the posting is usually new) is given back at once.
        let after: Vec<_> = store.keys().into_iter().map(|k| (store.raw(&k), k)).collect();
        assert_eq!(after, before, "a replay changes nothing");
        assert_eq!((bal(&store, CLEARING), bal(&store, MARKETING)), (250, -250));
        let recorded = pollster::block_on(super::posting(&store, "pay:o_1")).expect("read").expect("recorded");
        assert_eq!(recorded.memo, "test");
        assert!(check_today(&store).balanced);
    }

    #[test]
    fn posting_the_same_id_with_other_lines_is_a_conflict() {
        let store = MemStore::default();
        pollster::block_on(post(&store, &pay("pay:o_1", 250))).expect("first");
        let err = pollster::block_on(post(&store, &pay("pay:o_1", 251))).expect_err("conflict");
        assert_eq!(err, LedgerError::Conflict { id: "pay:o_1".into() });
        assert_eq!((err.kind(), err.code()), (ErrorKind::Conflict, "posting_conflict"));
        assert_eq!((bal(&store, CLEARING), bal(&store, MARKETING)), (250, -250));
    }

    #[test]
    fn two_hundred_concurrent_postings_to_two_hot_accounts_are_exact() {
        let store = MemStore::default();
        let postings: Vec<Posting> = (1..=200).map(|i| pay(&format!("pay:o_{i}"), i)).collect();

        let results = pollster::block_on(interleave::join_all(postings.iter().map(|p| post(&store, p)).collect()));

        assert!(results.iter().all(|r| *r == Ok(PostOutcome::Applied)), "{results:?}");
        let expected: i64 = (1..=200).sum();
        assert_eq!((bal(&store, CLEARING), bal(&store, MARKETING)), (expected, -expected));
        let report = check_today(&store);
        assert!(report.balanced, "{:?}", report.discrepancies);
        assert_eq!(report.postings, 200);
        assert_eq!(report.accounts.len(), 2);
        let shards = store.keys().iter().filter(|k| k.starts_with("ledger:acct:gateway:clearing:")).count();
        assert!(shards > 8, "hot account spread over {shards} shards");
    }

    #[test]
    fn concurrent_replays_of_one_posting_apply_it_once() {
        let store = MemStore::default();
        let p = pay("pay:o_1", 99);
        let results = pollster::block_on(interleave::join_all((0..10).map(|_| post(&store, &p)).collect()));
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!((bal(&store, CLEARING), bal(&store, MARKETING)), (99, -99));
        assert!(check_today(&store).balanced);
    }

    /// Seeds a store with history, so the swept posting meets existing documents as well as new ones.
    fn seeded() -> MemStore {
        let store = MemStore::default();
        pollster::block_on(post(&store, &pay("pay:seed", 1000))).expect("seed");
        store
    }

    fn three_way() -> Posting {
        posting("pay:o_9", &[(CLEARING, 700), (MARKETING, -200), ("biller:w1:settlement", -500)])
    }

    fn assert_exact_after_three_way(store: &MemStore) {
        assert_eq!(bal(store, CLEARING), 1700);
        assert_eq!(bal(store, MARKETING), -1200);
        assert_eq!(bal(store, "biller:w1:settlement"), -500);
        let report = check_today(store);
        assert!(report.balanced, "{:?}", report.discrepancies);
        assert_eq!(report.postings, 2);
    }

    #[test]
    fn a_failed_write_at_any_point_is_completed_by_retrying_without_double_application() {
        // Count the writes of one posting, then fail each of them in turn.
        let probe = seeded();
        let before = probe.writes();
        pollster::block_on(post(&probe, &three_way())).expect("probe");
        let total = probe.writes() - before;
        assert!(total >= 10, "{total} writes");

        for n in 1..=total {
            let store = seeded();
            store.fail_write(n);
            // A failed compare-and-swap is resolved by reading back, so some failures are absorbed.
            let first = pollster::block_on(post(&store, &three_way()));
            assert!(
                matches!(first, Ok(PostOutcome::Applied) | Err(LedgerError::Store(StoreError::Injected(_)))),
                "write {n}: {first:?}"
            );
            let mut retries = 0;
            while first.is_err() && pollster::block_on(post(&store, &three_way())).is_err() {
                retries += 1;
                assert!(retries < 3, "write {n}: retries do not converge");
            }
            assert_exact_after_three_way(&store);
        }
    }

    #[test]
    fn a_crash_between_any_two_store_calls_is_completed_by_retrying() {
        // Dropping the future mid-way is what a guest killed mid-request looks like: no error, just silence.
        let mut polls = 1;
        loop {
            let store = seeded();
            let done = poll_then_drop(post(&store, &three_way()), polls).is_some();
            // A creation the crash left claimed is taken over once its lease has passed.
            store.set_now(store.now_unix_secs() + crate::kv::CREATION_LEASE_SECS + 1);
            let retried = pollster::block_on(post(&store, &three_way()));
            let expected = if done { PostOutcome::AlreadyApplied } else { PostOutcome::Applied };
            assert_eq!(retried, Ok(expected), "crash after {polls} polls");
            assert_exact_after_three_way(&store);
            if done {
                break;
            }
            polls += 1;
        }
        assert!(polls > 10, "swept {polls} crash points");
    }

    #[test]
    fn a_posting_left_half_applied_is_reported_until_completed() {
        let store = seeded();
        // Crash after the posting is recorded, indexed and partly applied.
        let polls = (1..200)
            .find(|&polls| {
                let probe = seeded();
                let _ = poll_then_drop(post(&probe, &three_way()), polls);
                probe.keys().iter().any(|k| k.starts_with("ledger:acct:biller"))
            })
            .expect("a crash point after the first balance write");
        assert!(poll_then_drop(post(&store, &three_way()), polls).is_none());

        let report = check_today(&store);
        assert!(!report.balanced);
        assert!(report.discrepancies.iter().any(|d| d.starts_with("unapplied: posting pay:o_9")), "{report:?}");

        store.set_now(store.now_unix_secs() + crate::kv::CREATION_LEASE_SECS + 1);
        pollster::block_on(post(&store, &three_way())).expect("retry");
        assert_exact_after_three_way(&store);
    }

    #[test]
    fn check_detects_a_tampered_balance() {
        let store = seeded();
        let key = store.keys().into_iter().find(|k| k.starts_with("ledger:acct:bank:marketing:")).expect("shard");
        let mut shard: BalanceShard = serde_json::from_slice(&store.raw(&key).expect("raw")).expect("decode");
        shard.balance_fen += 1;
        store.put_raw(&key, &serde_json::to_vec(&shard).expect("encode"));

        let report = check_today(&store);

        assert!(!report.balanced);
        assert_eq!(report.discrepancies.len(), 2, "{:?}", report.discrepancies);
        let marketing = report.accounts.iter().find(|a| a.account == MARKETING).expect("listed");
        assert_eq!((marketing.stored_fen, marketing.recomputed_fen), (-999, -1000));
    }

    fn top_up(id: &str, fen: i64) -> Posting {
        posting(id, &[(CLEARING, fen), (WALLET, -fen)])
    }

    fn spend(id: &str, fen: i64) -> Posting {
        posting(id, &[(WALLET, fen), ("merchant:m1:settlement", -fen)])
    }

    /// What the wallet holds (its balance is credit-normal).
    fn held(store: &MemStore) -> i64 {
        -bal(store, WALLET)
    }

    #[test]
    fn a_stored_value_account_never_pays_out_more_than_it_holds_and_a_refusal_applies_nothing() {
        let store = MemStore::default();
        pollster::block_on(post(&store, &top_up("topup:1", 500))).expect("top up");

        let err = pollster::block_on(post(&store, &spend("spend:1", 600))).expect_err("refused");

        let expected = LedgerError::InsufficientFunds { account: WALLET.into(), balance_fen: 500, needed_fen: 600 };
        assert_eq!(err, expected);
        assert_eq!((err.kind(), err.code()), (ErrorKind::Unprocessable, "insufficient_funds"));
        assert_eq!((held(&store), bal(&store, "merchant:m1:settlement")), (500, 0));
        // The refusal is final for this id, even once funds arrive.
        pollster::block_on(post(&store, &top_up("topup:2", 500))).expect("top up");
        assert_eq!(pollster::block_on(post(&store, &spend("spend:1", 600))), Err(expected));
        assert_eq!(pollster::block_on(post(&store, &spend("spend:2", 600))), Ok(PostOutcome::Applied));
        assert_eq!((held(&store), bal(&store, "merchant:m1:settlement")), (400, -600));
        let report = check_today(&store);
        assert!(report.balanced, "{:?}", report.discrepancies);
        assert_eq!(report.postings, 4);
        // The wallet lives on shard 0 only, credits included.
        let shards =
            store.keys().into_iter().filter(|k| k.starts_with("ledger:acct:customer:") && !k.ends_with("~born"));
        assert!(shards.clone().count() > 0 && shards.into_iter().all(|k| k.ends_with(":0")));
    }

    #[test]
    fn concurrent_spends_never_overdraw_a_stored_value_account() {
        let store = MemStore::default();
        pollster::block_on(post(&store, &top_up("topup:1", 500))).expect("top up");
        let spends: Vec<Posting> = (0..20).map(|i| spend(&format!("spend:{i}"), 100)).collect();

        let results = pollster::block_on(interleave::join_all(spends.iter().map(|p| post(&store, p)).collect()));

        let ok = results.iter().filter(|r| r.is_ok()).count();
        let refused = results.iter().filter(|r| matches!(r, Err(LedgerError::InsufficientFunds { .. }))).count();
        assert_eq!((ok, refused), (5, 15), "{results:?}");
        assert_eq!((held(&store), bal(&store, "merchant:m1:settlement")), (0, -500));
        assert!(check_today(&store).balanced);
    }

    #[test]
    fn two_hundred_concurrent_spends_fold_through_the_queue_and_let_exactly_what_is_held_through() {
        let store = MemStore::default();
        pollster::block_on(post(&store, &top_up("topup:1", 5_000))).expect("top up");
        let spends: Vec<Posting> = (0..200).map(|i| spend(&format!("spend:{i}"), 100)).collect();

        let results = pollster::block_on(interleave::join_all(spends.iter().map(|p| post(&store, p)).collect()));

        let ok = results.iter().filter(|r| r.is_ok()).count();
        let refused = results.iter().filter(|r| matches!(r, Err(LedgerError::InsufficientFunds { .. }))).count();
        assert_eq!((ok, refused), (50, 150), "{results:?}");
        assert_eq!((held(&store), bal(&store, "merchant:m1:settlement")), (0, -5_000));
        // The contended lines went through the wallet's queue, not a swap each.
        let slots = format!("{}:", queue_key(WALLET).child(&["s"]));
        assert!(store.keys().iter().any(|k| k.starts_with(&slots)));
        let report = check_today(&store);
        assert!(report.balanced, "{:?}", report.discrepancies);
    }

    #[test]
    fn a_queued_line_whose_writer_died_is_applied_once_and_an_empty_slot_does_not_block_the_queue() {
        let store = MemStore::default();
        pollster::block_on(post(&store, &top_up("topup:1", 1_000))).expect("top up");
        let queue = queue_key(WALLET);
        // A writer recorded spend:dead, queued its line and died; another took a slot and died before writing it.
        let dead = spend("spend:dead", 100);
        pollster::block_on(async {
            let key = posting_key(&dead.id);
            update_doc(&store, &key, |_: Option<&PostingDoc>| {
                let doc = PostingDoc {
                    posting: dead.clone(),
                    state: State::Pending,
                    floored: Some(WALLET.into()),
                    rejection: None,
                };
                Ok::<_, LedgerError>(Step::Write(doc, ()))
            })
            .await
            .expect("record");
            enqueue(&store, &queue, &Queued { v: 1, id: dead.id.clone(), net: 100, floor: true }).await.expect("queue");
            store.increment(&log_counter_key(&queue), 1).await.expect("empty slot");
        });
        let spends: Vec<Posting> = (0..30).map(|i| spend(&format!("spend:{i}"), 10)).collect();

        let results = pollster::block_on(interleave::join_all(spends.iter().map(|p| post(&store, p)).collect()));
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        // The dead writer's retry finds its line applied (folded by the others) or applies it now: once either way.
        let retried = pollster::block_on(post(&store, &dead)).expect("retry");
        assert_eq!(retried, PostOutcome::Applied);
        assert_eq!(pollster::block_on(post(&store, &dead)), Ok(PostOutcome::AlreadyApplied));

        assert_eq!((held(&store), bal(&store, "merchant:m1:settlement")), (600, -400));
        let report = check_today(&store);
        assert!(report.balanced, "{:?}", report.discrepancies);
        let shard: BalanceShard = pollster::block_on(crate::kv::get_json(&store, &balance_key(WALLET, FLOOR_SHARD)))
            .expect("read")
            .expect("shard");
        assert_eq!(shard.recent.iter().filter(|id| *id == "spend:dead").count(), 1);
        assert!(shard.through >= 2, "the concurrent spends queued too: {shard:?}");
        assert_eq!(shard.skipped, vec![2], "the empty slot was folded past");
    }

    #[test]
    fn a_transfer_between_stored_value_accounts_is_checked_on_the_debited_one() {
        const OTHER: &str = "customer:c_2:stored_value";
        let store = MemStore::default();
        pollster::block_on(post(&store, &top_up("topup:1", 300))).expect("top up");
        let transfer = |id: &str, fen: i64| posting(id, &[(WALLET, fen), (OTHER, -fen)]);

        let err = pollster::block_on(post(&store, &transfer("move:1", 301))).expect_err("more than held");
        assert_eq!(err.code(), "insufficient_funds");
        pollster::block_on(post(&store, &transfer("move:2", 300))).expect("moved");

        assert_eq!((held(&store), -bal(&store, OTHER)), (0, 300));
        let two_debits = posting("bad:1", &[(WALLET, 1), (OTHER, 1), (CLEARING, -2)]);
        assert_eq!(pollster::block_on(post(&store, &two_debits)).map_err(|e| e.code()), Err("validation_failed"));
        assert!(check_today(&store).balanced);
    }

    #[test]
    fn a_document_created_by_a_racer_after_our_read_is_updated_not_overwritten() {
        let store = MemStore::default();
        let key = Key::new(&["ledger", "test"]);
        let mut seen = Vec::new();

        let result = pollster::block_on(update_doc(&store, &key, |doc: Option<&IdSet>| {
            seen.push(doc.map(|d| d.ids.len()));
            if doc.is_none() {
                // A racer claims and creates the document between our read and our creation attempt.
                let racer = IdSet { v: 1, ids: ["racer".to_owned()].into() };
                store.put_raw("ledger:test:~born", &(store.now_unix_secs() << 20).to_le_bytes());
                store.put_raw(key.as_str(), &serde_json::to_vec(&racer).expect("encode"));
            }
            let mut next = doc.cloned().unwrap_or(IdSet { v: 1, ids: BTreeSet::new() });
            next.ids.insert("ours".into());
            Ok::<_, StoreError>(Step::Write(next, ()))
        }));

        assert_eq!(result, Ok(()));
        assert_eq!(seen, [None, Some(1)], "retried against the racer's document");
        let doc: IdSet = serde_json::from_slice(&store.raw("ledger:test").expect("written")).expect("json");
        assert_eq!(doc.ids.into_iter().collect::<Vec<_>>(), ["ours", "racer"]);
    }

    #[test]
    fn documents_being_created_read_as_absent_and_are_completed_by_the_next_writer() {
        let store = MemStore::default();
        let key = Key::new(&["ledger", "test"]);
        // A creator died after turning the absent key into the creation marker.
        pollster::block_on(store.increment(&key, 0)).expect("marker");
        assert!(matches!(decode_doc::<IdSet>(&key, store.raw("ledger:test").as_deref()), Ok(None)));

        pollster::block_on(add_to_set(&store, &key, "x")).expect("completed");

        let doc: IdSet = serde_json::from_slice(&store.raw("ledger:test").expect("written")).expect("json");
        assert_eq!(doc.ids.into_iter().collect::<Vec<_>>(), ["x"]);
    }

    // -----------------------------------------------------------------------------------------------------------
    // Checkpoints

    /// Day 0 of the checkpoint tests (2025-11-23).
    fn d0() -> i64 {
        at().shanghai_day_number()
    }

    /// `pay` dated `day` days after day 0.
    fn pay_on(id: &str, day: i64, fen: i64) -> Posting {
        Posting { at: at().plus_days(day), ..pay(id, fen) }
    }

    /// A store with `pay_on(id, day, fen)` posted for each of `payments`.
    fn paid(payments: &[(&str, i64, i64)]) -> MemStore {
        let store = MemStore::default();
        for (id, day, fen) in payments {
            pollster::block_on(post(&store, &pay_on(id, *day, *fen))).expect("post");
        }
        store
    }

    /// The check of days `from..=to` (after day 0) as of day `today`.
    fn check_on(store: &MemStore, from: i64, to: i64, today: i64) -> CheckReport {
        pollster::block_on(check_days(store, d0() + from, d0() + to, d0() + today)).expect("check")
    }

    fn account<'a>(report: &'a CheckReport, name: &str) -> &'a AccountCheck {
        report.accounts.iter().find(|a| a.account == name).unwrap_or_else(|| panic!("no {name}: {report:?}"))
    }

    fn date(day: i64) -> String {
        iso_day(day_of_number(d0() + day))
    }

    fn head(store: &MemStore) -> Head {
        pollster::block_on(get_json(store, &head_key())).expect("read").expect("head")
    }

    #[test]
    fn day_numbers_and_dates_convert_both_ways_and_month_ends_are_found() {
        for n in [d0(), d0() + 400, 0, 20_000] {
            assert_eq!(number_of_day(day_of_number(n)), Some(n));
        }
        assert_eq!(day_of_number(d0()), 20251123);
        assert_eq!((number_of_day(20250230), number_of_day(20251301), number_of_day(0)), (None, None, None));
        assert!(is_month_end(number_of_day(20251130).expect("date")));
        assert!(is_month_end(number_of_day(20240229).expect("leap day")));
        assert!(!is_month_end(number_of_day(20251129).expect("date")));
        assert_eq!(iso_day(20251123), "2025-11-23");
    }

    #[test]
    fn a_check_of_the_last_month_is_exact_when_postings_are_years_apart() {
        // Arrange: go-live, 40 days later (outside the month checked) and 400 days later (more than a year).
        let store = paid(&[("pay:a", 0, 100), ("pay:b", 40, 200), ("pay:c", 400, 400)]);

        // Act: the default range, twice (the first closes 366 days, the second the rest).
        let first = check_on(&store, 370, 400, 400);
        let second = check_on(&store, 370, 400, 400);
        let third = check_on(&store, 370, 400, 400);

        // Assert
        for report in [&first, &second, &third] {
            assert!(report.balanced, "{:?}", report.discrepancies);
            assert_eq!(report.postings, 1);
            let clearing = account(report, CLEARING);
            assert_eq!((clearing.stored_fen, clearing.recomputed_fen), (700, 700));
            assert_eq!((clearing.opening_fen, clearing.movement_fen), (300, 400));
        }
        assert_eq!((first.days_closed, second.days_closed, third.days_closed), (366, 32, 0));
        assert_eq!(first.closed_through, Some(date(365)));
        assert_eq!(third.closed_through, Some(date(400 - SETTLE_DAYS - 1)));
        // A month's last day holds every balance, other days their movements only.
        let month_end: Checkpoint =
            pollster::block_on(get_json(&store, &checkpoint_key(20251130))).expect("r").expect("c");
        let closing = month_end.closing.expect("closing balances");
        assert_eq!((closing.get(CLEARING), closing.get(MARKETING)), (Some(&100), Some(&-100)));
        let day_0: Checkpoint = pollster::block_on(get_json(&store, &checkpoint_key(20251123))).expect("r").expect("c");
        assert_eq!((day_0.postings, day_0.moved.get(CLEARING), day_0.closing), (1, Some(&100), None));
    }

    #[test]
    fn a_past_range_compares_its_opening_and_postings_with_the_closing_its_checkpoints_recorded() {
        let store = paid(&[("pay:a", 0, 100), ("pay:b", 5, 200), ("pay:c", 40, 400)]);
        let report = check_on(&store, 3, 10, 60);
        assert!(report.balanced, "{:?}", report.discrepancies);
        let clearing = account(&report, CLEARING);
        assert_eq!((clearing.opening_fen, clearing.movement_fen, clearing.recomputed_fen), (100, 200, 700));

        // Someone rewrites a closed day's posting (balanced, so only the checkpoints can tell).
        let key = posting_key("pay:b");
        let mut doc: PostingDoc = serde_json::from_slice(&store.raw(key.as_str()).expect("raw")).expect("doc");
        doc.posting.lines = pay("pay:b", 250).lines;
        store.put_raw(key.as_str(), &serde_json::to_vec(&doc).expect("json"));

        let report = check_on(&store, 3, 10, 60);

        assert!(!report.balanced);
        let about_clearing = report.discrepancies.iter().filter(|d| d.contains(CLEARING)).count();
        assert_eq!(about_clearing, 1, "{:?}", report.discrepancies);
        let about_clearing = report.discrepancies.iter().find(|d| d.contains(CLEARING)).expect("clearing");
        assert!(about_clearing.contains("checkpoint closes 2025-12-03 at 300 fen"), "{about_clearing}");
    }

    #[test]
    fn a_late_posting_for_a_closed_day_reopens_it_and_the_check_stays_exact() {
        let store = paid(&[("pay:a", 0, 100)]);
        assert!(check_on(&store, 0, 10, 10).balanced);
        assert_eq!(head(&store).through, day_of_number(d0() + 7));

        // Arrive late for day 3.
        pollster::block_on(post(&store, &pay_on("pay:late", 3, 50))).expect("post");

        assert_eq!(head(&store).through, day_of_number(d0() + 2), "day 3 and later reopened");
        let report = check_on(&store, 5, 10, 10);
        assert!(report.balanced, "{:?}", report.discrepancies);
        assert_eq!(account(&report, CLEARING).opening_fen, 150);
        assert_eq!(report.reopened, vec![Reopened { day: date(3), posting_id: Some("pay:late".into()) }]);
        assert_eq!((report.days_closed, report.closed_through), (5, Some(date(7))));
    }

    #[test]
    fn a_posting_dated_before_go_live_moves_the_start_of_the_chain_back() {
        let store = paid(&[("pay:a", 10, 100)]);
        assert!(check_on(&store, 10, 20, 20).balanced);

        pollster::block_on(post(&store, &pay_on("pay:early", 0, 30))).expect("post");

        assert_eq!((head(&store).genesis, head(&store).through), (day_of_number(d0()), 0));
        let report = check_on(&store, 15, 20, 20);
        assert!(report.balanced, "{:?}", report.discrepancies);
        assert_eq!(account(&report, CLEARING).opening_fen, 130);
        assert_eq!(report.reopened[0].day, date(0));
    }

    #[test]
    fn a_pending_posting_holds_the_chain_before_its_day_until_it_is_completed() {
        let store = paid(&[("pay:a", 0, 100)]);
        // Crash once the posting of day 2 is listed and partly applied.
        let half = Posting { at: at().plus_days(2), ..three_way() };
        let polls = (1..300)
            .find(|&polls| {
                let probe = paid(&[("pay:a", 0, 100)]);
                let _ = poll_then_drop(post(&probe, &half), polls);
                probe.keys().iter().any(|k| k.starts_with("ledger:acct:biller"))
            })
            .expect("a crash point after a balance write");
        assert!(poll_then_drop(post(&store, &half), polls).is_none());

        let report = check_on(&store, 0, 10, 10);

        assert!(!report.balanced);
        assert!(report.discrepancies.iter().any(|d| d.starts_with("unapplied: posting pay:o_9")), "{report:?}");
        assert_eq!(report.closed_through, Some(date(1)), "closing stops before the pending posting's day");

        store.set_now(store.now_unix_secs() + crate::kv::CREATION_LEASE_SECS + 1);
        pollster::block_on(post(&store, &half)).expect("completed");
        let report = check_on(&store, 0, 10, 10);
        assert!(report.balanced, "{:?}", report.discrepancies);
        assert_eq!(report.closed_through, Some(date(7)));
        assert_eq!(account(&report, CLEARING).recomputed_fen, 800);
    }

    #[test]
    fn postings_racing_a_closing_check_are_never_lost_from_the_chain() {
        // Whatever the interleaving of a closing check and postings into the days it closes, the next check of a
        // later month balances from the chain alone.
        for offset in 0..40 {
            let store = paid(&[("pay:a", 0, 100)]);
            let racers: Vec<Posting> = (1..=4).map(|i| pay_on(&format!("pay:r{i}"), i, 10 * i)).collect();
            let check = async {
                for _ in 0..offset {
                    crate::kv::yield_now().await;
                }
                check_days(&store, d0(), d0() + 10, d0() + 10).await.map(|_| ())
            };
            let posts = interleave::join_all(racers.iter().map(|p| post(&store, p)).collect());
            let (checked, posted) = pollster::block_on(interleave::join2(check, posts));
            checked.expect("check");
            assert!(posted.iter().all(Result::is_ok), "{posted:?}");

            let report = check_on(&store, 40, 50, 50);

            assert!(report.balanced, "offset {offset}: {:?}", report.discrepancies);
            assert_eq!(account(&report, CLEARING).opening_fen, 200, "offset {offset}");
        }
    }

    #[test]
    fn a_check_finding_another_closer_at_work_closes_nothing_and_stays_exact() {
        let store = paid(&[("pay:a", 0, 100)]);
        let mut held = head(&store);
        held.lease = Some(Lease { token: "other".into(), since: store.now_unix_secs() });
        pollster::block_on(put_json(&store, &head_key(), &held)).expect("lease");

        let report = check_on(&store, 20, 30, 30);
        assert!(report.balanced, "{:?}", report.discrepancies);
        assert_eq!((report.days_closed, report.closed_through.clone()), (0, None));
        assert_eq!(account(&report, CLEARING).opening_fen, 100);

        // Once the lease has run out, the next check takes it over.
        store.set_now(store.now_unix_secs() + crate::kv::CREATION_LEASE_SECS);
        let report = check_on(&store, 20, 30, 30);
        assert!(report.balanced, "{:?}", report.discrepancies);
        assert_eq!(report.closed_through, Some(date(27)));
        assert_eq!(head(&store).lease, None);
    }

    #[test]
    fn check_refuses_an_empty_or_inverted_range() {
        let store = MemStore::default();
        assert_eq!(pollster::block_on(check(&store, &[])).map_err(|e| e.code()), Err("validation_failed"));
        assert_eq!(pollster::block_on(check(&store, &[20251301])).map_err(|e| e.code()), Err("validation_failed"));
        let inverted = pollster::block_on(check_days(&store, d0() + 1, d0(), d0() + 1));
        assert_eq!(inverted.map_err(|e| e.code()), Err("validation_failed"));
        assert!(store.keys().is_empty(), "refusals write nothing");
    }

    #[test]
    fn a_check_of_an_empty_ledger_reads_only_its_range_however_old() {
        // Year 14 to 2026 is ~735,000 days: reading them all ran the component out of memory.
        let store = MemStore::default();
        let (from, to) = (number_of_day(140_101).expect("day"), number_of_day(140_421).expect("day"));
        let report = pollster::block_on(check_days(&store, from, to, d0())).expect("check");
        assert!(report.balanced, "{:?}", report.discrepancies);
        assert_eq!(report.postings, 0);
    }
}
