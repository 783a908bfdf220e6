//! Bursts: many requests in flight at once on one order, one card, or the whole app — the same gateway notification
//! fifty times, refunds racing each other, reissues of one card, and a hundred mixed money operations — answered
//! without a 5xx and applied exactly once, with the books balanced. Every task waits at a barrier until all are
//! spawned, so the requests really are in flight together. Clients send a request that got a retryable answer
//! (`503`, a component timeout) again with the same key, as a real client would; the retries are counted and shown.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use scenefin_e2e::{Api, BANK_BIN, OPERATOR_TOKEN, Reply, TestApp, ledger_account, retryable};
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::campus_card::{
    Partner, add_merchant, bind_card, by_card, customer, held, issue, member, my_card, onboard_school, owed,
    paid_event, spend, top_up, topup, topup_body, transactions,
};
use crate::merchant_coupons::{budget, campaign, claim, create_campaign, login_many, onboard_merchant, stats, with};
use crate::utility_payments::{event, order, register, water};

/// How often a client sends a request that got a retryable answer before it gives up (and the test fails).
const MAX_ATTEMPTS: usize = 50;

/// The gateway's notification routes.
const UTILITY_NOTIFY: &str = "/api/utility/payments/notify";
const CAMPUS_NOTIFY: &str = "/api/campus/payments/notify";

/// The water bill the single-order bursts pay: 86.50 yuan, 5% off with the bank's card.
const BILL: &str = "W-1";
const BILL_FEN: i64 = 8650;
const DISCOUNT_FEN: i64 = 432;
const ACCOUNT_NO: &str = "1234567890";

/// A card BIN of the bank (variable `bank_card_bins` is `622588` in tests).
const BANK_CARD: &str = "62258800";

// ---------------------------------------------------------------------------------------------------------------
// Bursts

/// One request of a burst, as a client sends it again: the same event id, idempotency key or `pos_txn_id` (partner
/// calls signed afresh, with a new nonce, on every attempt).
#[derive(Clone)]
enum Op {
    /// A gateway notification.
    Notify { path: &'static str, event: Value },
    /// `POST /api/utility/orders/{id}/refund` by the operator (`partner: None`) or the biller, with a key.
    Refund { order_id: String, key: String, partner: Option<Partner> },
    /// `POST /api/campus/cards/{id}/reissue` by the holder.
    Reissue { token: String, card_id: String },
    /// A campus POS spend.
    Spend { pos: Partner, body: Value },
    /// A coupon claim.
    Claim { token: String, campaign_id: String, key: String },
}

impl Op {
    async fn send(&self, api: &Api) -> Reply {
        match self {
            Op::Notify { path, event } => api.notify(path, event).await,
            Op::Refund { order_id, key, partner } => {
                let path = format!("/api/utility/orders/{order_id}/refund");
                let mut headers = match partner {
                    Some(p) => api.partner_headers(&p.id, &p.secret, "POST", &path, b""),
                    None => vec![("authorization".to_owned(), format!("Bearer {OPERATOR_TOKEN}"))],
                };
                headers.push(("idempotency-key".to_owned(), key.clone()));
                api.send_raw("POST", &path, Vec::new(), &headers).await
            }
            Op::Reissue { token, card_id } => {
                api.send("POST", &format!("/api/campus/cards/{card_id}/reissue"), None, Some(token)).await
            }
            Op::Spend { pos, body } => spend(api, pos, body).await,
            Op::Claim { token, campaign_id, key } => claim(api, token, campaign_id, key).await,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Op::Notify { path, .. } if *path == CAMPUS_NOTIFY => "top-up notify",
            Op::Notify { .. } => "utility notify",
            Op::Refund { .. } => "refund",
            Op::Reissue { .. } => "reissue",
            Op::Spend { .. } => "spend",
            Op::Claim { .. } => "claim",
        }
    }
}

/// Sends `send()` until its answer is not retryable, at most [`MAX_ATTEMPTS`] times (the last answer is returned
/// whatever it is); counts the extra attempts in `retries`.
async fn with_retry<F, Fut>(retries: &AtomicUsize, mut send: F) -> Reply
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Reply>,
{
    let mut attempt: u64 = 0;
    loop {
        let r = send().await;
        attempt += 1;
        if !retryable(&r) || attempt == MAX_ATTEMPTS as u64 {
            return r;
        }
        retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(10 + 10 * attempt.min(20))).await;
    }
}

/// What a burst got: each op with its final answer (in the order given), and how many retries it took.
struct Burst {
    results: Vec<(Op, Reply)>,
    retries: usize,
    took: Duration,
}

impl Burst {
    /// The answers to ops of `kind`.
    fn of(&self, kind: &str) -> Vec<&Reply> {
        self.results.iter().filter(|(op, _)| op.kind() == kind).map(|(_, r)| r).collect()
    }

    /// `kind status code` → count, for the log and for failure messages.
    fn tally(&self) -> BTreeMap<String, usize> {
        let mut tally = BTreeMap::new();
        for (op, r) in &self.results {
            let code = if r.status >= 400 { r.body["code"].as_str().unwrap_or("-") } else { "" };
            *tally.entry(format!("{} {} {code}", op.kind(), r.status).trim_end().to_owned()).or_default() += 1;
        }
        tally
    }

    /// Fails on any 5xx answer (a retryable one that never got through included), naming each.
    #[track_caller]
    fn assert_no_5xx(&self) {
        let failed: Vec<String> = self
            .results
            .iter()
            .filter(|(_, r)| r.status >= 500)
            .map(|(op, r)| format!("{} -> {} {}", op.kind(), r.status, r.body))
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} answers were 5xx: {failed:#?}\n{:?}",
            failed.len(),
            self.results.len(),
            self.tally()
        );
    }

    /// One line for the log: what was answered, the retries, the time.
    fn report(&self, name: &str) {
        eprintln!(
            "{name} [{}]: {} requests in {:?}, {} retries; {:?}",
            scenefin_e2e::Runtime::current().name(),
            self.results.len(),
            self.took,
            self.retries,
            self.tally()
        );
    }
}

/// Sends every op at once: each in its own task, all released together by a barrier; each retried as a client would.
async fn burst(api: &Api, ops: Vec<Op>) -> Burst {
    let barrier = Arc::new(Barrier::new(ops.len()));
    let retries = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for (i, op) in ops.into_iter().enumerate() {
        let (api, barrier, retries) = (api.clone(), barrier.clone(), retries.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let r = with_retry(&retries, || op.send(&api)).await;
            (i, op, r)
        });
    }
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        results.push(done.expect("a burst task"));
    }
    let took = started.elapsed();
    results.sort_by_key(|(i, _, _)| *i);
    Burst {
        results: results.into_iter().map(|(_, op, r)| (op, r)).collect(),
        retries: retries.load(Ordering::Relaxed),
        took,
    }
}

/// A setup request that may meet contention on a busy runtime: sent again while the answer is retryable.
async fn settled<F, Fut>(send: F) -> Reply
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Reply>,
{
    with_retry(&AtomicUsize::new(0), send).await
}

// ---------------------------------------------------------------------------------------------------------------
// Reading the outcome

fn str_of(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_else(|| panic!("no string {field} in {v}")).to_owned()
}

fn int_of(v: &Value, field: &str) -> i64 {
    v[field].as_i64().unwrap_or_else(|| panic!("no integer {field} in {v}"))
}

/// A stored JSON document, read straight from the app's store (every runtime).
async fn stored(app: &TestApp, key: &str) -> Value {
    let bytes = app.host.kv.get("default", key).await.expect("reading the store");
    let bytes = bytes.unwrap_or_else(|| panic!("{key} is not in the store"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// How many ledger postings have an id starting with `prefix`.
async fn postings(app: &TestApp, prefix: &str) -> usize {
    let wanted = format!("ledger:posting:{prefix}");
    app.snapshot().await.keys().filter(|k| k.starts_with(&wanted) && !k.ends_with(":~born")).count()
}

/// How many times an order's history entered `state`.
fn entered(order: &Value, state: &str) -> usize {
    order["history"].as_array().expect("history").iter().filter(|c| c["state"] == state).count()
}

/// The ids of the open bills of the water account.
async fn open_bills(app: &TestApp, token: &str) -> BTreeSet<String> {
    let path = format!("/api/utility/bills?biller_id=sz_water&account_no={ACCOUNT_NO}");
    let r = app.send("GET", &path, None, Some(token)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["items"].as_array().expect("items").iter().map(|b| str_of(b, "bill_id")).collect()
}

/// Today's statement of the water biller (reconciled to the ledger).
async fn water_statement(app: &TestApp) -> Value {
    let day = &app.now.to_rfc3339()[..10];
    let path = format!("/api/utility/billers/sz_water/settlement?date={day}");
    let r = app.send("GET", &path, None, Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, r.body["reconciled"].as_bool()), (200, Some(true)), "{:?}", r.body);
    assert_eq!(r.body["total_gross_fen"], r.body["ledger_total_fen"], "{:?}", r.body);
    r.body
}

async fn biller_stats(app: &TestApp, biller_id: &str) -> Value {
    let r = app.send("GET", &format!("/api/utility/billers/{biller_id}/stats"), None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

// ---------------------------------------------------------------------------------------------------------------
// Setups

/// The water biller with two bills on one account, a customer who bound it, and an order for bill `W-1` by the
/// bank's card (86.50 less 4.32): `(biller partner, customer token, order id)`.
async fn water_order(app: &TestApp) -> (Partner, String, String) {
    let w = register(app, water(100_000)).await;
    let upload = json!({"bills": [
        {"bill_id": BILL, "account_no": ACCOUNT_NO, "period": "2026-10", "amount_fen": BILL_FEN, "due_date": "2026-11-30", "holder_name": "张三丰"},
        {"bill_id": "W-2", "account_no": ACCOUNT_NO, "period": "2026-11", "amount_fen": 7320, "due_date": "2026-12-31", "holder_name": "张三丰"}
    ]});
    let up = app.partner(&w.partner_id, &w.secret, "PUT", "/api/utility/billers/sz_water/bills", Some(&upload)).await;
    assert_eq!((up.status, up.body["created"].as_u64()), (200, Some(2)), "{:?}", up.body);
    let token = customer(app, "wx_burst_household").await;
    let bind = json!({"biller_id": "sz_water", "account_no": ACCOUNT_NO});
    let bound = app.send("POST", "/api/utility/accounts", Some(&bind), Some(&token)).await;
    assert_eq!(bound.status, 201, "{:?}", bound.body);
    let quote = json!({"biller_id": "sz_water", "account_no": ACCOUNT_NO, "bill_ids": [BILL], "pay_with": "bank_card",
                       "card_bin": BANK_BIN});
    let q = app.send("POST", "/api/utility/quotes", Some(&quote), Some(&token)).await;
    assert_eq!((q.status, q.body["total_fen"].as_i64()), (201, Some(BILL_FEN - DISCOUNT_FEN)), "{:?}", q.body);
    let placed = order(app, &token, &str_of(&q.body, "quote_id"), "burst-order").await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let order_id = str_of(&placed.body["order"], "order_id");
    (Partner { id: w.partner_id, secret: w.secret }, token, order_id)
}

/// The gateway's success notification of the water order, by the bank's card.
fn water_paid(event_id: &str, order_id: &str, at: &str) -> Value {
    event(event_id, order_id, "succeeded", BILL_FEN - DISCOUNT_FEN, Some(BANK_CARD), at)
}

/// The books of the water order: (gateway clearing, bank marketing, biller settlement).
fn water_books(report: &Value) -> (i64, i64, i64) {
    (
        ledger_account(report, "gateway:clearing"),
        ledger_account(report, "bank:marketing"),
        ledger_account(report, "biller:sz_water:settlement"),
    )
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_duplicate_gateway_notifications_of_one_order_pay_it_once() {
    let started = Instant::now();
    let app = TestApp::spawn().await.expect("app");
    let now = app.now.to_rfc3339();
    let (_, token, order_id) = water_order(&app).await;

    // The gateway delivers the same event fifty times at once, and meanwhile four other success events and two
    // failures of the same order (a retried payment, a stale failure).
    let mut ops = vec![Op::Notify { path: UTILITY_NOTIFY, event: water_paid("evt_burst", &order_id, &now) }; 50];
    let mut event_ids = BTreeSet::from(["evt_burst".to_owned()]);
    for k in 0..4 {
        let id = format!("evt_burst_other_{k}");
        ops.push(Op::Notify { path: UTILITY_NOTIFY, event: water_paid(&id, &order_id, &now) });
        event_ids.insert(id);
    }
    for k in 0..2 {
        let failed = event(&format!("evt_burst_failed_{k}"), &order_id, "failed", 0, None, &now);
        ops.push(Op::Notify { path: UTILITY_NOTIFY, event: failed });
    }
    let b = burst(&app, ops).await;
    b.report("fifty duplicate notifications");
    b.assert_no_5xx();

    // Whichever came first decides: a success pays the order (once), a failure closes it. Every other success event
    // is money the order cannot take: answered 200 with a refund instruction, booked to suspense once per event.
    let receipt = app.send("GET", &format!("/api/utility/orders/{order_id}"), None, Some(&token)).await;
    assert_eq!(receipt.status, 200, "{:?}", receipt.body);
    let paid = receipt.body["state"] == "paid";
    assert!(paid || receipt.body["state"] == "failed", "{:?}", receipt.body);
    let payment = receipt.body["receipt_no"].as_str().map(str::to_owned);
    for (op, r) in &b.results {
        let Op::Notify { event, .. } = op else { unreachable!() };
        assert_eq!((r.status, r.body["order_id"].as_str()), (200, Some(order_id.as_str())), "{:?}", r.body);
        assert_eq!(r.body["state"], receipt.body["state"], "every answer shows the one outcome: {:?}", r.body);
        if event["status"] == "succeeded" && event["event_id"].as_str() != payment.as_deref() {
            assert_eq!(r.body["refund_instruction"]["event_id"], event["event_id"], "{:?}", r.body);
        }
    }
    let refunds: BTreeSet<String> =
        receipt.body["refunds_due"].as_array().expect("refunds_due").iter().map(|e| str_of(e, "event_id")).collect();
    let mut expected = event_ids.clone();
    if let Some(p) = &payment {
        expected.remove(p);
    }
    assert_eq!(refunds, expected, "one refund per success event that did not pay: {:?}", receipt.body);
    assert_eq!(entered(&receipt.body, "paid") + entered(&receipt.body, "failed"), 1, "{:?}", receipt.body["history"]);

    // The bill was settled once, by this order, or is open again after the failure.
    let bill = stored(&app, &format!("util:bill:sz_water:{BILL}")).await;
    let expected_status = if paid { "paid" } else { "open" };
    assert_eq!(bill["status"].as_str(), Some(expected_status), "{bill}");
    assert!(bill.get("hold").is_none_or(Value::is_null), "the hold is gone: {bill}");
    let stats = biller_stats(&app, "sz_water").await;
    let once = i64::from(paid);
    assert_eq!((stats["orders_paid"].as_i64(), stats["bills_paid"].as_i64()), (Some(once), Some(once)), "{stats}");
    let statement = water_statement(&app).await;
    assert_eq!(statement["total_gross_fen"].as_i64(), Some(once * BILL_FEN), "{statement}");

    // The money is in the books once per event: the payment to the biller, the rest in suspense.
    let report = app.ledger_check().await;
    assert_eq!(report["balanced"], true, "{report}");
    let received = i64::try_from(event_ids.len()).expect("count") * (BILL_FEN - DISCOUNT_FEN);
    assert_eq!(ledger_account(&report, "gateway:clearing"), received, "{report}");
    let suspended = i64::try_from(refunds.len()).expect("count") * (BILL_FEN - DISCOUNT_FEN);
    assert_eq!(ledger_account(&report, "bank:suspense"), -suspended, "{report}");
    assert_eq!(ledger_account(&report, "biller:sz_water:settlement"), -once * BILL_FEN, "{report}");
    assert_eq!(postings(&app, "pay:").await, usize::from(paid));
    if !paid {
        app.host.shutdown().await;
        return;
    }
    let me = app.send("GET", "/api/me", None, Some(&token)).await;
    assert_eq!(me.body["lifecycle"]["stage"], "activated", "{:?}", me.body);
    eprintln!("fifty duplicate notifications: {:?} in all", started.elapsed());
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refunds_of_one_order_refund_it_once() {
    let started = Instant::now();
    let app = TestApp::spawn().await.expect("app");
    let now = app.now.to_rfc3339();
    let (biller, token, order_id) = water_order(&app).await;
    let paid_event_json = water_paid("evt_refund_me", &order_id, &now);
    let paid = settled(|| app.notify(UTILITY_NOTIFY, &paid_event_json)).await;
    assert_eq!((paid.status, paid.body["state"].as_str()), (200, Some("paid")), "{:?}", paid.body);
    assert_eq!(open_bills(&app, &token).await, BTreeSet::from(["W-2".to_owned()]));

    // Thirty refunds at once: the operator and the biller, each with one key sent many times and with keys of
    // their own.
    let refund = |key: String, partner: Option<Partner>| Op::Refund { order_id: order_id.clone(), key, partner };
    let mut ops = Vec::new();
    for i in 0..10 {
        ops.push(refund("refund-same".into(), None));
        if i < 8 {
            ops.push(refund(format!("refund-op-{i}"), None));
        }
        if i < 6 {
            ops.push(refund("refund-biller-same".into(), Some(biller.clone())));
            ops.push(refund(format!("refund-biller-{i}"), Some(biller.clone())));
        }
    }
    assert_eq!(ops.len(), 30);
    let b = burst(&app, ops).await;
    b.report("thirty concurrent refunds");
    b.assert_no_5xx();

    // Each is answered with the refunded order (run, replayed, or found refunded) or as a duplicate still in flight.
    let mut refunded = 0;
    for r in b.of("refund") {
        match r.status {
            200 => {
                assert_eq!(
                    (r.body["order_id"].as_str(), r.body["state"].as_str()),
                    (Some(order_id.as_str()), Some("refunded")),
                    "{:?}",
                    r.body
                );
                refunded += 1;
            }
            _ => assert_eq!(
                (r.status, r.body["code"].as_str()),
                (409, Some("idempotency_request_in_flight")),
                "{:?}",
                r.body
            ),
        }
    }
    assert!(refunded >= 1, "{:?}", b.tally());
    // A key sent again now replays the refund.
    let replay = b.results[0].0.send(&app).await;
    assert_eq!((replay.status, replay.body["state"].as_str()), (200, Some("refunded")), "{:?}", replay.body);

    // One refund: the order refunded once, the bill open again, the statement and the books back to zero.
    let receipt = app.send("GET", &format!("/api/utility/orders/{order_id}"), None, Some(&token)).await;
    assert_eq!(receipt.body["state"], "refunded", "{:?}", receipt.body);
    assert_eq!(entered(&receipt.body, "refunded"), 1, "{:?}", receipt.body["history"]);
    let bill = stored(&app, &format!("util:bill:sz_water:{BILL}")).await;
    assert_eq!(
        (bill["status"].as_str(), bill["paid_by"].as_str(), bill["duplicate_payments"].as_array().map_or(0, Vec::len)),
        (Some("open"), None, 0),
        "{bill}"
    );
    assert_eq!(open_bills(&app, &token).await, BTreeSet::from([BILL.to_owned(), "W-2".to_owned()]));
    let stats = biller_stats(&app, "sz_water").await;
    assert_eq!((stats["orders_paid"].as_i64(), stats["orders_refunded"].as_i64()), (Some(1), Some(1)), "{stats}");
    let statement = water_statement(&app).await;
    let kinds: Vec<&str> =
        statement["lines"].as_array().expect("lines").iter().filter_map(|l| l["kind"].as_str()).collect();
    assert_eq!((kinds.len(), statement["total_gross_fen"].as_i64()), (2, Some(0)), "{statement}");
    assert!(kinds.contains(&"pay") && kinds.contains(&"refund"), "{statement}");
    let report = app.ledger_check().await;
    assert_eq!(water_books(&report), (0, 0, 0), "{report}");
    assert_eq!((postings(&app, "pay:").await, postings(&app, "refund:").await), (1, 1));
    eprintln!("thirty concurrent refunds: {:?} in all", started.elapsed());
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reissues_of_one_card_move_the_balance_once() {
    let started = Instant::now();
    let app = TestApp::spawn().await.expect("app");
    let school = onboard_school(&app, "burst_u", None).await;
    let canteen = add_merchant(&app, &school, "burst_u", "burst_canteen", "canteen").await;
    issue(&app, &school, "burst_u", &[member("R1", "student", "林冲", "2030-07-31", "626262")]).await;
    let token = customer(&app, "wx_burst_r1").await;
    let old = bind_card(&app, &token, "burst_u", "R1", "626262").await;
    top_up(&app, &token, &old, 5_000, "burst_tu_1").await;
    let r = spend(&app, &canteen, &by_card("burst-r-1", &old, 1_200)).await;
    assert_eq!((r.status, r.body["balance_fen"].as_i64()), (201, Some(3_800)), "{:?}", r.body);
    let lost = app.send("POST", &format!("/api/campus/cards/{old}/report-lost"), None, Some(&token)).await;
    assert_eq!(lost.status, 200, "{:?}", lost.body);

    // Twenty reissues at once (a holder tapping the button on several phones).
    let ops = vec![Op::Reissue { token: token.clone(), card_id: old.clone() }; 20];
    let b = burst(&app, ops).await;
    b.report("twenty concurrent reissues");
    b.assert_no_5xx();
    let mut new_cards = BTreeSet::new();
    for r in b.of("reissue") {
        assert!(matches!(r.status, 200 | 201), "{:?}", r.body);
        assert_eq!(
            (r.body["replaced_card_id"].as_str(), r.body["moved_fen"].as_i64(), r.body["card"]["status"].as_str()),
            (Some(old.as_str()), Some(3_800), Some("active")),
            "{:?}",
            r.body
        );
        new_cards.insert(str_of(&r.body["card"], "card_id"));
    }
    assert_eq!(new_cards.len(), 1, "one new card: {new_cards:?}");
    let new = new_cards.into_iter().next().unwrap_or_default();
    assert_ne!(new, old);

    // The new card holds the balance, the old one nothing, moved by one posting.
    let cards = app.send("GET", "/api/campus/cards/me", None, Some(&token)).await;
    let listed: Vec<&str> =
        cards.body["items"].as_array().expect("items").iter().filter_map(|c| c["card_id"].as_str()).collect();
    assert_eq!(listed, [new.as_str()], "{:?}", cards.body);
    let shown = my_card(&app, &token, &new).await;
    assert_eq!((shown["balance_fen"].as_i64(), shown["status"].as_str()), (Some(3_800), Some("active")), "{shown}");
    let report = app.ledger_check().await;
    assert_eq!((held(&report, &old), held(&report, &new), owed(&report, "burst_canteen")), (0, 3_800, 1_200));
    assert_eq!(postings(&app, &format!("move:{old}:")).await, 1);
    let txns = transactions(&app, &token, &new).await;
    let moves: Vec<i64> = txns.iter().filter(|t| t["kind"] == "transfer_in").map(|t| int_of(t, "amount_fen")).collect();
    assert_eq!(moves, [3_800], "{txns:?}");

    // The old card is dead; the new one spends.
    let dead = spend(&app, &canteen, &by_card("burst-r-2", &old, 100)).await;
    assert_eq!((dead.status, dead.body["code"].as_str()), (422, Some("card_not_active")), "{:?}", dead.body);
    let r = spend(&app, &canteen, &by_card("burst-r-3", &new, 800)).await;
    assert_eq!((r.status, r.body["balance_fen"].as_i64()), (201, Some(3_000)), "{:?}", r.body);
    app.ledger_check().await;
    eprintln!("twenty concurrent reissues: {:?} in all", started.elapsed());
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mixed_money_operations_at_once_keep_the_books_exact() {
    let started = Instant::now();
    let app = TestApp::spawn().await.expect("app");
    let now = app.now.to_rfc3339();

    // Utility: 25 pending orders of 100 yuan on a prepaid-meter biller whose budget funds ten 10-yuan discounts.
    let power = json!({
        "id": "burst_power", "name": "Burst Power", "category": "power", "city": "shenzhen",
        "account_rule": {"min_len": 6, "max_len": 12, "charset": "digits"},
        "exactness": "adhoc", "settlement_account": "6222000077778888",
        "discount": {"percent_bp": 1000, "cap_fen": 1000, "budget_id": "burst_power_card", "budget_fen": 10_000}
    });
    register(&app, power).await;
    let payer = customer(&app, "wx_burst_payer").await;
    let mut utility_orders = Vec::new();
    for i in 0..25 {
        let quote = json!({"biller_id": "burst_power", "account_no": format!("{:08}", 20_000_000 + i),
                           "amount_fen": 10_000, "pay_with": "bank_card", "card_bin": BANK_BIN});
        let q = settled(|| app.send("POST", "/api/utility/quotes", Some(&quote), Some(&payer))).await;
        assert_eq!(q.status, 201, "{:?}", q.body);
        let quote_id = str_of(&q.body, "quote_id");
        let key = format!("burst-mixed-{i}");
        let placed = settled(|| order(&app, &payer, &quote_id, &key)).await;
        assert_eq!(placed.status, 201, "{:?}", placed.body);
        utility_orders.push((str_of(&placed.body["order"], "order_id"), int_of(&placed.body["order"], "total_fen")));
    }
    let utility_paid: i64 = utility_orders.iter().map(|(_, total)| total).sum();
    assert_eq!(utility_paid, 10 * 9_000 + 15 * 10_000, "the first ten quotes got the discount");

    // Campus: a card holding 20 yuan that forty 1-yuan spends will race for, and five cards with five pending 10-yuan
    // top-ups each.
    let school = onboard_school(&app, "burst_mix_u", None).await;
    let pos = [
        add_merchant(&app, &school, "burst_mix_u", "burst_mix_canteen", "canteen").await,
        add_merchant(&app, &school, "burst_mix_u", "burst_mix_shop", "shop").await,
    ];
    let mut members = vec![member("S0", "student", "鲁智深", "2030-07-31", "700000")];
    members.extend((1..=5).map(|i| member(&format!("S{i}"), "student", "武松", "2030-07-31", &format!("70000{i}"))));
    issue(&app, &school, "burst_mix_u", &members).await;
    let spender = customer(&app, "wx_burst_s0").await;
    let spent_card = bind_card(&app, &spender, "burst_mix_u", "S0", "700000").await;
    top_up(&app, &spender, &spent_card, 2_000, "burst_mix_tu_s0").await;
    let mut topped = Vec::new();
    for i in 1..=5 {
        let token = customer(&app, &format!("wx_burst_s{i}")).await;
        let card = bind_card(&app, &token, "burst_mix_u", &format!("S{i}"), &format!("70000{i}")).await;
        let mut orders = Vec::new();
        for k in 0..5 {
            let key = format!("burst_mix_tu_{i}_{k}");
            let body = topup_body(&card, 1_000, None);
            let placed = settled(|| topup(&app, &token, &key, &body)).await;
            assert_eq!(placed.status, 201, "{:?}", placed.body);
            orders.push(str_of(&placed.body["order"], "order_id"));
        }
        topped.push((token, card, orders));
    }

    // Coupons: thirty customers after a stock of ten.
    onboard_merchant(&app, "burst_cafe", "futian", &["s1"]).await;
    create_campaign(
        &app,
        &with(campaign("burst10", &["burst_cafe"]), json!({"stock_total": 10, "budget_fen": 100_000})),
    )
    .await;
    let claimants = login_many(&app, "wx_burst_claim", 30).await;
    let setup = started.elapsed();

    // All at once: 50 utility notifications (each order's event twice), 30 top-up notifications (one order's twice
    // per card), 40 spends and 30 claims.
    let mut ops = Vec::new();
    for (i, (order_id, total)) in utility_orders.iter().enumerate() {
        let paid = event(&format!("evt_mix_{i}"), order_id, "succeeded", *total, Some(BANK_CARD), &now);
        ops.push(Op::Notify { path: UTILITY_NOTIFY, event: paid.clone() });
        ops.push(Op::Notify { path: UTILITY_NOTIFY, event: paid });
    }
    for (i, (_, _, orders)) in topped.iter().enumerate() {
        for (k, order_id) in orders.iter().enumerate() {
            let paid = paid_event(&format!("evt_mix_tu_{i}_{k}"), order_id, 1_000, app.now, None);
            if k == 0 {
                ops.push(Op::Notify { path: CAMPUS_NOTIFY, event: paid.clone() });
            }
            ops.push(Op::Notify { path: CAMPUS_NOTIFY, event: paid });
        }
    }
    for i in 0..40 {
        let body = by_card(&format!("burst-mix-{i}"), &spent_card, 100);
        ops.push(Op::Spend { pos: pos[i % pos.len()].clone(), body });
    }
    for (i, c) in claimants.iter().enumerate() {
        ops.push(Op::Claim { token: c.token.clone(), campaign_id: "burst10".into(), key: format!("burst-claim-{i}") });
    }
    // Interleaved, so no kind goes first.
    let mut ops: Vec<(usize, Op)> = ops.into_iter().enumerate().map(|(i, op)| ((i * 37) % 150, op)).collect();
    ops.sort_by_key(|(k, _)| *k);
    let ops: Vec<Op> = ops.into_iter().map(|(_, op)| op).collect();
    assert_eq!(ops.len(), 150);
    let b = burst(&app, ops).await;
    b.report("a hundred and fifty mixed money operations");
    b.assert_no_5xx();

    // Every notification paid its order; exactly the twenty spends the card could pay went through; exactly ten
    // coupons were issued.
    for r in b.of("utility notify").into_iter().chain(b.of("top-up notify")) {
        assert_eq!(
            (r.status, r.body["state"].as_str(), r.body["fulfilled"].as_bool()),
            (200, Some("paid"), Some(true)),
            "{:?}",
            r.body
        );
    }
    let mut spends_ok = 0;
    for r in b.of("spend") {
        if r.status == 201 {
            assert!((0..2_000).contains(&int_of(&r.body, "balance_fen")), "{:?}", r.body);
            spends_ok += 1;
        } else {
            assert_eq!((r.status, r.body["code"].as_str()), (422, Some("insufficient_balance")), "{:?}", r.body);
        }
    }
    let mut coupons = BTreeSet::new();
    for r in b.of("claim") {
        if r.status == 201 {
            coupons.insert(str_of(&r.body, "coupon_id"));
        } else {
            assert_eq!((r.status, r.body["code"].as_str()), (422, Some("out_of_stock")), "{:?}", r.body);
        }
    }
    assert_eq!((spends_ok, coupons.len()), (20, 10), "{:?}", b.tally());

    // The books: every payment once, every spend once, nothing over a balance, a stock or a budget.
    let report = app.ledger_check().await;
    let topups_paid = 2_000 + 25 * 1_000;
    assert_eq!(ledger_account(&report, "gateway:clearing"), utility_paid + topups_paid, "{report}");
    assert_eq!(ledger_account(&report, "bank:marketing"), 10 * 1_000, "{report}");
    assert_eq!(ledger_account(&report, "biller:burst_power:settlement"), -25 * 10_000, "{report}");
    assert_eq!(held(&report, &spent_card), 0, "{report}");
    assert_eq!(owed(&report, "burst_mix_canteen") + owed(&report, "burst_mix_shop"), 2_000, "{report}");
    for (token, card, _) in &topped {
        assert_eq!(held(&report, card), 5_000, "{card}: {report}");
        let shown = my_card(&app, token, card).await;
        assert_eq!(shown["balance_fen"].as_i64(), Some(5_000), "{shown}");
        let txns = transactions(&app, token, card).await;
        assert_eq!(
            (
                txns.iter().filter(|t| t["kind"] == "top_up").count(),
                txns.iter().map(|t| int_of(t, "amount_fen")).sum::<i64>()
            ),
            (5, 5_000),
            "{txns:?}"
        );
    }
    assert_eq!(my_card(&app, &spender, &spent_card).await["balance_fen"].as_i64(), Some(0));
    let stats_power = biller_stats(&app, "burst_power").await;
    assert_eq!(
        (stats_power["orders_paid"].as_i64(), stats_power["orders_paid_bank_card"].as_i64()),
        (Some(25), Some(25)),
        "{stats_power}"
    );
    let coupon_stats = stats(&app, "burst10").await;
    assert_eq!(
        (coupon_stats["issued"].as_i64(), coupon_stats["remaining_stock"].as_i64()),
        (Some(10), Some(0)),
        "{coupon_stats}"
    );
    assert_eq!((budget(&coupon_stats, "reserved"), budget(&coupon_stats, "available")), (10 * 500, 100_000 - 10 * 500));
    assert_eq!(postings(&app, "pay:").await, 25 + 26, "a payment posting per utility order and top-up");
    eprintln!("mixed burst: setup {setup:?}, {:?} in all", started.elapsed());
    app.host.shutdown().await;
}
