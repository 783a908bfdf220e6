//! Bills uploaded by billers, and the household accounts they belong to.
//!
//! A bill is keyed by the biller's own `bill_id` (unique per biller, so an upload is idempotent per bill); a paid
//! bill is never overwritten. Re-uploading an open bill with another amount or due date makes a new `version`: an
//! order placed for the old one is no longer payable (its payment becomes an exception to refund).
//!
//! A bill is held by at most one open order (`hold`, until that order's payment window closes, or at once when its
//! payment fails), so one bill cannot be paid twice from two phones. Payments toward a bill add up in `paid_fen`
//! (partial payments to `exact_down` billers reduce what is due); it is `paid` once they cover its amount. The account document (`util:acct:{biller}:{hash(account_no)}`) is the index of an
//! account's bills, so lookups never list the store.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::mask_name;
use scenefin_core::holds::{Hold, Holdable};
use scenefin_core::ids::Id;
use scenefin_core::kv::{self, Step, Store, get_json};
use serde::{Deserialize, Serialize};

use crate::billers::Biller;
use crate::{UtilityError, keys};

/// Most bills in one upload.
pub const MAX_UPLOAD: usize = 1000;
/// Most bills an account index keeps (oldest paid ones drop out first).
pub const MAX_BILLS_PER_ACCOUNT: usize = 200;

/// Bill state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillStatus {
    /// Due.
    Open,
    /// Paid through us.
    Paid,
}

/// A bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bill {
    /// Schema version.
    pub v: u32,
    /// The biller's id for it.
    pub bill_id: String,
    /// Biller.
    pub biller_id: String,
    /// Account number.
    pub account_no: String,
    /// Billing period, e.g. `2026-10`.
    pub period: String,
    /// Amount.
    pub amount_fen: i64,
    /// Due date `YYYY-MM-DD`.
    pub due_date: String,
    /// State.
    pub status: BillStatus,
    /// The order that paid it.
    #[serde(default)]
    pub paid_by: Option<String>,
    /// Orders that paid it after it was already paid (bills of before holds; the biller reconciles these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicate_payments: Vec<String>,
    /// Last change.
    pub updated_at: Timestamp,
    /// Changes with every re-upload that changes amount or due date (1 for the first upload).
    #[serde(default = "first_version")]
    pub version: u32,
    /// Paid toward it through us so far.
    #[serde(default)]
    pub paid_fen: i64,
    /// The orders whose payments `paid_fen` counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<String>,
    /// The open order holding it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
}

fn first_version() -> u32 {
    1
}

impl Bill {
    /// What is still due.
    pub fn due_fen(&self) -> i64 {
        (self.amount_fen - self.paid_fen).max(0)
    }
}

impl Holdable for Bill {
    fn hold(&self) -> Option<&Hold> {
        self.hold.as_ref()
    }
    fn set_hold(&mut self, hold: Option<Hold>) {
        self.hold = hold;
    }
}

/// A household account, as the biller reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Schema version.
    pub v: u32,
    /// Biller.
    pub biller_id: String,
    /// Account number.
    pub account_no: String,
    /// Holder name, masked (`王*`): the full name is never stored, and the mask is all anyone is shown.
    pub holder_name: String,
    /// Bill ids, oldest first.
    pub bills: Vec<String>,
}

/// One bill in an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillInput {
    /// The biller's id.
    pub bill_id: String,
    /// Account number.
    pub account_no: String,
    /// Period.
    pub period: String,
    /// Amount.
    pub amount_fen: i64,
    /// Due date `YYYY-MM-DD`.
    pub due_date: String,
    /// Holder name.
    pub holder_name: String,
}

/// What happened to each uploaded bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadResult {
    /// New bills.
    pub created: usize,
    /// Open bills replaced or re-sent unchanged.
    pub updated: usize,
    /// Bills refused, with the reason.
    pub rejected: Vec<Rejected>,
}

/// A refused bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Bill id.
    pub bill_id: String,
    /// Stable reason code (`bill_paid`).
    pub code: String,
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && s.bytes().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && (1..=12).contains(&s[5..7].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&s[8..10].parse::<u32>().unwrap_or(0))
}

/// Validates an upload (pure): all or nothing, with the index of the first bad bill in the field.
pub fn validate(biller: &Biller, bills: &[BillInput]) -> Result<(), UtilityError> {
    if bills.is_empty() || bills.len() > MAX_UPLOAD {
        return Err(UtilityError::invalid("bills", format!("1 to {MAX_UPLOAD} bills")));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, b) in bills.iter().enumerate() {
        let field = |name: &str| format!("bills[{i}].{name}");
        Id::parse(&b.bill_id).map_err(|_| UtilityError::invalid(&field("bill_id"), "1 to 64 of [A-Za-z0-9_-]"))?;
        if !seen.insert(b.bill_id.as_str()) {
            return Err(UtilityError::invalid(&field("bill_id"), "appears twice in this upload"));
        }
        biller.account_rule.check(&b.account_no).map_err(|e| match e {
            UtilityError::BadAccountNumber { rule, .. } => {
                UtilityError::BadAccountNumber { field: field("account_no"), rule }
            }
            other => other,
        })?;
        if b.amount_fen <= 0 || b.amount_fen > 100_000_000 {
            return Err(UtilityError::invalid(&field("amount_fen"), "1 to 100000000"));
        }
        if b.period.is_empty()
            || b.period.len() > 16
            || !b.period.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            return Err(UtilityError::invalid(&field("period"), "1 to 16 of [A-Za-z0-9-]"));
        }
        if !is_date(&b.due_date) {
            return Err(UtilityError::invalid(&field("due_date"), "YYYY-MM-DD"));
        }
        let name = b.holder_name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(UtilityError::invalid(&field("holder_name"), "1 to 64 characters"));
        }
    }
    Ok(())
}

enum Outcome {
    Created,
    Updated,
    Paid,
}

/// Stores an upload. Idempotent per bill id; paid bills are left as they are and reported.
pub async fn upload(
    store: &impl Store,
    biller: &Biller,
    bills: &[BillInput],
    now: Timestamp,
) -> Result<UploadResult, UtilityError> {
    validate(biller, bills)?;
    let mut result = UploadResult { created: 0, updated: 0, rejected: Vec::new() };
    for input in bills {
        let outcome = kv::update_json(store, &keys::bill(&biller.id, &input.bill_id), |current: Option<&Bill>| {
            if let Some(c) = current
                && c.status == BillStatus::Paid
            {
                return Ok::<_, UtilityError>(Step::Keep(Outcome::Paid));
            }
            // Another amount or due date is a new version of the bill: an order for the old one cannot pay it, so
            // its hold goes too and the customer can pay the new amount at once.
            let changed = current.is_some_and(|c| c.amount_fen != input.amount_fen || c.due_date != input.due_date);
            let version = current.map_or(1, |c| c.version + u32::from(changed));
            let bill = Bill {
                v: 1,
                bill_id: input.bill_id.clone(),
                biller_id: biller.id.clone(),
                account_no: input.account_no.clone(),
                period: input.period.clone(),
                amount_fen: input.amount_fen,
                due_date: input.due_date.clone(),
                status: BillStatus::Open,
                paid_by: None,
                duplicate_payments: current.map(|c| c.duplicate_payments.clone()).unwrap_or_default(),
                updated_at: current.map_or(now, |c| c.updated_at),
                version,
                paid_fen: current.map_or(0, |c| c.paid_fen),
                applied: current.map(|c| c.applied.clone()).unwrap_or_default(),
                hold: current.and_then(|c| c.hold.clone()).filter(|_| !changed),
            };
            if current == Some(&bill) {
                return Ok(Step::Keep(Outcome::Updated));
            }
            let outcome = if current.is_some() { Outcome::Updated } else { Outcome::Created };
            Ok(Step::Write(Bill { updated_at: now, ..bill }, outcome))
        })
        .await?;
        match outcome {
            Outcome::Paid => {
                result.rejected.push(Rejected { bill_id: input.bill_id.clone(), code: "bill_paid".into() });
                continue;
            }
            Outcome::Updated => result.updated += 1,
            Outcome::Created => result.created += 1,
        }
        // Index the bill under its account (idempotent), with the holder's name masked.
        let holder = mask_name(input.holder_name.trim());
        kv::update_json(store, &keys::account(&biller.id, &input.account_no), |current: Option<&Account>| {
            let mut acct = current.cloned().unwrap_or(Account {
                v: 1,
                biller_id: biller.id.clone(),
                account_no: input.account_no.clone(),
                holder_name: holder.clone(),
                bills: Vec::new(),
            });
            let changed_name = acct.holder_name != holder;
            if acct.bills.contains(&input.bill_id) && !changed_name && current.is_some() {
                return Ok::<_, UtilityError>(Step::Keep(()));
            }
            acct.holder_name.clone_from(&holder);
            if !acct.bills.contains(&input.bill_id) {
                acct.bills.push(input.bill_id.clone());
                let excess = acct.bills.len().saturating_sub(MAX_BILLS_PER_ACCOUNT);
                acct.bills.drain(..excess);
            }
            Ok(Step::Write(acct, ()))
        })
        .await?;
    }
    Ok(result)
}

/// The account, or `no_such_account`.
pub async fn account(store: &impl Store, biller: &Biller, account_no: &str) -> Result<Account, UtilityError> {
    biller.account_rule.check(account_no)?;
    get_json(store, &keys::account(&biller.id, account_no)).await?.ok_or(UtilityError::NoSuchAccount)
}

/// All bills of an account (open and paid), oldest first.
pub async fn bills_of(store: &impl Store, account: &Account) -> Result<Vec<Bill>, UtilityError> {
    let keys: Vec<_> = account.bills.iter().map(|id| keys::bill(&account.biller_id, id)).collect();
    let mut out = Vec::with_capacity(keys.len());
    for (key, bytes) in keys.iter().zip(scenefin_core::kv::get_all(store, &keys).await?) {
        out.extend(scenefin_core::kv::decode_doc::<Bill>(key, bytes.as_deref())?);
    }
    Ok(out)
}

/// Open bills of an account: empty means "nothing due", which is not an error.
pub async fn open_bills(store: &impl Store, biller: &Biller, account_no: &str) -> Result<Vec<Bill>, UtilityError> {
    let acct = account(store, biller, account_no).await?;
    Ok(bills_of(store, &acct).await?.into_iter().filter(|b| b.status == BillStatus::Open).collect())
}
