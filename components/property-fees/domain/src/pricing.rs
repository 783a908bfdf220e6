//! Pricing a property payment: the chosen bills (whole `relate_id` groups only) with their late fees, months paid
//! ahead with the community's prepay incentive (funded by the property company), and the owner discount for the
//! bank's cardholders (funded by a bank budget, reserved for the life of the quote).

use scenefin_core::clock::Timestamp;
use scenefin_core::coupons;
use scenefin_core::holds::Holdable;
use scenefin_core::ids::new_id;
use scenefin_core::kv::{Store, StoreError};
use scenefin_core::orders::{self, PayWith, QUOTE_TTL_SECS, Quote, QuoteLine};
use serde::{Deserialize, Serialize};

use crate::communities::{Prepay, Room};
use crate::fees::FeeBill;
use crate::{OWNER, PropertyError, SCENARIO, households, keys};

/// Most months paid ahead at once.
pub const MAX_PREPAY_MONTHS: u32 = 36;

/// What the owner asks to pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteRequest {
    /// Community, when the room id alone is ambiguous.
    pub community_id: Option<String>,
    /// Room.
    pub room_id: String,
    /// Bills.
    pub bill_ids: Vec<String>,
    /// Months to pay ahead.
    pub prepay_months: Option<u32>,
    /// Instrument.
    pub pay_with: PayWith,
    /// Card BIN.
    pub card_bin: Option<String>,
    /// A wallet coupon.
    pub coupon_id: Option<String>,
}

/// What a property order pays for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Community.
    pub community_id: String,
    /// Room.
    pub room_id: String,
    /// Bills settled.
    pub bill_ids: Vec<String>,
    /// Periods of those bills, in the same order, for collection stats.
    pub periods: Vec<String>,
    /// Amounts of those bills.
    pub amounts_fen: Vec<i64>,
    /// Late fees included.
    pub late_fee_fen: i64,
    /// Months paid ahead.
    pub prepay_months: u32,
    /// Free months earned.
    pub free_months: u32,
}

/// Checks that every chosen bill is open and that `relate_id` groups are complete (pure).
pub fn select<'a>(open: &'a [(FeeBill, i64)], bill_ids: &[String]) -> Result<Vec<&'a (FeeBill, i64)>, PropertyError> {
    let mut chosen = Vec::with_capacity(bill_ids.len());
    for (i, id) in bill_ids.iter().enumerate() {
        if bill_ids[..i].contains(id) {
            return Err(PropertyError::invalid("bill_ids", format!("{id} appears twice")));
        }
        let found = open
            .iter()
            .find(|(b, _)| &b.bill_id == id)
            .ok_or_else(|| PropertyError::BillNotOpen(id.chars().take(64).collect()))?;
        chosen.push(found);
    }
    for (bill, _) in &chosen {
        let Some(group) = &bill.relate_id else { continue };
        let missing: Vec<&str> = open
            .iter()
            .filter(|(b, _)| b.relate_id.as_ref() == Some(group) && !bill_ids.contains(&b.bill_id))
            .map(|(b, _)| b.bill_id.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(PropertyError::PartialGroup { relate_id: group.clone(), missing: missing.join(", ") });
        }
    }
    Ok(chosen)
}

/// Months free for paying `months` ahead (pure): `free_months` per full block of `prepay.months`.
pub fn free_months(prepay: Option<&Prepay>, months: u32) -> u32 {
    match prepay {
        Some(p) if p.months > 0 => months / p.months * p.free_months,
        _ => 0,
    }
}

/// The lines for months paid ahead (pure): the months at the monthly fee, and the incentive as a negative line.
pub fn prepay_lines(room: &Room, prepay: Option<&Prepay>, months: u32) -> Result<(Vec<QuoteLine>, u32), PropertyError> {
    if months == 0 {
        return Ok((Vec::new(), 0));
    }
    if months > MAX_PREPAY_MONTHS {
        return Err(PropertyError::invalid("prepay_months", format!("1 to {MAX_PREPAY_MONTHS}")));
    }
    let paid = room.monthly_fee_fen * i64::from(months);
    let mut lines = vec![QuoteLine {
        kind: "prepay".into(),
        description: format!("{months} months of property fees in advance"),
        amount_fen: paid,
        funded_by: None,
    }];
    let free = free_months(prepay, months);
    if free > 0 {
        lines.push(QuoteLine {
            kind: "prepay_incentive".into(),
            description: format!("{free} month(s) free for paying {months} ahead, extending the prepaid period"),
            amount_fen: 0,
            funded_by: None,
        });
    }
    Ok((lines, free))
}

/// Prices a payment and stores the quote.
pub async fn quote(
    store: &impl Store,
    customer_id: &str,
    req: QuoteRequest,
    bank_bins: &[String],
    now: Timestamp,
) -> Result<Quote, PropertyError> {
    orders::check_payment_method(req.pay_with, req.card_bin.as_deref())
        .map_err(|(field, message)| PropertyError::invalid(field, message))?;
    let (community, room) =
        households::claimed_room(store, customer_id, req.community_id.as_deref(), &req.room_id).await?;
    let open = households::due(store, &community, &room.room_id, now).await?;
    let chosen = select(&open, &req.bill_ids)?;
    // A bill another open order is paying cannot be paid again until that payment ends.
    for (bill, _) in &chosen {
        if let Some(order_id) = bill.held_by_other(None, now) {
            let item = format!("bill {}", bill.bill_id);
            return Err(orders::OrderError::InPayment { item, order_id: order_id.into() }.into());
        }
    }
    let months = req.prepay_months.unwrap_or(0);
    if chosen.is_empty() && months == 0 {
        return Err(PropertyError::NothingToPay);
    }
    let mut lines = Vec::new();
    let mut late_total = 0;
    for (bill, late) in &chosen {
        lines.push(QuoteLine {
            kind: "fee".into(),
            description: format!("{} {} {}", bill.cost_type, bill.period, bill.bill_id),
            amount_fen: bill.amount_fen,
            funded_by: None,
        });
        if *late > 0 {
            late_total += late;
            lines.push(QuoteLine {
                kind: "late_fee".into(),
                description: format!("late fee on {} (due {})", bill.bill_id, bill.due_date),
                amount_fen: *late,
                funded_by: None,
            });
        }
    }
    let (prepay, free) = prepay_lines(&room, community.prepay.as_ref(), months)?;
    lines.extend(prepay);
    let base_fen: i64 = lines.iter().map(|l| l.amount_fen).sum();
    let id = new_id("q", now.unix_ms()).map_err(|e| PropertyError::Store(StoreError::Backend(e.to_string())))?;
    let expires_at = now.plus_secs(QUOTE_TTL_SECS);
    // A wallet coupon first, then the owner discount on what is left.
    if let Some(coupon) = &req.coupon_id {
        lines
            .push(coupons::lock_for_quote(store, customer_id, coupon, SCENARIO, base_fen, &id, expires_at, now).await?);
    }
    let after_coupon: i64 = lines.iter().map(|l| l.amount_fen).sum();
    if let Some(discount) = &community.owner_discount
        && orders::is_bank_bin(req.pay_with, req.card_bin.as_deref(), bank_bins)
    {
        let budget = keys::budget(&discount.budget_id);
        lines.extend(discount.reserve_line(store, &budget, &id, after_coupon, expires_at, now).await?);
    }
    let total_fen = lines.iter().map(|l| l.amount_fen).sum();
    let payload = Payload {
        community_id: community.id.clone(),
        room_id: room.room_id.clone(),
        bill_ids: chosen.iter().map(|(b, _)| b.bill_id.clone()).collect(),
        periods: chosen.iter().map(|(b, _)| b.period.clone()).collect(),
        amounts_fen: chosen.iter().map(|(b, _)| b.amount_fen).collect(),
        late_fee_fen: late_total,
        prepay_months: months,
        free_months: free,
    };
    let quote = Quote {
        v: 1,
        id,
        customer_id: customer_id.to_owned(),
        scenario: SCENARIO.into(),
        lines,
        total_fen,
        pay_with: req.pay_with,
        card_bin: req.card_bin,
        created_at: now,
        expires_at,
        payload: serde_json::to_value(&payload).map_err(|e| PropertyError::invalid("quote", e.to_string()))?,
    };
    orders::save_quote(store, OWNER, &quote).await?;
    Ok(quote)
}

/// The community an order belongs to.
pub fn community_of(order: &orders::Order) -> Option<String> {
    order.payload.get("community_id").and_then(|v| v.as_str()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fees::BillStatus;

    fn bill(id: &str, amount: i64, relate: Option<&str>) -> (FeeBill, i64) {
        let b = FeeBill {
            v: 1,
            bill_id: id.into(),
            community_id: "c".into(),
            room_id: "r".into(),
            cost_type: "property".into(),
            period: "2026-10".into(),
            amount_fen: amount,
            due_date: "2026-10-31".into(),
            relate_id: relate.map(Into::into),
            status: BillStatus::Open,
            paid_by: None,
            duplicate_payments: vec![],
            hold: None,
        };
        (b, 0)
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn related_bills_are_paid_together_or_not_at_all() {
        let open = [bill("fee", 30_000, Some("g1")), bill("parking", 20_000, Some("g1")), bill("lift", 5_000, None)];
        assert!(select(&open, &ids(&["fee", "parking"])).is_ok());
        assert!(select(&open, &ids(&["lift"])).is_ok());
        assert!(matches!(select(&open, &ids(&["fee"])), Err(PropertyError::PartialGroup { .. })));
        assert!(matches!(select(&open, &ids(&["nope"])), Err(PropertyError::BillNotOpen(_))));
        assert!(select(&open, &ids(&["lift", "lift"])).is_err());
    }

    #[test]
    fn prepay_incentive_gives_free_months_per_full_block() {
        let p = Prepay { months: 12, free_months: 1 };
        assert_eq!(free_months(Some(&p), 11), 0);
        assert_eq!(free_months(Some(&p), 12), 1);
        assert_eq!(free_months(Some(&p), 25), 2);
        assert_eq!(free_months(None, 24), 0);
        let room = Room {
            v: 1,
            community_id: "c".into(),
            room_id: "r".into(),
            building: "1".into(),
            unit: "1".into(),
            number: "101".into(),
            owner_name: "x".into(),
            owner_hash: None,
            area_cm2: 9000,
            monthly_fee_fen: 25_000,
            prepaid: vec![],
        };
        let (lines, free) = prepay_lines(&room, Some(&p), 12).expect("lines");
        assert_eq!(free, 1);
        assert_eq!(lines[0].amount_fen, 300_000);
        assert!(prepay_lines(&room, Some(&p), MAX_PREPAY_MONTHS + 1).is_err());
    }
}
