//! A day of mixed traffic reconciles: utility billers' and property communities' customers pay (the bank's card
//! with discounts from small budgets, other cards, wallets, wallet coupons), some payments fail and are paid again
//! with a new quote, some orders are abandoned and expire, the gateway repeats notifications and captures some
//! orders twice, exact_down bills are paid in parts, students top up campus cards and spend at the canteen, billers
//! and the operator refund (in whole or in part) — all at once, customer by customer. Then every budget holds exactly what live
//! reservations hold, every partner statement reconciles to what was paid, the exceptions list holds exactly the
//! money that arrived for orders that could not take it, and the books balance.
//!
//! Two moments of one Shanghai day: `t0` (10:00), when most traffic happens, and `t1` (10:40), after every order
//! placed at `t0` and not paid has expired (30 min payment window, reservations 60 s later). Every task runs its
//! `t0` part, waits for all the others at a barrier, then runs its `t1` part. The plans below run `ROUNDS` times
//! over, so several customers compete for every small budget at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scenefin_core::clock::Timestamp;
use scenefin_e2e::{Api, BANK_BIN, OPERATOR_TOKEN, Reply, TestApp, ledger_account, retryable};
use scenefin_host::KvKind;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::campus_card::{
    add_merchant, bind_card, by_card, held, issue, member, onboard_school, spend, topup, topup_body,
};
use crate::merchant_coupons::{campaign, claim, create_campaign, login, onboard_merchant, with};
use crate::utility_payments::{event, register};

/// Another bank's card: no discount.
const OTHER_BIN: &str = "40000000";
/// The coupon campaign whose coupons utility and property quotes may use (¥3 off from ¥50; its stock and budget are
/// exactly the coupons the customers claim).
const COUPONS: &str = "md_bill_coupons";
const COUPON_FEN: i64 = 300;
/// How many times over the customers of the plans below run (each round its own customers, bills and rooms).
const ROUNDS: usize = 3;
/// How often an idempotent request is sent again after store contention (`503`) or a timeout.
const MAX_ATTEMPTS: usize = 50;

// ---------------------------------------------------------------------------------------------------------------
// What the test did, to compare with what the app reports

/// Where an order ended up, as far as money goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Paid (and not refunded): its discounts are spent, its gross is owed to the partner.
    Paid,
    /// Paid, then refunded: nothing spent, nothing owed.
    Refunded,
    /// Still waiting for payment at the end: its discounts are live reservations.
    Pending,
}

/// An order that holds or moved money at the end (failed and expired ones hold nothing and are not kept).
#[derive(Debug, Clone)]
struct Rec {
    order_id: String,
    /// Biller, community or school.
    partner: String,
    /// The scenario budget funding `bank_fen`.
    budget: String,
    /// The bank's cardholder discount or top-up bonus.
    bank_fen: i64,
    /// The wallet coupon's discount.
    coupon_fen: i64,
    /// What the partner is owed for it (base amounts).
    gross_fen: i64,
    /// What the customer pays.
    total_fen: i64,
    /// Given back by partial refunds (the order stays paid).
    refunded_fen: i64,
    end: End,
}

#[derive(Debug, Default)]
struct Book {
    orders: Vec<Rec>,
    /// Money sent for orders that could not take it: event id → amount.
    exceptions: BTreeMap<String, i64>,
    /// Campus spends net of reversals, per merchant.
    spends: BTreeMap<String, i64>,
    /// What each campus card holds: top-ups with their bonuses, less spends and refunds.
    cards: BTreeMap<String, i64>,
    coupons_claimed: i64,
}

type Shared = Arc<Mutex<Book>>;

fn book(shared: &Shared) -> std::sync::MutexGuard<'_, Book> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------------------------
// Requests

/// Sends an idempotent request until it is not met by contention (the client's retry, same key or event id).
async fn retried<F: Fn() -> R, R: Future<Output = Reply>>(what: &str, send: F) -> Reply {
    for attempt in 0..MAX_ATTEMPTS {
        let r = send().await;
        if !retryable(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(5 + 5 * attempt as u64)).await;
    }
    panic!("{what}: still contended after {MAX_ATTEMPTS} attempts")
}

/// Sums the (negated) amounts of an order's lines of these kinds.
fn discount_of(order: &Value, kinds: &[&str]) -> i64 {
    let lines = order["lines"].as_array().unwrap_or_else(|| panic!("no lines in {order}"));
    -lines.iter().filter(|l| l["kind"].as_str().is_some_and(|k| kinds.contains(&k))).map(amount).sum::<i64>()
}

fn amount(v: &Value) -> i64 {
    v["amount_fen"].as_i64().unwrap_or_else(|| panic!("no amount_fen in {v}"))
}

fn total(order: &Value) -> i64 {
    order["total_fen"].as_i64().unwrap_or_else(|| panic!("no total_fen in {order}"))
}

fn id_of(order: &Value) -> String {
    order["order_id"].as_str().unwrap_or_else(|| panic!("no order_id in {order}")).to_owned()
}

/// How a customer pays: the bank's card (discounts), another bank's card, or a wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Bank,
    OtherCard,
    Wallet,
}

impl How {
    /// The quote fields.
    fn quote_fields(self) -> Value {
        match self {
            How::Bank => json!({"pay_with": "bank_card", "card_bin": BANK_BIN}),
            How::OtherCard => json!({"pay_with": "bank_card", "card_bin": OTHER_BIN}),
            How::Wallet => json!({"pay_with": "other"}),
        }
    }

    /// The instrument's BIN in the gateway's notification.
    fn bin(self) -> Option<&'static str> {
        match self {
            How::Bank => Some(BANK_BIN),
            How::OtherCard => Some(OTHER_BIN),
            How::Wallet => None,
        }
    }
}

/// The routes of a paying scenario.
#[derive(Clone, Copy)]
struct Flow {
    quotes: &'static str,
    orders: &'static str,
    notify: &'static str,
}

const UTILITY: Flow =
    Flow { quotes: "/api/utility/quotes", orders: "/api/utility/orders", notify: "/api/utility/payments/notify" };
const PROPERTY: Flow =
    Flow { quotes: "/api/property/quotes", orders: "/api/property/orders", notify: "/api/property/payments/notify" };

/// Who refunds a paid order: the biller with its signed call, or the operator.
#[derive(Clone)]
enum Refunder {
    Partner { id: String, secret: String },
    Operator,
}

/// A utility or property customer: their account or room, the budget their discounts come from, their coupon.
#[derive(Clone)]
struct Payer {
    name: String,
    api0: Api,
    api1: Api,
    token: String,
    flow: Flow,
    /// The quote body's fixed part (`biller_id`, `account_no` or `room_id`).
    target: Value,
    partner: String,
    budget: String,
    refunder: Refunder,
    coupon: Option<String>,
    book: Shared,
}

/// What a quote pays for: bills, or an amount (exact_down billers).
#[derive(Clone, Copy)]
enum Items<'a> {
    Bills(&'a [&'a str]),
    Amount(i64),
}

impl Payer {
    fn quote_body(&self, items: Items<'_>, how: How, with_coupon: bool) -> Value {
        let mut body = self.target.clone();
        match items {
            Items::Bills(ids) => body["bill_ids"] = json!(ids),
            Items::Amount(fen) => body["amount_fen"] = json!(fen),
        }
        if let (Value::Object(fields), Value::Object(extra)) = (&mut body, how.quote_fields()) {
            fields.extend(extra);
        }
        if with_coupon {
            body["coupon_id"] = json!(self.coupon.as_deref().expect("a claimed coupon"));
        }
        body
    }

    /// Quotes and places an order; returns it. A quote is sent again after contention only at `t0`: at `t1` a
    /// contended quote might have reserved a discount the test could not account for.
    async fn order(&self, api: &Api, items: Items<'_>, how: How, with_coupon: bool, key: &str) -> Value {
        let body = self.quote_body(items, how, with_coupon);
        let at_t0 = api.now == self.api0.now;
        let mut attempts = 0;
        let q = loop {
            let q = api.send("POST", self.flow.quotes, Some(&body), Some(&self.token)).await;
            attempts += 1;
            if !(at_t0 && retryable(&q) && attempts < MAX_ATTEMPTS) {
                break q;
            }
        };
        assert_eq!(q.status, 201, "{}: quote {body}: {:?}", self.name, q.body);
        let quote_id = q.body["quote_id"].as_str().expect("quote id").to_owned();
        let key = format!("{}-{key}", self.name);
        let placed = retried(&key, || api.place_order(self.flow.orders, &self.token, &quote_id, &key)).await;
        assert_eq!(placed.status, 201, "{}: order {body}: {:?}", self.name, placed.body);
        let order = placed.body["order"].clone();
        assert_eq!(order["state"], "pending_payment", "{order}");
        if with_coupon {
            assert_eq!(discount_of(&order, &["coupon"]), COUPON_FEN, "{}: the coupon applies: {order}", self.name);
        }
        order
    }

    fn rec(&self, order: &Value, end: End) -> Rec {
        let bank_fen = discount_of(order, &["cardholder_discount"]);
        let coupon_fen = discount_of(order, &["coupon"]);
        Rec {
            order_id: id_of(order),
            partner: self.partner.clone(),
            budget: self.budget.clone(),
            bank_fen,
            coupon_fen,
            gross_fen: total(order) + bank_fen + coupon_fen,
            total_fen: total(order),
            refunded_fen: 0,
            end,
        }
    }

    async fn notify(&self, api: &Api, order: &Value, evt: &str, status: &str, how: How) -> Reply {
        gateway(api, self.flow.notify, order, evt, status, how).await
    }

    /// The gateway reports the order paid: it is paid, nothing to refund.
    async fn pay(&self, api: &Api, order: &Value, evt: &str, how: How) {
        let r = self.notify(api, order, evt, "succeeded", how).await;
        paid_once(&r);
        book(&self.book).orders.push(self.rec(order, End::Paid));
    }

    async fn fail(&self, api: &Api, order: &Value, evt: &str, how: How) {
        let r = self.notify(api, order, evt, "failed", how).await;
        assert_eq!(r.body["state"], "failed", "{r:?}");
    }

    /// Money for an order that cannot take it: the order stays `state`, the money is to be refunded.
    async fn exception(&self, api: &Api, order: &Value, evt: &str, how: How, state: &str, reason: &str) {
        let r = self.notify(api, order, evt, "succeeded", how).await;
        expect_exception(&r, evt, total(order), state, reason);
        book(&self.book).exceptions.insert(evt.to_owned(), total(order));
    }

    fn pending(&self, order: &Value) {
        book(&self.book).orders.push(self.rec(order, End::Pending));
    }

    /// Refunds a paid order: `amount_fen` of it (it stays paid), or all that is left.
    async fn refund(&self, api: &Api, order: &Value, amount_fen: Option<i64>) {
        let path = format!("{}/{}/refund", self.flow.orders, id_of(order));
        let key = format!("refund-{}-{amount_fen:?}", id_of(order));
        let body = amount_fen.map(|fen| json!({ "amount_fen": fen }).to_string().into_bytes()).unwrap_or_default();
        let (path_ref, body_ref) = (path.as_str(), body.as_slice());
        let r = retried(&path, || {
            let mut headers = match &self.refunder {
                Refunder::Partner { id, secret } => api.partner_headers(id, secret, "POST", path_ref, body_ref),
                Refunder::Operator => vec![("authorization".to_owned(), format!("Bearer {OPERATOR_TOKEN}"))],
            };
            headers.push(("idempotency-key".to_owned(), key.clone()));
            headers.push(("content-type".to_owned(), "application/json".to_owned()));
            async move { api.send_raw("POST", path_ref, body_ref.to_vec(), &headers).await }
        })
        .await;
        let mut book = book(&self.book);
        let rec = book.orders.iter_mut().find(|o| o.order_id == id_of(order)).expect("a paid order");
        assert_eq!(rec.end, End::Paid);
        let state = match amount_fen {
            Some(fen) => {
                rec.refunded_fen += fen;
                "paid"
            }
            None => {
                rec.end = End::Refunded;
                "refunded"
            }
        };
        assert_eq!(
            (r.status, r.body["state"].as_str(), r.body["refunded_fen"].as_i64()),
            (200, Some(state), Some(if state == "paid" { rec.refunded_fen } else { rec.total_fen })),
            "{}: {:?}",
            self.name,
            r.body
        );
    }

    /// The same notification (same event id) three times at once: one payment, no exception.
    async fn pay_repeatedly(&self, api: &Api, order: &Value, evt: &str, how: How) {
        self.pay(api, order, evt, how).await;
        let (a, b, c) = tokio::join!(
            self.notify(api, order, evt, "succeeded", how),
            self.notify(api, order, evt, "succeeded", how),
            self.notify(api, order, evt, "succeeded", how)
        );
        for r in [a, b, c] {
            paid_once(&r);
        }
    }

    /// Two captures (two event ids) of one order at once: one pays it, the other is an exception.
    async fn captured_twice_at_once(&self, api: &Api, order: &Value, how: How) {
        let (first, second) = (format!("{}-cap-a", self.name), format!("{}-cap-b", self.name));
        let (a, b) = tokio::join!(
            self.notify(api, order, &first, "succeeded", how),
            self.notify(api, order, &second, "succeeded", how)
        );
        let (paid, extra, extra_id) = match (&a.body["refund_instruction"], &b.body["refund_instruction"]) {
            (Value::Null, Value::Object(_)) => (a, b, second),
            (Value::Object(_), Value::Null) => (b, a, first),
            _ => panic!("{}: exactly one capture pays: {a:?} {b:?}", self.name),
        };
        assert_eq!(paid.body["state"], "paid", "{paid:?}");
        expect_exception(&extra, &extra_id, total(order), "paid", "duplicate_payment");
        let mut book = book(&self.book);
        book.orders.push(self.rec(order, End::Paid));
        book.exceptions.insert(extra_id, total(order));
    }
}

/// The gateway's notification of `order` (`succeeded` for its total, or `failed`), sent until not contended.
async fn gateway(api: &Api, path: &str, order: &Value, evt: &str, status: &str, how: How) -> Reply {
    let paid_fen = if status == "succeeded" { total(order) } else { 0 };
    let body = event(evt, &id_of(order), status, paid_fen, how.bin(), &api.now.to_rfc3339());
    let r = retried(evt, || api.notify(path, &body)).await;
    assert_eq!(r.status, 200, "{evt}: {:?}", r.body);
    r
}

/// The answer to a notification that paid the order (or repeated the one that did): nothing to refund.
#[track_caller]
fn paid_once(r: &Reply) {
    assert_eq!((r.body["state"].as_str(), &r.body["refund_instruction"]), (Some("paid"), &Value::Null), "{r:?}");
}

#[track_caller]
fn expect_exception(r: &Reply, evt: &str, amount_fen: i64, state: &str, reason: &str) {
    let instruction = &r.body["refund_instruction"];
    assert_eq!(
        (
            r.body["state"].as_str(),
            instruction["event_id"].as_str(),
            instruction["amount_fen"].as_i64(),
            instruction["reason"].as_str()
        ),
        (Some(state), Some(evt), Some(amount_fen), Some(reason)),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// What each utility or property customer does

/// A customer's day. Each runs its `t0` part, then (after the barrier) its `t1` part.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// Pays; the gateway sends the same notification three more times at once.
    PaidRepeatedly(How),
    /// Two captures of one order at once.
    CapturedTwiceAtOnce,
    /// The payment fails; a new quote (the same coupon, if any) is paid.
    FailsThenPaysAgain { coupon: bool },
    /// The payment fails, then the gateway reports it succeeded after all (an exception); paid again by wallet.
    FailsThenSucceedsLate,
    /// An order abandoned at `t0` (with the coupon, if any). At `t1` money for it may still arrive (an exception),
    /// and a new quote is paid or left pending.
    Abandons { coupon: bool, late_payment: bool, then: Then },
    /// Paid, then refunded (at `t0` or `t1`).
    PaidThenRefunded { how: How, at_t1: bool },
    /// Paid at `t0`; part of it refunded at `t0` and part at `t1` (it stays paid).
    PaidThenPartlyRefunded { how: How, parts: (i64, i64) },
    /// Paid at `t0`; a second capture arrives at `t1`.
    PaidThenCapturedAgainLater,
    /// The first bill paid at `t0` (with the coupon, if any); the second ordered at `t1` and left pending.
    PaysOneLeavesOnePending { coupon: bool, second: How },
    /// An order placed at `t0` and never heard of again (nobody reads it, no money comes): an amount for an
    /// exact_down biller, or the first bill.
    WalksAway { amount_fen: Option<i64> },
    /// Only at `t1`: an order left pending.
    PendingAtT1 { how: How, coupon: bool },
    /// An exact_down bill paid in two parts; the second at `t1`, paid or left pending, and a second capture of the
    /// first part at `t1`.
    PaysInParts { first: (i64, How), second: (i64, How), second_paid: bool, capture_again: bool },
}

#[derive(Debug, Clone, Copy)]
enum Then {
    Pay(How),
    Pending(How),
}

async fn run(p: Payer, script: Script, bills: Vec<String>, barrier: Arc<Barrier>) {
    let (t0, t1) = (&p.api0, &p.api1);
    let name = p.name.clone();
    let bill = |i: usize| [bills[i].as_str()];
    match script {
        Script::PaidRepeatedly(how) => {
            let order = p.order(t0, Items::Bills(&bill(0)), how, false, "1").await;
            p.pay_repeatedly(t0, &order, &format!("{name}-evt"), how).await;
            barrier.wait().await;
        }
        Script::CapturedTwiceAtOnce => {
            let order = p.order(t0, Items::Bills(&bill(0)), How::Bank, false, "1").await;
            p.captured_twice_at_once(t0, &order, How::Bank).await;
            barrier.wait().await;
        }
        Script::FailsThenPaysAgain { coupon } => {
            let failed = p.order(t0, Items::Bills(&bill(0)), How::Bank, coupon, "1").await;
            p.fail(t0, &failed, &format!("{name}-fail"), How::Bank).await;
            let again = p.order(t0, Items::Bills(&bill(0)), How::Bank, coupon, "2").await;
            p.pay(t0, &again, &format!("{name}-evt"), How::Bank).await;
            barrier.wait().await;
        }
        Script::FailsThenSucceedsLate => {
            let failed = p.order(t0, Items::Bills(&bill(0)), How::Bank, false, "1").await;
            p.fail(t0, &failed, &format!("{name}-fail"), How::Bank).await;
            p.exception(t0, &failed, &format!("{name}-late"), How::Bank, "failed", "paid_after_failure").await;
            let again = p.order(t0, Items::Bills(&bill(0)), How::Wallet, false, "2").await;
            p.pay(t0, &again, &format!("{name}-evt"), How::Wallet).await;
            barrier.wait().await;
        }
        Script::Abandons { coupon, late_payment, then } => {
            let abandoned = p.order(t0, Items::Bills(&bill(0)), How::Bank, coupon, "1").await;
            barrier.wait().await;
            if late_payment {
                let evt = format!("{name}-late");
                p.exception(t1, &abandoned, &evt, How::Bank, "expired", "paid_after_expiry").await;
            }
            match then {
                Then::Pay(how) => {
                    let order = p.order(t1, Items::Bills(&bill(0)), how, coupon, "2").await;
                    p.pay(t1, &order, &format!("{name}-evt"), how).await;
                }
                Then::Pending(how) => {
                    let order = p.order(t1, Items::Bills(&bill(0)), how, coupon, "2").await;
                    p.pending(&order);
                }
            }
        }
        Script::PaidThenRefunded { how, at_t1 } => {
            let order = p.order(t0, Items::Bills(&bill(0)), how, false, "1").await;
            p.pay(t0, &order, &format!("{name}-evt"), how).await;
            if !at_t1 {
                p.refund(t0, &order, None).await;
            }
            barrier.wait().await;
            if at_t1 {
                p.refund(t1, &order, None).await;
            }
        }
        Script::PaidThenPartlyRefunded { how, parts } => {
            let order = p.order(t0, Items::Bills(&bill(0)), how, false, "1").await;
            p.pay(t0, &order, &format!("{name}-evt"), how).await;
            p.refund(t0, &order, Some(parts.0)).await;
            barrier.wait().await;
            p.refund(t1, &order, Some(parts.1)).await;
        }
        Script::PaidThenCapturedAgainLater => {
            let order = p.order(t0, Items::Bills(&bill(0)), How::Bank, false, "1").await;
            p.pay(t0, &order, &format!("{name}-evt"), How::Bank).await;
            barrier.wait().await;
            p.exception(t1, &order, &format!("{name}-again"), How::Bank, "paid", "duplicate_payment").await;
        }
        Script::PaysOneLeavesOnePending { coupon, second } => {
            let order = p.order(t0, Items::Bills(&bill(0)), How::Bank, coupon, "1").await;
            p.pay(t0, &order, &format!("{name}-evt"), How::Bank).await;
            barrier.wait().await;
            let open = p.order(t1, Items::Bills(&bill(1)), second, false, "2").await;
            p.pending(&open);
        }
        Script::WalksAway { amount_fen } => {
            let first = bill(0);
            let items = amount_fen.map_or(Items::Bills(&first), Items::Amount);
            p.order(t0, items, How::Bank, false, "1").await;
            barrier.wait().await;
        }
        Script::PendingAtT1 { how, coupon } => {
            barrier.wait().await;
            let open = p.order(t1, Items::Bills(&bill(0)), how, coupon, "1").await;
            p.pending(&open);
        }
        Script::PaysInParts { first, second, second_paid, capture_again } => {
            let part = p.order(t0, Items::Amount(first.0), first.1, false, "1").await;
            p.pay(t0, &part, &format!("{name}-evt-1"), first.1).await;
            barrier.wait().await;
            if capture_again {
                p.exception(t1, &part, &format!("{name}-again"), first.1, "paid", "duplicate_payment").await;
            }
            let rest = p.order(t1, Items::Amount(second.0), second.1, false, "2").await;
            if second_paid {
                p.pay(t1, &rest, &format!("{name}-evt-2"), second.1).await;
            } else {
                p.pending(&rest);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Campus: students top up and spend

#[derive(Clone)]
struct Student {
    name: String,
    api0: Api,
    api1: Api,
    token: String,
    card: String,
    canteen: crate::campus_card::Partner,
    shop: crate::campus_card::Partner,
    book: Shared,
}

const SCHOOL: &str = "md_uni";
const SCHOOL_BUDGET: &str = "md_uni_bonus";
const CAMPUS_NOTIFY: &str = "/api/campus/payments/notify";

impl Student {
    async fn top_up(&self, api: &Api, amount_fen: i64, how: How, key: &str) -> Value {
        let body = match how {
            How::Wallet => topup_body(&self.card, amount_fen, None),
            other => topup_body(&self.card, amount_fen, other.bin()),
        };
        let key = format!("{}-{key}", self.name);
        let placed = retried(&key, || topup(api, &self.token, &key, &body)).await;
        assert_eq!(placed.status, 201, "{}: {:?}", self.name, placed.body);
        placed.body["order"].clone()
    }

    fn rec(&self, order: &Value, end: End) -> Rec {
        Rec {
            order_id: id_of(order),
            partner: SCHOOL.to_owned(),
            budget: SCHOOL_BUDGET.to_owned(),
            bank_fen: discount_of(order, &["topup_bonus"]),
            coupon_fen: 0,
            gross_fen: 0,
            total_fen: total(order),
            refunded_fen: 0,
            end,
        }
    }

    async fn notify(&self, api: &Api, order: &Value, evt: &str, status: &str, how: How) -> Reply {
        gateway(api, CAMPUS_NOTIFY, order, evt, status, how).await
    }

    async fn pay(&self, api: &Api, order: &Value, evt: &str, how: How) {
        let r = self.notify(api, order, evt, "succeeded", how).await;
        paid_once(&r);
        let rec = self.rec(order, End::Paid);
        let mut book = book(&self.book);
        *book.cards.entry(self.card.clone()).or_default() += rec.total_fen + rec.bank_fen;
        book.orders.push(rec);
    }

    /// The operator refunds a paid top-up to its instrument.
    async fn refund(&self, api: &Api, order: &Value) {
        let path = format!("/api/campus/orders/{}/refund", id_of(order));
        let headers = vec![
            ("authorization".to_owned(), format!("Bearer {OPERATOR_TOKEN}")),
            ("idempotency-key".to_owned(), format!("refund-{}", id_of(order))),
        ];
        let r = retried(&path, || api.send_raw("POST", &path, Vec::new(), &headers)).await;
        assert_eq!((r.status, r.body["state"].as_str()), (200, Some("refunded")), "{}: {:?}", self.name, r.body);
        let mut book = book(&self.book);
        let rec = book.orders.iter_mut().find(|o| o.order_id == id_of(order)).expect("a paid top-up");
        rec.end = End::Refunded;
        let credited = rec.total_fen + rec.bank_fen;
        *book.cards.entry(self.card.clone()).or_default() -= credited;
    }

    /// Spends at the canteen and the shop at once; `reverse` has the canteen reverse its first one.
    async fn spend(&self, api: &Api, amounts: &[i64], tag: &str, reverse: bool) {
        let mut spends = JoinSet::new();
        for (i, fen) in amounts.iter().copied().enumerate() {
            let (pos, merchant) = if i % 2 == 0 { (&self.canteen, "md_canteen") } else { (&self.shop, "md_shop") };
            let body = by_card(&format!("{}-{tag}-{i}", self.name), &self.card, fen);
            let (api, pos) = (api.clone(), pos.clone());
            spends.spawn(async move {
                let r = retried("spend", || spend(&api, &pos, &body)).await;
                assert_eq!(r.status, 201, "{body}: {:?}", r.body);
                (i, merchant, fen, r.body["spend_id"].as_str().expect("spend id").to_owned())
            });
        }
        let mut done = Vec::new();
        while let Some(joined) = spends.join_next().await {
            done.push(joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
        }
        done.sort();
        for (_, merchant, fen, _) in &done {
            let mut book = book(&self.book);
            *book.spends.entry((*merchant).to_owned()).or_default() += fen;
            *book.cards.entry(self.card.clone()).or_default() -= fen;
        }
        if reverse {
            let (_, merchant, fen, spend_id) = &done[0];
            let path = format!("/api/campus/spend/{spend_id}/reverse");
            let pos = &self.canteen;
            let r = retried("reverse", || api.partner(&pos.id, &pos.secret, "POST", &path, None)).await;
            assert_eq!((r.status, r.body["state"].as_str()), (200, Some("reversed")), "{:?}", r.body);
            let mut book = book(&self.book);
            *book.spends.entry((*merchant).to_owned()).or_default() -= fen;
            *book.cards.entry(self.card.clone()).or_default() += fen;
        }
    }
}

/// A student's day, by number.
async fn student_day(s: Student, n: usize, barrier: Arc<Barrier>) {
    let (t0, t1) = (&s.api0, &s.api1);
    let name = s.name.clone();
    match n {
        // Tops up by the bank's card (a bonus while the budget lasts), spends, spends again later.
        0 => {
            let order = s.top_up(t0, 20_000, How::Bank, "1").await;
            s.pay(t0, &order, &format!("{name}-evt"), How::Bank).await;
            s.spend(t0, &[1_200, 800, 450], "a", false).await;
            barrier.wait().await;
            s.spend(t1, &[650, 300], "b", false).await;
        }
        // The first top-up fails (its bonus comes back at once), the second is paid.
        1 => {
            let failed = s.top_up(t0, 15_000, How::Bank, "1").await;
            let r = s.notify(t0, &failed, &format!("{name}-fail"), "failed", How::Bank).await;
            assert_eq!(r.body["state"], "failed", "{r:?}");
            let order = s.top_up(t0, 15_000, How::Bank, "2").await;
            s.pay(t0, &order, &format!("{name}-evt"), How::Bank).await;
            s.spend(t0, &[900, 1_100], "a", false).await;
            barrier.wait().await;
        }
        // A wallet top-up captured twice; the canteen reverses a spend.
        2 => {
            let order = s.top_up(t0, 10_000, How::Wallet, "1").await;
            s.pay(t0, &order, &format!("{name}-evt"), How::Wallet).await;
            let evt = format!("{name}-again");
            let r = s.notify(t0, &order, &evt, "succeeded", How::Wallet).await;
            expect_exception(&r, &evt, total(&order), "paid", "duplicate_payment");
            book(&s.book).exceptions.insert(evt, total(&order));
            s.spend(t0, &[700, 1_500, 250], "a", true).await;
            barrier.wait().await;
            s.spend(t1, &[400], "b", false).await;
        }
        // Paid with repeated notifications; at t1 another top-up by the bank's card is left pending.
        3 => {
            let order = s.top_up(t0, 30_000, How::Bank, "1").await;
            s.pay(t0, &order, &format!("{name}-evt"), How::Bank).await;
            let evt = format!("{name}-evt");
            let (a, b) = tokio::join!(
                s.notify(t0, &order, &evt, "succeeded", How::Bank),
                s.notify(t0, &order, &evt, "succeeded", How::Bank)
            );
            for r in [a, b] {
                paid_once(&r);
            }
            s.spend(t0, &[2_000, 350], "a", false).await;
            barrier.wait().await;
            let open = s.top_up(t1, 10_000, How::Bank, "2").await;
            book(&s.book).orders.push(s.rec(&open, End::Pending));
        }
        // A bank-card top-up abandoned at t0, a wallet one and another bank-card one paid; at t1 the operator
        // refunds the bank-card one (bonus included) while the card holds it, then the student spends.
        _ => {
            let _abandoned = s.top_up(t0, 5_000, How::Bank, "1").await;
            let order = s.top_up(t0, 8_000, How::Wallet, "2").await;
            s.pay(t0, &order, &format!("{name}-evt"), How::Wallet).await;
            let refunded = s.top_up(t0, 6_000, How::Bank, "3").await;
            s.pay(t0, &refunded, &format!("{name}-evt-3"), How::Bank).await;
            barrier.wait().await;
            s.refund(t1, &refunded).await;
            s.spend(t1, &[600, 900, 300], "b", false).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Who does what

/// A customer of the day: whose customer (biller or community), their room (property only), their bills
/// (id, amount), what they do, and whether they claim a bill coupon first.
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    partner: &'static str,
    room: String,
    bills: Vec<(String, i64)>,
    script: Script,
    coupon: bool,
}

fn plan(name: &str, partner: &'static str, room: &str, bills: &[(&str, i64)], script: Script, coupon: bool) -> Plan {
    let bills = bills.iter().map(|(id, fen)| ((*id).to_owned(), *fen)).collect();
    Plan { name: name.to_owned(), partner, room: room.to_owned(), bills, script, coupon }
}

impl Plan {
    /// The same customer in round `r`: their own name, room and bills.
    fn in_round(&self, r: usize) -> Plan {
        let tag = |s: &str| if s.is_empty() { String::new() } else { format!("{s}r{r}") };
        let bills = self.bills.iter().map(|(id, fen)| (tag(id), *fen)).collect();
        Plan { name: tag(&self.name), room: tag(&self.room), bills, ..self.clone() }
    }
}

/// Utility customers: water and gas bills are paid exactly, power bills (exact_down) in parts.
fn utility_plan() -> Vec<Plan> {
    let parts =
        |first, second, second_paid, capture_again| Script::PaysInParts { first, second, second_paid, capture_again };
    vec![
        plan("u0", "md_water", "", &[("W0", 8_650)], Script::PaidRepeatedly(How::Bank), false),
        plan("u1", "md_water", "", &[("W1", 7_320)], Script::CapturedTwiceAtOnce, false),
        plan("u2", "md_water", "", &[("W2", 9_100)], Script::FailsThenPaysAgain { coupon: false }, false),
        plan("u3", "md_water", "", &[("W3", 6_400)], abandons(false, true, Then::Pay(How::Bank)), false),
        plan(
            "u4",
            "md_water",
            "",
            &[("W4a", 5_600), ("W4b", 5_200)],
            Script::PaysOneLeavesOnePending { coupon: true, second: How::Bank },
            true,
        ),
        plan(
            "u5",
            "md_gas",
            "",
            &[("G5", 8_800)],
            Script::PaidThenRefunded { how: How::OtherCard, at_t1: false },
            false,
        ),
        plan("u6", "md_gas", "", &[("G6", 7_700)], Script::PaidThenRefunded { how: How::Bank, at_t1: true }, false),
        plan("u7", "md_gas", "", &[("G7", 9_900)], Script::FailsThenSucceedsLate, false),
        plan("u8", "md_gas", "", &[("G8", 6_600)], abandons(true, false, Then::Pay(How::Bank)), true),
        plan(
            "u9",
            "md_power",
            "",
            &[("E9", 12_000)],
            parts((5_000, How::Bank), (7_000, How::Wallet), true, true),
            false,
        ),
        plan(
            "u10",
            "md_power",
            "",
            &[("E10", 8_000)],
            parts((3_000, How::Wallet), (2_000, How::Bank), false, false),
            false,
        ),
        plan("u11", "md_water", "", &[("W11", 7_000)], Script::FailsThenPaysAgain { coupon: true }, true),
        plan("u12", "md_gas", "", &[("G12", 5_500)], Script::PendingAtT1 { how: How::Bank, coupon: true }, true),
        plan("u13", "md_water", "", &[("W13", 6_100)], Script::PaidRepeatedly(How::Wallet), false),
        plan("u14", "md_gas", "", &[("G14", 6_000)], Script::PendingAtT1 { how: How::Bank, coupon: false }, false),
        plan("u15", "md_water", "", &[("W15", 9_300)], partly_refunded(How::Bank, (1_000, 2_500)), false),
        plan("u16", "md_gas", "", &[("G16", 6_300)], partly_refunded(How::Wallet, (300, 700)), false),
        // The power budget is never exhausted: nothing sweeps this walk-away's reservation before the budget is read.
        plan("u17", "md_power", "", &[("E17", 9_000)], Script::WalksAway { amount_fen: Some(8_000) }, false),
    ]
}

/// Property owners of two communities.
fn property_plan() -> Vec<Plan> {
    vec![
        plan("p0", "md_pine", "PR-0", &[("PF0", 25_000)], Script::PaidRepeatedly(How::Bank), false),
        plan(
            "p1",
            "md_pine",
            "PR-1",
            &[("PF1", 25_000)],
            Script::PaidThenRefunded { how: How::Bank, at_t1: true },
            false,
        ),
        plan(
            "p2",
            "md_pine",
            "PR-2",
            &[("PF2", 25_000), ("PK2", 20_000)],
            Script::PaysOneLeavesOnePending { coupon: true, second: How::Wallet },
            true,
        ),
        plan("p3", "md_pine", "PR-3", &[("PF3", 25_000)], abandons(false, false, Then::Pending(How::Bank)), false),
        plan("p4", "md_oak", "OR-4", &[("OF4", 18_000)], Script::CapturedTwiceAtOnce, false),
        plan("p5", "md_oak", "OR-5", &[("OF5", 18_000)], Script::PaidRepeatedly(How::OtherCard), true),
        plan("p6", "md_oak", "OR-6", &[("OF6", 18_000)], abandons(false, true, Then::Pay(How::Bank)), false),
        plan("p7", "md_oak", "OR-7", &[("OF7", 18_000)], Script::PaidThenCapturedAgainLater, false),
        plan("p8", "md_oak", "OR-8", &[("OF8", 18_000)], Script::FailsThenPaysAgain { coupon: false }, false),
        plan("p9", "md_oak", "OR-9", &[("OF9", 18_000)], partly_refunded(How::Bank, (5_000, 3_000)), false),
    ]
}

fn partly_refunded(how: How, parts: (i64, i64)) -> Script {
    Script::PaidThenPartlyRefunded { how, parts }
}

fn abandons(coupon: bool, late_payment: bool, then: Then) -> Script {
    Script::Abandons { coupon, late_payment, then }
}

// ---------------------------------------------------------------------------------------------------------------
// Set-up

fn biller(id: &str, category: &str, exactness: &str, budget_id: &str, budget_fen: i64, cap_fen: i64) -> Value {
    json!({
        "id": id, "name": format!("{id} company"), "category": category, "city": "shenzhen",
        "account_rule": {"min_len": 8, "max_len": 10, "charset": "digits"},
        "exactness": exactness, "settlement_account": "6222000011112222",
        "discount": {"percent_bp": 500, "cap_fen": cap_fen, "budget_id": budget_id, "budget_fen": budget_fen}
    })
}

fn community(id: &str, budget_id: &str, budget_fen: i64, cap_fen: i64) -> Value {
    json!({
        "id": id, "name": format!("{id} garden"), "city": "shenzhen", "property_company": "Mixed Service",
        "settlement_account": "6222000055556666",
        "owner_discount": {"percent_bp": 500, "cap_fen": cap_fen, "budget_id": budget_id, "budget_fen": budget_fen}
    })
}

/// `(partner_id, partner_secret)` of an onboarding reply.
fn credentials(r: &Reply) -> (String, String) {
    assert_eq!(r.status, 201, "{:?}", r.body);
    let s = |f: &str| r.body[f].as_str().unwrap_or_else(|| panic!("no {f} in {:?}", r.body)).to_owned();
    (s("partner_id"), s("partner_secret"))
}

/// Student `n`'s card activation code.
fn activation(n: usize) -> String {
    format!("5{n:05}")
}

/// A GET as the operator at `api`'s clock, which must answer 200.
async fn operator_get(api: &Api, path: &str) -> Value {
    let r = api.send("GET", path, None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    r.body
}

// ---------------------------------------------------------------------------------------------------------------
// The day

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_of_mixed_traffic_reconciles_budgets_statements_exceptions_and_the_ledger() {
    mixed_day(TestApp::spawn().await.expect("app")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_day_on_the_sqlite_store_reconciles_too() {
    scenefin_e2e::host_only!("the host's SQLite store (spawn_on)");
    mixed_day(TestApp::spawn_on(KvKind::Sqlite).await.expect("app")).await;
}

async fn mixed_day(app: TestApp) {
    let started = Instant::now();
    let api0 = app.api.clone();
    let mut api1 = app.api.clone();
    api1.now = api0.now.plus_secs(40 * 60);
    let t0: Timestamp = api0.now;
    let shared: Shared = Arc::default();

    // Utility: water and gas (exact), power (exact_down), each with a small cardholder discount budget.
    let billers = [
        ("md_water", "water", "exact", "md_water_card", 2_000, 1_000),
        ("md_gas", "gas", "exact", "md_gas_card", 1_500, 800),
        ("md_power", "power", "exact_down", "md_power_card", 3_000, 1_000),
    ];
    let mut biller_creds = BTreeMap::new();
    for (id, category, exactness, budget, fen, cap) in billers {
        let b = register(&api0, biller(id, category, exactness, budget, fen, cap)).await;
        biller_creds.insert(id, (b.partner_id, b.secret));
    }
    // Property: two communities, each with a small owner discount budget.
    let mut community_creds = BTreeMap::new();
    for (id, budget, fen, cap) in [("md_pine", "md_pine_owner", 3_000, 2_000), ("md_oak", "md_oak_owner", 2_500, 1_500)]
    {
        let body = community(id, budget, fen, cap);
        let r = api0.send("POST", "/api/property/communities", Some(&body), Some(OPERATOR_TOKEN)).await;
        community_creds.insert(id, credentials(&r));
    }
    // Every customer of the plans, ROUNDS times over (own names, accounts, rooms and bills).
    let rounds = |plans: fn() -> Vec<Plan>| -> Vec<Plan> {
        (0..ROUNDS).flat_map(|r| plans().into_iter().map(move |p| p.in_round(r))).collect()
    };
    let (utility, property) = (rounds(utility_plan), rounds(property_plan));
    let students = 5 * ROUNDS;
    // Bills and rooms, uploaded by the partners.
    for (biller_id, (pid, secret)) in &biller_creds {
        let bills: Vec<Value> = utility
            .iter()
            .enumerate()
            .filter(|(_, u)| u.partner == *biller_id)
            .flat_map(|(i, u)| {
                u.bills.iter().map(move |(id, fen)| {
                    json!({"bill_id": id, "account_no": format!("8800{i:04}"), "period": "2026-11", "amount_fen": fen,
                           "due_date": "2026-12-31", "holder_name": "张三丰"})
                })
            })
            .collect();
        let path = format!("/api/utility/billers/{biller_id}/bills");
        let r = api0.partner(pid, secret, "PUT", &path, Some(&json!({ "bills": bills }))).await;
        assert_eq!((r.status, &r.body["rejected"]), (200, &json!([])), "{:?}", r.body);
    }
    for (community_id, (pid, secret)) in &community_creds {
        let mine: Vec<&Plan> = property.iter().filter(|p| p.partner == *community_id).collect();
        let rooms: Vec<Value> = mine
            .iter()
            .map(|p| {
                json!({"room_id": p.room, "building": "1", "unit": "1", "number": p.room, "owner_name": "王五",
                       "area_m2": 90, "monthly_fee_fen": 25_000})
            })
            .collect();
        let path = format!("/api/property/communities/{community_id}/rooms");
        let r = api0.partner(pid, secret, "PUT", &path, Some(&json!({ "rooms": rooms }))).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let bills: Vec<Value> = mine
            .iter()
            .flat_map(|p| {
                p.bills.iter().map(move |(id, fen)| {
                    json!({"bill_id": id, "room_id": p.room, "cost_type": "property", "period": "2026-11",
                           "amount_fen": fen, "due_date": "2026-12-31"})
                })
            })
            .collect();
        let path = format!("/api/property/communities/{community_id}/bills");
        let r = api0.partner(pid, secret, "PUT", &path, Some(&json!({ "bills": bills }))).await;
        assert_eq!((r.status, &r.body["rejected"]), (200, &json!([])), "{:?}", r.body);
    }
    // Coupons for bills: stock and budget for exactly the coupons customers will claim.
    onboard_merchant(&api0, "md_grid_shop", "futian", &["g1"]).await;
    let wanted = utility.iter().chain(&property).filter(|p| p.coupon).count();
    let coupons = with(
        campaign(COUPONS, &["md_grid_shop"]),
        json!({"coupon": {"type": "fixed_off", "amount_fen": COUPON_FEN, "min_spend_fen": 5_000},
               "stock_total": wanted, "budget_fen": wanted as i64 * COUPON_FEN, "applies_to": ["utility", "property"]}),
    );
    create_campaign(&api0, &coupons).await;
    // Campus: a school with a small top-up bonus budget, a canteen and a shop, five students a round.
    let bonus = json!({"percent_bp": 200, "cap_fen": 500, "budget_id": SCHOOL_BUDGET, "budget_fen": 1_200});
    let school = onboard_school(&api0, SCHOOL, Some(bonus)).await;
    let canteen = add_merchant(&api0, &school, SCHOOL, "md_canteen", "canteen").await;
    let shop = add_merchant(&api0, &school, SCHOOL, "md_shop", "shop").await;
    let members: Vec<Value> =
        (0..students).map(|i| member(&format!("M{i}"), "student", "李雷", "2030-07-31", &activation(i))).collect();
    issue(&api0, &school, SCHOOL, &members).await;

    // Everyone logs in (claiming coupons and rooms, binding cards) and goes about their day at once.
    let tasks_total = utility.len() + property.len() + students;
    let barrier = Arc::new(Barrier::new(tasks_total));
    let mut tasks = JoinSet::new();
    for (i, u) in utility.iter().enumerate() {
        let (pid, secret) = biller_creds[&u.partner].clone();
        let budget = billers.iter().find(|b| b.0 == u.partner).expect("biller").3.to_owned();
        let target = json!({"biller_id": u.partner, "account_no": format!("8800{i:04}")});
        let bills: Vec<String> = u.bills.iter().map(|(id, _)| id.clone()).collect();
        let (name, partner, script, wants_coupon) = (u.name.clone(), u.partner.to_owned(), u.script, u.coupon);
        let (api0, api1, shared, barrier) = (api0.clone(), api1.clone(), shared.clone(), barrier.clone());
        tasks.spawn(async move {
            let customer = login(&api0, &format!("wx_md_{name}"), None).await;
            let coupon = claim_coupon(&api0, &customer.token, &name, wants_coupon, &shared).await;
            let refunder = Refunder::Partner { id: pid, secret };
            let p = Payer {
                name,
                api0,
                api1,
                token: customer.token,
                flow: UTILITY,
                target,
                partner,
                budget,
                refunder,
                coupon,
                book: shared,
            };
            run(p, script, bills, barrier).await;
        });
    }
    for p in &property {
        let budget = if p.partner == "md_pine" { "md_pine_owner" } else { "md_oak_owner" }.to_owned();
        let bills: Vec<String> = p.bills.iter().map(|(id, _)| id.clone()).collect();
        let (name, partner, room, script, wants_coupon) =
            (p.name.clone(), p.partner.to_owned(), p.room.clone(), p.script, p.coupon);
        let (api0, api1, shared, barrier) = (api0.clone(), api1.clone(), shared.clone(), barrier.clone());
        tasks.spawn(async move {
            let customer = login(&api0, &format!("wx_md_{name}"), None).await;
            let claim = json!({"community_id": partner, "room_id": room, "owner_name": "王五"});
            let households = || api0.send("POST", "/api/property/households", Some(&claim), Some(&customer.token));
            let r = retried("household", households).await;
            assert_eq!(r.status, 201, "{name}: {:?}", r.body);
            let coupon = claim_coupon(&api0, &customer.token, &name, wants_coupon, &shared).await;
            let p = Payer {
                name,
                api0,
                api1,
                token: customer.token,
                flow: PROPERTY,
                target: json!({"room_id": room}),
                partner,
                budget,
                refunder: Refunder::Operator,
                coupon,
                book: shared,
            };
            run(p, script, bills, barrier).await;
        });
    }
    for n in 0..students {
        let (api0, api1, shared, barrier) = (api0.clone(), api1.clone(), shared.clone(), barrier.clone());
        let (canteen, shop) = (canteen.clone(), shop.clone());
        tasks.spawn(async move {
            let name = format!("s{n}");
            let customer = login(&api0, &format!("wx_md_{name}"), None).await;
            let card = bind_card(&api0, &customer.token, SCHOOL, &format!("M{n}"), &activation(n)).await;
            let s = Student { name, api0, api1, token: customer.token, card, canteen, shop, book: shared };
            student_day(s, n % 5, barrier).await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let traffic = started.elapsed();
    let book = std::mem::take(&mut *book(&shared));

    assert_the_day_reconciles(&api1, &t0.to_rfc3339()[..10], &book).await;

    let counts = |end: End| book.orders.iter().filter(|o| o.end == end).count();
    eprintln!(
        "mixed day: {} paid, {} refunded, {} pending orders, {} exceptions, {} fen of campus spends; traffic {traffic:?}, \
         all {:?}",
        counts(End::Paid),
        counts(End::Refunded),
        counts(End::Pending),
        book.exceptions.len(),
        book.spends.values().sum::<i64>(),
        started.elapsed()
    );
    app.host.shutdown().await;
}

/// What the app reports at `t1` against what the test did (`book`) on `day`.
async fn assert_the_day_reconciles(t1: &Api, day: &str, book: &Book) {
    // (a) Budgets, read at t1 (no abandoned order was read back): reserved is what live reservations hold — the
    // discounts and bonuses of orders still pending payment, and for the coupon campaign every claimed coupon not
    // used in a paid order — and spent is what paid, unrefunded orders used.
    let review = operator_get(t1, "/api/ops/campaigns").await;
    let sum = |budget: &str, end: End| -> i64 {
        book.orders.iter().filter(|o| o.budget == budget && o.end == end).map(|o| o.bank_fen).sum()
    };
    let budgets = review["scenario_budgets"].as_array().expect("scenario budgets");
    let expected_budgets: BTreeSet<&str> = book.orders.iter().map(|o| o.budget.as_str()).collect();
    assert_eq!(expected_budgets.len(), 6, "{expected_budgets:?}");
    for id in expected_budgets {
        let b = &budgets.iter().find(|b| b["budget_id"] == id).unwrap_or_else(|| panic!("{id} not reviewed"))["budget"];
        assert_eq!(
            (b["reserved_fen"].as_i64(), b["spent_fen"].as_i64()),
            (Some(sum(id, End::Pending)), Some(sum(id, End::Paid))),
            "{id}: {b}"
        );
        assert_eq!(
            b["remaining_fen"].as_i64(),
            Some(b["total_fen"].as_i64().expect("total") - sum(id, End::Pending) - sum(id, End::Paid)),
            "{id}: {b}"
        );
    }
    let used = book.orders.iter().filter(|o| o.end == End::Paid).map(|o| o.coupon_fen).sum::<i64>();
    let campaign = review["coupon_campaigns"].as_array().expect("coupon campaigns");
    let c = &campaign.iter().find(|c| c["campaign_id"] == COUPONS).expect("the coupon campaign")["budget"];
    assert_eq!(
        (c["reserved_fen"].as_i64(), c["spent_fen"].as_i64()),
        (Some(book.coupons_claimed * COUPON_FEN - used), Some(used)),
        "{c}"
    );
    assert!(used > 0 && book.orders.iter().any(|o| o.end == End::Pending && o.coupon_fen > 0), "coupons were used");
    let stats = operator_get(t1, &format!("/api/coupons/campaigns/{COUPONS}/stats")).await;
    assert_eq!(
        (stats["budget"]["reserved_fen"].as_i64(), stats["budget"]["committed_fen"].as_i64()),
        (Some(book.coupons_claimed * COUPON_FEN), Some(used)),
        "the campaign's own stats count committed coupons as reserved too: {stats}"
    );

    // (b) Every partner's statement of the day reconciles to the ledger and says what was paid, less refunds.
    for (prefix, ids) in [
        ("/api/utility/billers", vec!["md_water", "md_gas", "md_power"]),
        ("/api/property/communities", vec!["md_pine", "md_oak"]),
    ] {
        for id in ids {
            let s = operator_get(t1, &format!("{prefix}/{id}/settlement?date={day}")).await;
            let paid: Vec<&Rec> = book.orders.iter().filter(|o| o.partner == id && o.end == End::Paid).collect();
            let gross: i64 = paid.iter().map(|o| o.gross_fen - o.refunded_fen).sum();
            let customer_paid: i64 = paid.iter().map(|o| o.total_fen - o.refunded_fen).sum();
            assert_eq!(
                (s["reconciled"].as_bool(), s["total_gross_fen"].as_i64(), s["total_customer_paid_fen"].as_i64()),
                (Some(true), Some(gross), Some(customer_paid)),
                "{id}: {s}"
            );
            assert_eq!(s["ledger_total_fen"], s["total_gross_fen"], "{id}: {s}");
        }
    }
    for (merchant, net) in &book.spends {
        let s = operator_get(t1, &format!("/api/campus/merchants/{merchant}/settlement?date={day}")).await;
        assert_eq!((s["reconciled"].as_bool(), s["total_fen"].as_i64()), (Some(true), Some(*net)), "{merchant}: {s}");
        assert_eq!(s["ledger_total_fen"], s["total_fen"], "{merchant}: {s}");
    }

    // (c) The exceptions list holds exactly the second captures and the late payments, and suspense holds their sum.
    let exceptions = operator_get(t1, "/api/ops/exceptions").await;
    let items = exceptions["items"].as_array().expect("items");
    let listed: BTreeMap<String, i64> = items
        .iter()
        .map(|e| (e["event_id"].as_str().expect("event id").to_owned(), e["amount_fen"].as_i64().expect("amount")))
        .collect();
    assert_eq!((items.len(), &listed), (book.exceptions.len(), &book.exceptions), "{exceptions}");
    let suspense: i64 = book.exceptions.values().sum();
    assert_eq!(exceptions["total_fen"].as_i64(), Some(suspense), "{exceptions}");

    // (d) The books balance, with the suspense account holding exactly that money.
    let check = t1.ledger_check().await;
    assert_eq!(ledger_account(&check, "bank:suspense"), -suspense, "{check}");
    // Every campus card holds what was topped up (with bonuses), less what was spent and refunded.
    for (card, balance) in &book.cards {
        assert_eq!(held(&check, card), *balance, "{card}");
    }
}

/// Claims a coupon of the bill campaign when the customer wants one; its id.
async fn claim_coupon(api: &Api, token: &str, name: &str, wanted: bool, shared: &Shared) -> Option<String> {
    if !wanted {
        return None;
    }
    let key = format!("{name}-coupon");
    let r = retried(&key, || claim(api, token, COUPONS, &key)).await;
    assert_eq!(r.status, 201, "{name}: {:?}", r.body);
    book(shared).coupons_claimed += 1;
    Some(r.body["coupon_id"].as_str().expect("coupon id").to_owned())
}
