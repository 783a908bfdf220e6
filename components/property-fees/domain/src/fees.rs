//! Fee bills and what accrues on them: late fees, and which bills must be paid together (`relate_id`).

use scenefin_core::clock::Timestamp;
use scenefin_core::holds::{Hold, Holdable};
use scenefin_core::kv::{self, Step, Store, get_json};
use serde::{Deserialize, Serialize};

use crate::communities::{Community, LateFee, id};
use crate::{PropertyError, keys};

/// Most bills in one upload.
pub const MAX_UPLOAD: usize = 1000;
/// Kinds of fees.
pub const COST_TYPES: &[&str] = &["property", "parking", "water_share", "elevator", "other"];

/// Bill state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillStatus {
    /// Due.
    Open,
    /// Paid through us.
    Paid,
}

/// A fee bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeBill {
    /// Schema version.
    pub v: u32,
    /// The company's id for it.
    pub bill_id: String,
    /// Community.
    pub community_id: String,
    /// Room.
    pub room_id: String,
    /// Kind of fee.
    pub cost_type: String,
    /// Period, e.g. `2026-10`.
    pub period: String,
    /// Amount.
    pub amount_fen: i64,
    /// Due date `YYYY-MM-DD`.
    pub due_date: String,
    /// Bills with the same `relate_id` are paid together.
    #[serde(default)]
    pub relate_id: Option<String>,
    /// State.
    pub status: BillStatus,
    /// The order that paid it.
    #[serde(default)]
    pub paid_by: Option<String>,
    /// Orders that paid it again (bills of before holds; to be settled by the company).
    #[serde(default)]
    pub duplicate_payments: Vec<String>,
    /// The open order paying it (with its `relate_id` group), if any: another order for it is refused until that
    /// payment ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
}

impl Holdable for FeeBill {
    fn hold(&self) -> Option<&Hold> {
        self.hold.as_ref()
    }
    fn set_hold(&mut self, hold: Option<Hold>) {
        self.hold = hold;
    }
}

/// One bill in an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillInput {
    /// Id.
    pub bill_id: String,
    /// Room.
    pub room_id: String,
    /// Kind.
    pub cost_type: String,
    /// Period.
    pub period: String,
    /// Amount.
    pub amount_fen: i64,
    /// Due date.
    pub due_date: String,
    /// Group paid together.
    #[serde(default)]
    pub relate_id: Option<String>,
}

/// Outcome of an upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadResult {
    /// New bills.
    pub created: usize,
    /// Open bills replaced or re-sent.
    pub updated: usize,
    /// Refused bills (`bill_paid`, `room_not_found`).
    pub rejected: Vec<(String, String)>,
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date in Asia/Shanghai.
pub fn day_number(date: &str) -> Option<i64> {
    if date.len() != 10 {
        return None;
    }
    Timestamp::parse_rfc3339(&format!("{date}T12:00:00+08:00")).ok().map(Timestamp::shanghai_day_number)
}

/// The late fee accrued on a bill by `today` (pure): `bp_per_day` of the amount for each day past the due date
/// and the grace days, truncated, capped at `cap_bp` of the amount.
pub fn late_fee_fen(rule: Option<&LateFee>, amount_fen: i64, due_day: i64, today: i64) -> i64 {
    let Some(rule) = rule else { return 0 };
    let days_late = today - due_day - i64::from(rule.grace_days);
    if days_late <= 0 {
        return 0;
    }
    let accrued = i128::from(amount_fen) * i128::from(rule.late_fee_bp_per_day) * i128::from(days_late) / 10_000;
    let cap = i128::from(amount_fen) * i128::from(rule.cap_bp) / 10_000;
    i64::try_from(accrued.min(cap)).unwrap_or(0)
}

impl FeeBill {
    /// The late fee on this bill by `now`.
    pub fn late_fee_at(&self, community: &Community, now: Timestamp) -> i64 {
        match day_number(&self.due_date) {
            Some(due) => late_fee_fen(community.late_fee.as_ref(), self.amount_fen, due, now.shanghai_day_number()),
            None => 0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Periods {
    v: u32,
    periods: Vec<String>,
}

enum Outcome {
    Created(i64),
    Updated(i64),
    Paid,
}

/// Stores an upload: idempotent per bill id, paid bills never overwritten, bills of unknown rooms refused.
pub async fn upload(
    store: &impl Store,
    community: &Community,
    bills: &[BillInput],
) -> Result<UploadResult, PropertyError> {
    if bills.is_empty() || bills.len() > MAX_UPLOAD {
        return Err(PropertyError::invalid("bills", format!("1 to {MAX_UPLOAD} bills")));
    }
    for (i, b) in bills.iter().enumerate() {
        let f = |name: &str| format!("bills[{i}].{name}");
        id(&f("bill_id"), &b.bill_id)?;
        id(&f("room_id"), &b.room_id)?;
        if let Some(r) = &b.relate_id {
            id(&f("relate_id"), r)?;
        }
        if !COST_TYPES.contains(&b.cost_type.as_str()) {
            return Err(PropertyError::invalid(&f("cost_type"), format!("one of {}", COST_TYPES.join(", "))));
        }
        if b.amount_fen <= 0 || b.amount_fen > 100_000_000 {
            return Err(PropertyError::invalid(&f("amount_fen"), "1 to 100000000"));
        }
        if b.period.is_empty()
            || b.period.len() > 16
            || !b.period.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            return Err(PropertyError::invalid(&f("period"), "1 to 16 of [A-Za-z0-9-]"));
        }
        if day_number(&b.due_date).is_none() {
            return Err(PropertyError::invalid(&f("due_date"), "YYYY-MM-DD"));
        }
        if bills[..i].iter().any(|o| o.bill_id == b.bill_id) {
            return Err(PropertyError::invalid(&f("bill_id"), "appears twice in this upload"));
        }
    }
    let mut result = UploadResult::default();
    for b in bills {
        if get_json::<crate::communities::Room>(store, &keys::room(&community.id, &b.room_id)).await?.is_none() {
            result.rejected.push((b.bill_id.clone(), "room_not_found".into()));
            continue;
        }
        let outcome = kv::update_json(store, &keys::bill(&community.id, &b.bill_id), |current: Option<&FeeBill>| {
            if current.is_some_and(|c| c.status == BillStatus::Paid) {
                return Ok::<_, PropertyError>(Step::Keep(Outcome::Paid));
            }
            let bill = FeeBill {
                v: 1,
                bill_id: b.bill_id.clone(),
                community_id: community.id.clone(),
                room_id: b.room_id.clone(),
                cost_type: b.cost_type.clone(),
                period: b.period.clone(),
                amount_fen: b.amount_fen,
                due_date: b.due_date.clone(),
                relate_id: b.relate_id.clone(),
                status: BillStatus::Open,
                paid_by: None,
                duplicate_payments: Vec::new(),
                // Another amount releases the bill: an order for the old amount can no longer pay it.
                hold: current.filter(|c| c.amount_fen == b.amount_fen).and_then(|c| c.hold.clone()),
            };
            match current {
                Some(c) if c == &bill => Ok(Step::Keep(Outcome::Updated(0))),
                Some(c) => {
                    let delta = bill.amount_fen - c.amount_fen;
                    Ok(Step::Write(bill, Outcome::Updated(delta)))
                }
                None => {
                    let amount = bill.amount_fen;
                    Ok(Step::Write(bill, Outcome::Created(amount)))
                }
            }
        })
        .await?;
        let billed_delta = match outcome {
            Outcome::Paid => {
                result.rejected.push((b.bill_id.clone(), "bill_paid".into()));
                continue;
            }
            Outcome::Created(amount) => {
                result.created += 1;
                amount
            }
            Outcome::Updated(delta) => {
                result.updated += 1;
                delta
            }
        };
        if billed_delta != 0 {
            store.increment(&keys::period_stat(&community.id, &b.period, "billed_fen"), billed_delta).await?;
        }
        kv::add_to_index(store, &keys::room_bills(&community.id, &b.room_id), &b.bill_id).await?;
        kv::update_json(store, &keys::periods(&community.id), |current: Option<&Periods>| {
            let mut p = current.cloned().unwrap_or(Periods { v: 1, periods: Vec::new() });
            if p.periods.contains(&b.period) {
                return Ok::<_, PropertyError>(Step::Keep(()));
            }
            p.periods.push(b.period.clone());
            p.periods.sort();
            Ok(Step::Write(p, ()))
        })
        .await?;
    }
    Ok(result)
}

/// The billing periods of a community.
pub async fn periods(store: &impl Store, community_id: &str) -> Result<Vec<String>, PropertyError> {
    Ok(get_json::<Periods>(store, &keys::periods(community_id)).await?.unwrap_or_default().periods)
}

/// All bills of a room.
pub async fn room_bills(store: &impl Store, community_id: &str, room_id: &str) -> Result<Vec<FeeBill>, PropertyError> {
    let ids = kv::read_index(store, &keys::room_bills(community_id, room_id)).await?;
    let keys: Vec<_> = ids.iter().map(|b| keys::bill(community_id, b)).collect();
    let mut out = Vec::with_capacity(keys.len());
    for (key, bytes) in keys.iter().zip(kv::get_all(store, &keys).await?) {
        out.extend(kv::decode_doc::<FeeBill>(key, bytes.as_deref())?);
    }
    Ok(out)
}

/// Normalises an owner name for comparison: no spaces (ASCII or ideographic) or name dots, full-width letters
/// and digits folded to ASCII, ASCII letters lower-cased.
pub fn normalise_name(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '·' | '•' | '.' | '・' | '\u{3000}'))
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            _ => c,
        })
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: LateFee = LateFee { late_fee_bp_per_day: 5, grace_days: 10, cap_bp: 1000 };

    #[test]
    fn late_fees_start_after_the_grace_days_and_are_capped() {
        let due = day_number("2026-10-31").expect("date");
        assert_eq!(late_fee_fen(Some(&RULE), 100_000, due, due), 0);
        assert_eq!(late_fee_fen(Some(&RULE), 100_000, due, due + 10), 0, "last grace day");
        assert_eq!(late_fee_fen(Some(&RULE), 100_000, due, due + 11), 50, "first day late: 0.05%");
        assert_eq!(late_fee_fen(Some(&RULE), 100_000, due, due + 30), 1000);
        assert_eq!(late_fee_fen(Some(&RULE), 100_000, due, due + 1000), 10_000, "capped at 10%");
        assert_eq!(late_fee_fen(Some(&RULE), 999, due, due + 11), 0, "truncated");
        assert_eq!(late_fee_fen(None, 100_000, due, due + 100), 0);
        let across_year = day_number("2027-01-01").expect("date") - day_number("2026-12-31").expect("date");
        assert_eq!(across_year, 1);
    }

    #[test]
    fn names_compare_after_normalisation() {
        assert_eq!(normalise_name(" 张 三丰 "), normalise_name("张三丰"));
        assert_eq!(normalise_name("阿卜杜·热合曼"), normalise_name("阿卜杜热合曼"));
        assert_eq!(normalise_name("ＬＩ　Ｌｅｉ"), normalise_name("li lei"));
        assert_ne!(normalise_name("张三"), normalise_name("张三丰"));
    }
}
