//! Pricing a utility payment: which amount the biller's exactness rule allows, and the cardholder discount
//! (a rate of the amount, capped per payment, only with one of the bank's own cards, and only while its budget
//! can fund it — reserved for the life of the quote).

use scenefin_core::clock::Timestamp;
use scenefin_core::coupons;
use scenefin_core::holds::Holdable;
use scenefin_core::ids::new_id;
use scenefin_core::kv::Store;
use scenefin_core::orders::{self, PayWith, QUOTE_TTL_SECS, Quote, QuoteLine};
use serde::{Deserialize, Serialize};

use crate::billers::{Biller, Exactness};
use crate::bills::{self, Bill};
use crate::{OWNER, SCENARIO, UtilityError, keys};

/// Largest single payment (50,000 yuan).
pub const MAX_PAYMENT_FEN: i64 = 5_000_000;

/// What the customer asks to pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteRequest {
    /// Biller.
    pub biller_id: String,
    /// Account number.
    pub account_no: String,
    /// Bills to pay (exact billers).
    pub bill_ids: Option<Vec<String>>,
    /// Amount to pay (exact_up, exact_down, adhoc billers).
    pub amount_fen: Option<i64>,
    /// Instrument.
    pub pay_with: PayWith,
    /// Card BIN, when paying by card.
    pub card_bin: Option<String>,
    /// A wallet coupon.
    pub coupon_id: Option<String>,
}

/// What the quote pays for (stored in the quote and order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Biller.
    pub biller_id: String,
    /// Account number.
    pub account_no: String,
    /// Bills settled by the payment.
    pub bill_ids: Vec<String>,
    /// The amount before discounts.
    pub base_fen: i64,
    /// What the payment pays toward each bill, and the bill version it was priced on (empty in orders of before
    /// bill versions: those settle `bill_ids` whole).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<BillPart>,
}

/// A payment's share of one bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillPart {
    /// The bill.
    pub bill_id: String,
    /// The version priced.
    pub version: u32,
    /// Paid toward it.
    pub amount_fen: i64,
}

/// How a payment of `amount_fen` spreads over the open bills (oldest first), or over the selected ones (pure).
pub fn allocate(open: &[Bill], selected: &[String], amount_fen: i64) -> Vec<BillPart> {
    let mut left = amount_fen;
    let mut parts = Vec::new();
    let chosen = open.iter().filter(|b| selected.is_empty() || selected.contains(&b.bill_id));
    for bill in chosen {
        let share = left.min(bill.due_fen());
        if share <= 0 {
            break;
        }
        parts.push(BillPart { bill_id: bill.bill_id.clone(), version: bill.version, amount_fen: share });
        left -= share;
    }
    parts
}

/// Why a request for a biller that takes an amount was refused without one.
const AMOUNT_REQUIRED: &str = "this biller takes an amount: send amount_fen";

/// The base amount and the bills it settles, by the biller's exactness rule (pure).
pub fn base_amount(
    exactness: Exactness,
    open: &[Bill],
    bill_ids: Option<&[String]>,
    amount_fen: Option<i64>,
) -> Result<(i64, Vec<String>), UtilityError> {
    let due: i64 = open.iter().map(Bill::due_fen).sum();
    let all_ids = || open.iter().map(|b| b.bill_id.clone()).collect::<Vec<_>>();
    let positive = |a: i64| {
        if a <= 0 || a > MAX_PAYMENT_FEN {
            Err(UtilityError::invalid("amount_fen", format!("1 to {MAX_PAYMENT_FEN}")))
        } else {
            Ok(a)
        }
    };
    match exactness {
        Exactness::Exact => {
            if amount_fen.is_some() {
                return Err(UtilityError::AmountRule(
                    "this biller takes exact bills: send bill_ids, not amount_fen".into(),
                ));
            }
            let ids = bill_ids
                .ok_or_else(|| UtilityError::AmountRule("this biller takes exact bills: send bill_ids".into()))?;
            if ids.is_empty() {
                return Err(UtilityError::invalid("bill_ids", "at least one bill"));
            }
            let mut total = 0;
            for (i, id) in ids.iter().enumerate() {
                if ids[..i].contains(id) {
                    return Err(UtilityError::invalid("bill_ids", format!("{id} appears twice")));
                }
                let bill = open
                    .iter()
                    .find(|b| &b.bill_id == id)
                    .ok_or_else(|| UtilityError::BillNotOpen(id.chars().take(64).collect()))?;
                total += bill.due_fen();
            }
            Ok((positive(total)?, ids.to_vec()))
        }
        Exactness::ExactUp | Exactness::ExactDown => {
            if bill_ids.is_some() {
                return Err(UtilityError::AmountRule(
                    "this biller takes an amount against everything due: send amount_fen".into(),
                ));
            }
            let amount = positive(amount_fen.ok_or_else(|| UtilityError::AmountRule(AMOUNT_REQUIRED.into()))?)?;
            if due == 0 {
                return Err(UtilityError::NothingDue);
            }
            if exactness == Exactness::ExactUp && amount < due {
                return Err(UtilityError::AmountRule(format!("at least {due} fen is due; pay that or more")));
            }
            if exactness == Exactness::ExactDown && amount > due {
                return Err(UtilityError::AmountRule(format!("only {due} fen is due; pay up to that")));
            }
            // The bills are settled only by a payment that covers them all.
            let settles = if amount >= due { all_ids() } else { Vec::new() };
            Ok((amount, settles))
        }
        Exactness::Adhoc => {
            if bill_ids.is_some() {
                return Err(UtilityError::AmountRule("this biller takes any amount: send amount_fen".into()));
            }
            let amount = positive(amount_fen.ok_or_else(|| UtilityError::AmountRule(AMOUNT_REQUIRED.into()))?)?;
            let settles = if due > 0 && amount >= due { all_ids() } else { Vec::new() };
            Ok((amount, settles))
        }
    }
}

/// Prices a payment and stores the quote (discount reserved against its budget for the life of the quote).
pub async fn quote(
    store: &impl Store,
    customer_id: &str,
    biller: &Biller,
    req: QuoteRequest,
    bank_bins: &[String],
    now: Timestamp,
) -> Result<Quote, UtilityError> {
    orders::check_payment_method(req.pay_with, req.card_bin.as_deref())
        .map_err(|(field, message)| UtilityError::invalid(field, message))?;
    let open = match bills::open_bills(store, biller, &req.account_no).await {
        Ok(open) => open,
        // Ad-hoc billers (prepaid meters) take payments for accounts without bills.
        Err(UtilityError::NoSuchAccount) if biller.exactness == Exactness::Adhoc => Vec::new(),
        Err(e) => return Err(e),
    };
    let (base_fen, bill_ids) = base_amount(biller.exactness, &open, req.bill_ids.as_deref(), req.amount_fen)?;
    let parts = allocate(&open, req.bill_ids.as_deref().unwrap_or_default(), base_fen);
    // A bill another open order is paying cannot be paid again until that payment ends.
    for part in &parts {
        if let Some(order_id) = open.iter().find(|b| b.bill_id == part.bill_id).and_then(|b| b.held_by_other(None, now))
        {
            return Err(orders::OrderError::InPayment {
                item: format!("bill {}", part.bill_id),
                order_id: order_id.into(),
            }
            .into());
        }
    }
    let id = new_id("q", now.unix_ms())
        .map_err(|e| UtilityError::Store(scenefin_core::kv::StoreError::Backend(e.to_string())))?;
    let expires_at = now.plus_secs(QUOTE_TTL_SECS);
    let mut lines = vec![QuoteLine {
        kind: "base".into(),
        description: format!("{} account {}", biller.name, req.account_no),
        amount_fen: base_fen,
        funded_by: None,
    }];
    // A wallet coupon first, then the cardholder discount on what is left.
    if let Some(coupon) = &req.coupon_id {
        lines
            .push(coupons::lock_for_quote(store, customer_id, coupon, SCENARIO, base_fen, &id, expires_at, now).await?);
    }
    let after_coupon: i64 = lines.iter().map(|l| l.amount_fen).sum();
    if let Some(discount) = &biller.discount
        && orders::is_bank_bin(req.pay_with, req.card_bin.as_deref(), bank_bins)
    {
        let budget = keys::budget(&discount.budget_id);
        lines.extend(discount.reserve_line(store, &budget, &id, after_coupon, expires_at, now).await?);
    }
    let total_fen = lines.iter().map(|l| l.amount_fen).sum();
    let payload =
        Payload { biller_id: biller.id.clone(), account_no: req.account_no.clone(), bill_ids, base_fen, parts };
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
        payload: serde_json::to_value(&payload).map_err(|e| UtilityError::invalid("quote", e.to_string()))?,
    };
    orders::save_quote(store, OWNER, &quote).await?;
    Ok(quote)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bills::BillStatus;

    fn bill(id: &str, amount: i64) -> Bill {
        Bill {
            v: 1,
            bill_id: id.into(),
            biller_id: "w".into(),
            account_no: "123456".into(),
            period: "2026-10".into(),
            amount_fen: amount,
            due_date: "2026-11-30".into(),
            status: BillStatus::Open,
            paid_by: None,
            duplicate_payments: vec![],
            updated_at: Timestamp::from_unix_secs(0),
            version: 1,
            paid_fen: 0,
            applied: vec![],
            hold: None,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn exact_billers_take_exactly_the_selected_open_bills() {
        let open = [bill("b1", 3000), bill("b2", 4500)];
        assert_eq!(base_amount(Exactness::Exact, &open, Some(&ids(&["b2"])), None).expect("ok"), (4500, ids(&["b2"])));
        assert_eq!(base_amount(Exactness::Exact, &open, Some(&ids(&["b1", "b2"])), None).expect("ok").0, 7500);
        assert!(matches!(
            base_amount(Exactness::Exact, &open, Some(&ids(&["b3"])), None),
            Err(UtilityError::BillNotOpen(_))
        ));
        assert!(base_amount(Exactness::Exact, &open, Some(&ids(&["b1", "b1"])), None).is_err());
        assert!(matches!(base_amount(Exactness::Exact, &open, None, Some(7500)), Err(UtilityError::AmountRule(_))));
        assert!(base_amount(Exactness::Exact, &open, Some(&[]), None).is_err());
    }

    #[test]
    fn exact_up_and_down_bound_the_amount_by_what_is_due() {
        let open = [bill("b1", 3000), bill("b2", 4500)];
        assert_eq!(base_amount(Exactness::ExactUp, &open, None, Some(7500)).expect("ok"), (7500, ids(&["b1", "b2"])));
        assert_eq!(base_amount(Exactness::ExactUp, &open, None, Some(10_000)).expect("ok").0, 10_000);
        assert!(matches!(base_amount(Exactness::ExactUp, &open, None, Some(7499)), Err(UtilityError::AmountRule(_))));
        assert_eq!(base_amount(Exactness::ExactDown, &open, None, Some(1000)).expect("ok"), (1000, vec![]));
        assert_eq!(base_amount(Exactness::ExactDown, &open, None, Some(7500)).expect("ok").1, ids(&["b1", "b2"]));
        assert!(matches!(base_amount(Exactness::ExactDown, &open, None, Some(7501)), Err(UtilityError::AmountRule(_))));
        assert!(matches!(base_amount(Exactness::ExactDown, &[], None, Some(100)), Err(UtilityError::NothingDue)));
        assert!(base_amount(Exactness::ExactUp, &open, None, Some(0)).is_err());
        assert!(base_amount(Exactness::ExactUp, &open, None, Some(MAX_PAYMENT_FEN + 1)).is_err());
    }

    #[test]
    fn a_partial_payment_spreads_over_the_oldest_bills_and_lowers_what_is_due() {
        let mut older = bill("b1", 3000);
        older.paid_fen = 1000;
        let open = [older, bill("b2", 4500)];
        assert_eq!(base_amount(Exactness::ExactDown, &open, None, Some(6500)).expect("ok"), (6500, ids(&["b1", "b2"])));
        assert!(matches!(base_amount(Exactness::ExactDown, &open, None, Some(6501)), Err(UtilityError::AmountRule(_))));
        let parts = allocate(&open, &[], 2500);
        let shares: Vec<(&str, i64)> = parts.iter().map(|p| (p.bill_id.as_str(), p.amount_fen)).collect();
        assert_eq!(shares, [("b1", 2000), ("b2", 500)]);
        assert_eq!(allocate(&open, &ids(&["b2"]), 4500).len(), 1);
    }

    #[test]
    fn adhoc_billers_take_any_positive_amount() {
        assert_eq!(base_amount(Exactness::Adhoc, &[], None, Some(5000)).expect("ok"), (5000, vec![]));
        assert!(base_amount(Exactness::Adhoc, &[], None, Some(-1)).is_err());
        assert!(base_amount(Exactness::Adhoc, &[], Some(&ids(&["b1"])), Some(5)).is_err());
    }

    #[test]
    fn discounts_are_truncated_capped_and_never_the_whole_amount() {
        let d = crate::billers::Discount { percent_bp: 250, cap_fen: 1000, budget_id: "b".into(), budget_fen: 1 };
        assert_eq!(d.amount_fen(999), 24);
        assert_eq!(d.amount_fen(100_000), 1000, "capped");
        assert_eq!(d.amount_fen(1), 0);
        let all = crate::billers::Discount { percent_bp: 5000, cap_fen: 100_000, ..d };
        assert_eq!(all.amount_fen(2), 1);
        assert_eq!(orders::percent(250), "2.5");
        assert_eq!(orders::percent(500), "5");
        assert_eq!(orders::percent(125), "1.25");
    }

    #[test]
    fn only_the_banks_cards_get_the_discount() {
        let bins = vec!["622588".to_owned()];
        assert!(orders::is_bank_bin(PayWith::BankCard, Some("62258812"), &bins));
        assert!(!orders::is_bank_bin(PayWith::BankCard, Some("62258912"), &bins));
        assert!(!orders::is_bank_bin(PayWith::Other, Some("62258812"), &bins));
        assert!(!orders::is_bank_bin(PayWith::BankCard, None, &bins));
    }
}
