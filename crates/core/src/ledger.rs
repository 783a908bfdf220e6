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
//!
//! Invariants:
//! 1. Every stored posting balances (its lines sum to zero), so the balances of all accounts sum to zero.
//! 2. A line is applied at most once (dedupe in the shard's CAS) and, once `post` has returned `Ok`, exactly once.
//! 3. A stored-value account (name ending in [`STORED_VALUE_SUFFIX`]: money the bank holds for a customer, a
//!    credit-normal liability) never goes above zero, i.e. never pays out more than it holds. It lives on shard `0`
//!    alone, so its whole balance is one document and the check is part of the CAS that applies its line. The rule
//!    follows from the name, so no caller can post to such an account without it.
//!
//! `post` is a chain of idempotent steps (record, index, register accounts, apply lines, mark applied), so re-running
//! it after a failure at any point completes the posting without applying anything twice. That holds only while the
//! posting's id is still in the `recent` window (the newest 1000 postings of the shard): a posting left
//! `pending` by a crash must be retried before a thousand more postings land on the same account shard. [`check`]
//! lists pending postings as `unapplied`.
//!
//! Documents are created and updated with [`crate::kv::update_json`], whose creation survives a crash at any point.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::hash_key_part;
use crate::kv::{
    Key, Retries, Step, Store, StoreError, Tried, decode_doc, get_all, log_counter_key, log_slot_key, put_json,
    read_counter, try_update_json, update_json as update_doc,
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
    /// The sum of its lines in the applied postings checked.
    pub recomputed_fen: i64,
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// No discrepancy found.
    pub balanced: bool,
    /// Postings listed in the day indexes checked.
    pub postings: usize,
    /// Every registered or touched account, with stored and recomputed balances.
    pub accounts: Vec<AccountCheck>,
    /// What is wrong, one sentence each.
    pub discrepancies: Vec<String>,
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

/// Audits the postings of the given Shanghai days (`yyyymmdd`) against the stored balances.
///
/// Verifies that every listed posting exists, balances and is `applied` (a `pending` one is reported `unapplied`:
/// re-running `post` completes it), that each account's stored balance equals the sum of its lines in the applied
/// postings, and that the stored balances of all registered accounts sum to zero.
///
/// Balances hold every posting ever applied, so the comparison is only meaningful when `days` covers every day
/// since go-live: that call is the full proof of the ledger. A shorter list reports accounts with older postings
/// as mismatched.
pub async fn check(store: &impl Store, days: &[u32]) -> Result<CheckReport, LedgerError> {
    let mut discrepancies = Vec::new();

    let index_keys: Vec<Key> = days.iter().flat_map(|day| SHARDS.iter().map(move |s| day_index_key(*day, s))).collect();
    let ids: BTreeSet<String> = crate::kv::read_logs(store, &index_keys).await?.into_iter().flatten().collect();

    let ids: Vec<String> = ids.into_iter().collect();
    let posting_keys: Vec<Key> = ids.iter().map(|id| posting_key(id)).collect();
    let mut recomputed: BTreeMap<String, i128> = BTreeMap::new();
    for ((id, key), raw) in ids.iter().zip(&posting_keys).zip(get_all(store, &posting_keys).await?) {
        let Some(doc) = decode_doc::<PostingDoc>(key, raw.as_deref())? else {
            discrepancies.push(format!("posting {id} is listed in a day index but missing"));
            continue;
        };
        if let Err(e) = validate(&doc.posting) {
            discrepancies.push(format!("posting {id} is malformed: {e}"));
            continue;
        }
        match doc.state {
            State::Applied => {
                for line in &doc.posting.lines {
                    *recomputed.entry(line.account.clone()).or_default() += i128::from(line.amount_fen);
                }
            }
            State::Pending => discrepancies.push(format!("unapplied: posting {id} is still pending")),
            // A rejected posting applied nothing: its stored-value line was refused before any other line.
            State::Rejected => {}
        }
    }
    // Paired with the assertion in `post`: postings that validate sum to zero, so their lines do too.
    debug_assert_eq!(recomputed.values().sum::<i128>(), 0, "applied postings must sum to zero");

    let registered = registered_accounts(store).await?;
    for account in recomputed.keys().filter(|a| !registered.contains(*a)) {
        discrepancies.push(format!("account {account} has applied postings but is not in the account index"));
    }
    let names: Vec<String> = registered.union(&recomputed.keys().cloned().collect()).cloned().collect();
    let stored = balances(store, &names).await?;
    let mut accounts = Vec::with_capacity(names.len());
    let mut total: i128 = 0;
    for (account, stored_fen) in names.into_iter().zip(stored) {
        let recomputed_fen = recomputed.get(&account).copied().unwrap_or(0);
        if i128::from(stored_fen) != recomputed_fen {
            discrepancies.push(format!("account {account}: stored {stored_fen} fen, postings sum to {recomputed_fen}"));
        }
        total += i128::from(stored_fen);
        let recomputed_fen =
            i64::try_from(recomputed_fen).unwrap_or(if recomputed_fen < 0 { i64::MIN } else { i64::MAX });
        accounts.push(AccountCheck { account, stored_fen, recomputed_fen });
    }
    if total != 0 {
        discrepancies.push(format!("stored balances of all accounts sum to {total} fen, not zero"));
    }

    Ok(CheckReport { balanced: discrepancies.is_empty(), postings: ids.len(), accounts, discrepancies })
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
    let recorded = update_doc(store, &key, |doc: Option<&PostingDoc>| match doc {
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
    let day_key = day_index_key(stored.at.shanghai_day(), shard_of(id));
    crate::kv::append_to_log(store, &day_key, id).await?;

    // 3. Register the accounts before touching their balances, so `check` sees every account that has one.
    let nets = nets(&stored.lines)?;
    for account in nets.keys() {
        add_to_set(store, &accounts_key(shard_of(account)), account).await?;
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
        let writes = store.writes();
        // A replay carrying another timestamp and memo still refers to the recorded posting.
        let replay = Posting { at: at().plus_secs(86_400 * 3), memo: "again".into(), ..pay("pay:o_1", 250) };
        assert_eq!(pollster::block_on(post(&store, &replay)), Ok(PostOutcome::AlreadyApplied));
        assert_eq!(store.writes(), writes, "a replay writes nothing");
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
        assert!(store.keys().iter().any(|k| k.starts_with(&format!("ledger:svq:{WALLET}:s:"))));
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
}
