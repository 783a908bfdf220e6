//! Utility's part in the shared payment flow (`scenefin_core::orders`): what a paid order settles, what a refund
//! reopens, and the per-biller day index and counters the reports read. Every effect is idempotent by order id.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::LifecycleRules;
use scenefin_core::kv::{self, Step, Store};
use scenefin_core::orders::{self, Fulfilment, GatewayEvent, Order, OrderError};
use scenefin_core::settlement;

use crate::bills::{Bill, BillStatus};
use crate::pricing::Payload;
use crate::{OWNER, UtilityError, billers, keys};

/// Utility's fulfilment.
pub struct Utility<'a, S: Store> {
    /// The store.
    pub store: &'a S,
}

fn payload(order: &Order) -> Result<Payload, OrderError> {
    serde_json::from_value(order.payload.clone()).map_err(|e| OrderError::Scenario(format!("order payload: {e}")))
}

impl<S: Store> Utility<'_, S> {
    async fn count_once(
        &self,
        order_id: &str,
        effect: &str,
        biller_id: &str,
        counter: &str,
        delta: i64,
    ) -> Result<(), OrderError> {
        Ok(kv::count_once(self.store, &keys::order_effect(order_id, effect), &keys::stat(biller_id, counter), delta)
            .await?)
    }
}

impl<S: Store> Fulfilment for Utility<'_, S> {
    fn owner(&self) -> &'static str {
        OWNER
    }

    async fn fulfil(&self, order: &Order, at: Timestamp) -> Result<(), OrderError> {
        let p = payload(order)?;
        for bill_id in &p.bill_ids {
            kv::update_json(self.store, &keys::bill(&p.biller_id, bill_id), |bill: Option<&Bill>| {
                let Some(bill) = bill else { return Ok::<_, OrderError>(Step::Keep(())) };
                let mut next = bill.clone();
                match (&bill.status, bill.paid_by.as_deref()) {
                    (BillStatus::Paid, Some(by)) if by == order.id => return Ok(Step::Keep(())),
                    (BillStatus::Paid, _) => {
                        // Paid twice (two orders raced for it): keep the money trail for the biller to settle.
                        if bill.duplicate_payments.contains(&order.id) {
                            return Ok(Step::Keep(()));
                        }
                        next.duplicate_payments.push(order.id.clone());
                    }
                    (BillStatus::Open, _) => {
                        next.status = BillStatus::Paid;
                        next.paid_by = Some(order.id.clone());
                    }
                }
                next.updated_at = at;
                Ok(Step::Write(next, ()))
            })
            .await?;
        }
        settlement::record(self.store, OWNER, &p.biller_id, &order.id, "pay", at).await?;
        self.count_once(&order.id, "paid", &p.biller_id, "orders_paid", 1).await?;
        self.count_once(&order.id, "bills", &p.biller_id, "bills_paid", i64::try_from(p.bill_ids.len()).unwrap_or(0))
            .await?;
        if order.payment.as_ref().is_some_and(|pay| pay.bank_card) {
            self.count_once(&order.id, "bank_card", &p.biller_id, "orders_paid_bank_card", 1).await?;
        }
        Ok(())
    }

    async fn reverse(&self, order: &Order, at: Timestamp) -> Result<(), OrderError> {
        let p = payload(order)?;
        for bill_id in &p.bill_ids {
            kv::update_json(self.store, &keys::bill(&p.biller_id, bill_id), |bill: Option<&Bill>| {
                let Some(bill) = bill else { return Ok::<_, OrderError>(Step::Keep(())) };
                let mut next = bill.clone();
                if bill.paid_by.as_deref() == Some(&order.id) {
                    // Another payment of the same bill still stands: it becomes the one that paid it.
                    if next.duplicate_payments.is_empty() {
                        next.status = BillStatus::Open;
                        next.paid_by = None;
                    } else {
                        next.paid_by = Some(next.duplicate_payments.remove(0));
                    }
                } else if bill.duplicate_payments.contains(&order.id) {
                    next.duplicate_payments.retain(|o| o != &order.id);
                } else {
                    return Ok(Step::Keep(()));
                }
                next.updated_at = at;
                Ok(Step::Write(next, ()))
            })
            .await?;
        }
        settlement::record(self.store, OWNER, &p.biller_id, &order.id, "refund", at).await?;
        self.count_once(&order.id, "refunded", &p.biller_id, "orders_refunded", 1).await?;
        Ok(())
    }
}

/// Places the order for a quote after checking its bills are still open.
pub async fn place(
    store: &impl Store,
    customer_id: &str,
    quote_id: &str,
    now: Timestamp,
) -> Result<Order, UtilityError> {
    let (quote, ordered) = orders::customer_quote(store, OWNER, customer_id, quote_id).await?;
    let p: Payload =
        serde_json::from_value(quote.payload).map_err(|e| UtilityError::invalid("quote", e.to_string()))?;
    let biller = billers::get(store, &p.biller_id).await?;
    if !ordered {
        for bill_id in &p.bill_ids {
            let bill: Option<Bill> = kv::get_json(store, &keys::bill(&biller.id, bill_id)).await?;
            if !bill.is_some_and(|b| b.status == BillStatus::Open) {
                return Err(UtilityError::BillNotOpen(bill_id.clone()));
            }
        }
    }
    Ok(orders::place_order(store, OWNER, customer_id, quote_id, &biller.ledger_account(), now).await?)
}

/// Applies a verified gateway notification.
pub async fn notify(
    store: &impl Store,
    event: &GatewayEvent,
    bank_bins: &[String],
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Order, UtilityError> {
    Ok(orders::apply_notification(store, &Utility { store }, event, bank_bins, rules, now).await?)
}

/// Refunds a paid order.
pub async fn refund(
    store: &impl Store,
    order_id: &str,
    by: &str,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Order, UtilityError> {
    Ok(orders::refund(store, &Utility { store }, order_id, by, rules, now).await?)
}

/// The biller an order pays (for partner scope checks).
pub fn biller_of(order: &Order) -> Option<String> {
    order.payload.get("biller_id").and_then(|v| v.as_str()).map(str::to_owned)
}
