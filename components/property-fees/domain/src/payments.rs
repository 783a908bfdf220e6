//! Property's part in the shared payment flow: a paid order settles its bills, credits the months paid ahead to
//! the room, counts collection and late-fee income; a refund undoes each. Every effect is idempotent by order id.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::LifecycleRules;
use scenefin_core::feed::{self, FeedEvent};
use scenefin_core::holds;
use scenefin_core::kv::{self, Step, Store};
use scenefin_core::orders::{self, Fulfilment, GatewayEvent, Order, OrderError, PartialRefund, RefundRequest};
use scenefin_core::problem::{ErrorKind, Problem};
use scenefin_core::settlement;
use serde_json::json;

use crate::communities::{PrepaidCredit, Room};
use crate::fees::{BillStatus, FeeBill};
use crate::pricing::Payload;
use crate::{OWNER, PropertyError, communities, keys};

/// Property's fulfilment.
pub struct Property<'a, S: Store> {
    /// The store.
    pub store: &'a S,
}

fn payload(order: &Order) -> Result<Payload, OrderError> {
    serde_json::from_value(order.payload.clone()).map_err(|e| OrderError::Scenario(format!("order payload: {e}")))
}

impl<S: Store> Property<'_, S> {
    async fn once(&self, order_id: &str, effect: &str, counter: kv::Key, delta: i64) -> Result<(), OrderError> {
        Ok(kv::count_once(self.store, &keys::once(effect, order_id, "x"), &counter, delta).await?)
    }

    /// Marks a bill paid (or no longer) by the order; the bill as it stands after.
    async fn set_bill(
        &self,
        p: &Payload,
        bill_id: &str,
        order_id: &str,
        paid: bool,
    ) -> Result<Option<FeeBill>, OrderError> {
        kv::update_json(self.store, &keys::bill(&p.community_id, bill_id), |bill: Option<&FeeBill>| {
            let Some(bill) = bill else { return Ok::<_, OrderError>(Step::Keep(None)) };
            let mut next = bill.clone();
            let mine = bill.paid_by.as_deref() == Some(order_id);
            if paid && next.hold.as_ref().is_some_and(|h| h.order_id == order_id) {
                next.hold = None;
            }
            match (paid, bill.status) {
                (true, BillStatus::Open) => {
                    next.status = BillStatus::Paid;
                    next.paid_by = Some(order_id.to_owned());
                }
                (true, BillStatus::Paid) if mine || bill.duplicate_payments.iter().any(|o| o == order_id) => {
                    return Ok(Step::Keep(Some(bill.clone())));
                }
                (true, BillStatus::Paid) => next.duplicate_payments.push(order_id.to_owned()),
                (false, _) if mine => {
                    if next.duplicate_payments.is_empty() {
                        next.status = BillStatus::Open;
                        next.paid_by = None;
                    } else {
                        next.paid_by = Some(next.duplicate_payments.remove(0));
                    }
                }
                (false, _) if bill.duplicate_payments.iter().any(|o| o == order_id) => {
                    next.duplicate_payments.retain(|o| o != order_id);
                }
                (false, _) => return Ok(Step::Keep(Some(bill.clone()))),
            }
            Ok(Step::Write(next.clone(), Some(next)))
        })
        .await
    }

    async fn set_prepaid(&self, p: &Payload, order_id: &str, credit: bool) -> Result<(), OrderError> {
        let months = p.prepay_months + p.free_months;
        if months == 0 {
            return Ok(());
        }
        kv::update_json(self.store, &keys::room(&p.community_id, &p.room_id), |room: Option<&Room>| {
            let Some(room) = room else { return Ok::<_, OrderError>(Step::Keep(())) };
            let has = room.prepaid.iter().any(|c| c.order_id == order_id);
            let mut next = room.clone();
            match (credit, has) {
                (true, false) => next.prepaid.push(PrepaidCredit { order_id: order_id.to_owned(), months }),
                (false, true) => next.prepaid.retain(|c| c.order_id != order_id),
                _ => return Ok(Step::Keep(())),
            }
            Ok(Step::Write(next, ()))
        })
        .await
    }
}

impl<S: Store> Fulfilment for Property<'_, S> {
    fn owner(&self) -> &'static str {
        OWNER
    }

    async fn fulfil(&self, order: &Order, at: Timestamp) -> Result<(), OrderError> {
        let p = payload(order)?;
        let mut settled = Vec::new();
        for (i, bill_id) in p.bill_ids.iter().enumerate() {
            let bill = self.set_bill(&p, bill_id, &order.id, true).await?;
            let charged = p.amounts_fen.get(i).copied().unwrap_or_default();
            settled.extend(bill.map(|b| bill_view(&b, &order.id, charged)));
        }
        self.set_prepaid(&p, &order.id, true).await?;
        settlement::record(self.store, OWNER, &p.community_id, &order.id, "pay", at).await?;
        // The community's feed, as a re-driven effect: a retry after a crash appends the same id once.
        let paid_at = order.payment.as_ref().map_or(at, |pay| pay.paid_at);
        let data = json!({
            "community_id": p.community_id, "room_id": p.room_id, "order_id": order.id,
            "paid_fen": order.total_fen, "paid_at": paid_at, "bills": settled, "late_fee_fen": p.late_fee_fen,
            "prepaid_months": p.prepay_months, "free_months": p.free_months,
        });
        let event = FeedEvent::new("fee.paid", &order.id, paid_at, data);
        feed::append(self.store, &feed::key(OWNER, &p.community_id), &event).await?;
        for (i, (period, amount)) in p.periods.iter().zip(&p.amounts_fen).enumerate() {
            let effect = format!("paid{i}");
            self.once(&order.id, &effect, keys::period_stat(&p.community_id, period, "paid_fen"), *amount).await?;
        }
        self.once(&order.id, "late", keys::stat(&p.community_id, "late_fee_income_fen"), p.late_fee_fen).await?;
        self.once(&order.id, "orders", keys::stat(&p.community_id, "orders_paid"), 1).await?;
        if order.payment.as_ref().is_some_and(|pay| pay.bank_card) {
            // Penetration counts rooms, once each, not payments.
            kv::count_once(
                self.store,
                &keys::once("bankcard", &p.community_id, &p.room_id),
                &keys::stat(&p.community_id, "bank_card_rooms"),
                1,
            )
            .await?;
        }
        Ok(())
    }

    async fn partially_refunded(&self, order: &Order, refund: &PartialRefund) -> Result<(), OrderError> {
        let p = payload(order)?;
        let kind = format!("refund:{}", refund.id);
        Ok(settlement::record(self.store, OWNER, &p.community_id, &order.id, &kind, refund.at).await?)
    }

    async fn release(&self, order: &Order) -> Result<(), OrderError> {
        let p = payload(order)?;
        for bill_id in &p.bill_ids {
            holds::release::<FeeBill, OrderError>(self.store, &keys::bill(&p.community_id, bill_id), &order.id).await?;
        }
        Ok(())
    }

    async fn changed(&self, order: &Order) -> Result<Option<String>, OrderError> {
        let p = payload(order)?;
        let keys: Vec<kv::Key> = p.bill_ids.iter().map(|id| keys::bill(&p.community_id, id)).collect();
        for ((key, raw), amount) in keys.iter().zip(kv::get_all(self.store, &keys).await?).zip(&p.amounts_fen) {
            match kv::decode_doc::<FeeBill>(key, raw.as_deref())? {
                Some(bill) if bill.amount_fen != *amount => {
                    return Ok(Some(format!("bill {} was re-issued", bill.bill_id)));
                }
                Some(bill) if bill.status == BillStatus::Paid && bill.paid_by.as_deref() != Some(&order.id) => {
                    return Ok(Some(format!("bill {} is already paid", bill.bill_id)));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    async fn reverse(&self, order: &Order, at: Timestamp) -> Result<(), OrderError> {
        let p = payload(order)?;
        for bill_id in &p.bill_ids {
            self.set_bill(&p, bill_id, &order.id, false).await?;
        }
        self.set_prepaid(&p, &order.id, false).await?;
        settlement::record(self.store, OWNER, &p.community_id, &order.id, "refund", at).await?;
        let data = json!({
            "community_id": p.community_id, "room_id": p.room_id, "order_id": order.id,
            "refunded_fen": order.total_fen - order.partially_refunded_fen(), "refunded_at": at,
            "bill_ids": p.bill_ids, "prepaid_months": p.prepay_months, "free_months": p.free_months,
        });
        let event = FeedEvent::new("fee.refunded", &order.id, at, data);
        feed::append(self.store, &feed::key(OWNER, &p.community_id), &event).await?;
        for (i, (period, amount)) in p.periods.iter().zip(&p.amounts_fen).enumerate() {
            let effect = format!("unpaid{i}");
            self.once(&order.id, &effect, keys::period_stat(&p.community_id, period, "paid_fen"), -*amount).await?;
        }
        self.once(&order.id, "unlate", keys::stat(&p.community_id, "late_fee_income_fen"), -p.late_fee_fen).await?;
        self.once(&order.id, "refunds", keys::stat(&p.community_id, "orders_refunded"), 1).await?;
        Ok(())
    }
}

/// A bill as the community's `fee.paid` event shows it: `paid` by this payment (write it off), or a
/// `duplicate_payment` after another one; `charged_fen` is what this payment paid for it.
fn bill_view(bill: &FeeBill, order_id: &str, charged_fen: i64) -> serde_json::Value {
    let outcome = if bill.duplicate_payments.iter().any(|o| o == order_id) { "duplicate_payment" } else { "paid" };
    json!({
        "bill_id": bill.bill_id, "period": bill.period, "amount_fen": bill.amount_fen, "charged_fen": charged_fen,
        "outcome": outcome,
    })
}

/// Places the order for a quote after checking its bills are still open.
pub async fn place(
    store: &impl Store,
    customer_id: &str,
    quote_id: &str,
    now: Timestamp,
) -> Result<Order, PropertyError> {
    let (quote, existing) = orders::customer_quote(store, OWNER, customer_id, quote_id).await?;
    let p: Payload =
        serde_json::from_value(quote.payload.clone()).map_err(|e| PropertyError::invalid("quote", e.to_string()))?;
    let community = communities::get(store, &p.community_id).await?;
    if existing.is_none() {
        // Each bill must still be open and not held by another open order; the order then holds them all.
        let order_id = orders::order_id_for(quote_id);
        let until = now.plus_secs(orders::PAYMENT_WINDOW_SECS + orders::RESERVATION_GRACE_SECS);
        for (i, bill_id) in p.bill_ids.iter().enumerate() {
            let key = keys::bill(&community.id, bill_id);
            let item = format!("bill {bill_id}");
            let held = holds::take(store, &key, &item, &order_id, until, now, |bill: Option<&FeeBill>| match bill {
                Some(b) if b.status == BillStatus::Open => Ok(()),
                _ => Err(PropertyError::BillNotOpen(bill_id.clone())),
            })
            .await;
            if let Err(e) = held {
                // As in utility: let go of what this attempt took; when refused, of what the quote reserved too.
                for taken in &p.bill_ids[..i] {
                    let key = keys::bill(&community.id, taken);
                    let _ = holds::release::<FeeBill, PropertyError>(store, &key, &order_id).await;
                }
                if e.kind() == ErrorKind::Conflict {
                    let _ = orders::release_quote(store, &quote, now).await;
                }
                return Err(e);
            }
        }
    }
    Ok(orders::place_quoted(store, OWNER, customer_id, &quote, existing, &community.ledger_account(), now).await?)
}

/// Applies a verified gateway notification.
pub async fn notify(
    store: &impl Store,
    event: &GatewayEvent,
    bank_bins: &[String],
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Order, PropertyError> {
    Ok(orders::apply_notification(store, &Property { store }, event, bank_bins, rules, now).await?)
}

/// Refunds a paid order.
pub async fn refund(
    store: &impl Store,
    order_id: &str,
    by: &str,
    request: &RefundRequest,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Order, PropertyError> {
    Ok(orders::refund(store, &Property { store }, order_id, by, request, rules, now).await?)
}
