//! Partners' event feeds (issue 26, first part): a biller reads what happened to its bills — each payment and each
//! refund once, in order, whatever the concurrency, duplicate notifications and retries — from
//! `GET /api/utility/partners/events`, signed as itself.

use std::collections::BTreeMap;

use scenefin_e2e::{Api, OPERATOR_TOKEN, TestApp};
use serde_json::{Value, json};

use crate::utility_payments as utility;

/// Every event of the partner's feed, read to the end in pages of `page` as the partner would; a page that stops at
/// an event still being recorded is read again later (a reader waits at most `feed::ABANDONED_AFTER_SECS` for a
/// writer that crashed between reserving a slot and filling it).
pub(crate) async fn feed(app: &Api, partner_id: &str, secret: &str, scenario: &str, page: usize) -> Vec<Value> {
    let mut api = app.clone();
    let mut cursor = "0".to_owned();
    let mut events = Vec::new();
    for _ in 0..200 {
        let path = format!("/api/{scenario}/partners/events?after={cursor}&limit={page}");
        let r = api.partner(partner_id, secret, "GET", &path, None).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        let items = r.body["items"].as_array().expect("items").clone();
        let next = r.body["next"].as_str().expect("next").to_owned();
        let more = r.body["has_more"].as_bool().expect("has_more");
        if !more {
            events.extend(items);
            return events;
        }
        if next == cursor && items.is_empty() {
            // Waiting at a slot still being written: come back later.
            api.now = api.now.plus_secs(31);
        }
        events.extend(items);
        cursor = next;
    }
    panic!("the feed never reached its end: {events:?}")
}

/// The ids of `events`, each with how often it appears.
pub(crate) fn counted(events: &[Value]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for e in events {
        *seen.entry(e["id"].as_str().expect("id").to_owned()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_biller_reads_each_payment_and_refund_of_its_bills_once_in_order() {
    let app = TestApp::spawn().await.expect("app");
    let w = utility::register(&app, utility::water(10_000_000)).await;
    let other = utility::register(
        &app,
        json!({
            "id": "sz_power", "name": "Shenzhen Power", "category": "power", "city": "shenzhen",
            "account_rule": {"min_len": 8, "max_len": 10, "charset": "digits"},
            "exactness": "exact", "settlement_account": "6222000011113333"
        }),
    )
    .await;
    let n = 6;
    let bills: Vec<Value> = (0..n)
        .map(|i| {
            json!({"bill_id": format!("EV-{i}"), "account_no": format!("{}", 40_000_000 + i), "period": "2026-10",
                         "amount_fen": 5000 + i, "due_date": "2026-11-30", "holder_name": "张三丰"})
        })
        .collect();
    let up = app
        .partner(
            &w.partner_id,
            &w.secret,
            "PUT",
            "/api/utility/billers/sz_water/bills",
            Some(&json!({ "bills": bills })),
        )
        .await;
    assert_eq!(up.status, 200, "{:?}", up.body);

    // Six customers pay at once, each notification delivered twice at once.
    let mut payers = tokio::task::JoinSet::new();
    for i in 0..n {
        let app = app.api.clone();
        payers.spawn(async move {
            let login = app.login(scenefin_core::auth::Provider::Wechat, &format!("wx_events_{i}"), None, None).await;
            let token = login.body["token"].as_str().expect("token").to_owned();
            let quote = json!({"biller_id": "sz_water", "account_no": format!("{}", 40_000_000 + i),
                               "bill_ids": [format!("EV-{i}")], "pay_with": "other"});
            let q = app.send("POST", "/api/utility/quotes", Some(&quote), Some(&token)).await;
            assert_eq!(q.status, 201, "{:?}", q.body);
            let quote_id = q.body["quote_id"].as_str().expect("quote").to_owned();
            let placed = utility::order(&app, &token, &quote_id, &format!("ev-{i}")).await;
            assert_eq!(placed.status, 201, "{:?}", placed.body);
            let order_id = placed.body["order"]["order_id"].as_str().expect("order").to_owned();
            let paid_fen = placed.body["payment"]["amount_fen"].as_i64().expect("amount");
            let event =
                utility::event(&format!("evt_ev_{i}"), &order_id, "succeeded", paid_fen, None, &app.now.to_rfc3339());
            let (a, b) = tokio::join!(
                app.notify("/api/utility/payments/notify", &event),
                app.notify("/api/utility/payments/notify", &event)
            );
            assert_eq!((a.status, b.status), (200, 200), "{:?} {:?}", a.body, b.body);
            order_id
        });
    }
    let orders: Vec<String> = payers.join_all().await;

    // Two refunds (each asked twice).
    for order_id in &orders[..2] {
        for _ in 0..2 {
            let headers = [
                ("authorization".to_owned(), format!("Bearer {OPERATOR_TOKEN}")),
                ("idempotency-key".to_owned(), format!("ev-refund-{order_id}")),
            ];
            let r = app.send_raw("POST", &format!("/api/utility/orders/{order_id}/refund"), Vec::new(), &headers).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    }

    for page in [1, 4, 50] {
        let events = feed(&app, &w.partner_id, &w.secret, "utility", page).await;
        let seen = counted(&events);
        for order_id in &orders {
            assert_eq!(seen.get(&format!("bill.paid:{order_id}")), Some(&1), "page {page}: {events:?}");
        }
        for order_id in &orders[..2] {
            assert_eq!(seen.get(&format!("bill.refunded:{order_id}")), Some(&1), "page {page}: {events:?}");
            let at = |id: String| events.iter().position(|e| e["id"] == id.as_str()).expect("present");
            assert!(
                at(format!("bill.paid:{order_id}")) < at(format!("bill.refunded:{order_id}")),
                "paid before refunded"
            );
        }
        assert_eq!(events.len(), n as usize + 2, "page {page}: nothing else: {events:?}");
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().expect("seq")).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
        // What the biller needs to write the bill off without a second call.
        let paid = events.iter().find(|e| e["type"] == "bill.paid").expect("a payment");
        let bill = &paid["data"]["bills"][0];
        assert_eq!(
            (bill["outcome"].as_str(), paid["data"]["biller_id"].as_str()),
            (Some("paid"), Some("sz_water")),
            "{paid}"
        );
        assert!(paid["occurred_at"].as_str().is_some_and(|t| t.ends_with("+08:00")), "{paid}");
    }
    // The cursor is a place in the feed: reading on from the end finds nothing new.
    let all = feed(&app, &w.partner_id, &w.secret, "utility", 50).await;
    let last = all.last().expect("events")["seq"].as_i64().expect("seq");
    let path = format!("/api/utility/partners/events?after={last}");
    let rest = app.partner(&w.partner_id, &w.secret, "GET", &path, None).await;
    assert_eq!((rest.body["items"].as_array().map(Vec::len), &rest.body["has_more"]), (Some(0), &json!(false)));

    // Another biller's feed holds none of it; an unsigned or badly signed read is refused.
    assert!(feed(&app, &other.partner_id, &other.secret, "utility", 10).await.is_empty());
    let r = app.send("GET", "/api/utility/partners/events", None, None).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    let r = app.partner(&w.partner_id, "not-the-secret", "GET", "/api/utility/partners/events", None).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    let r = app.partner(&w.partner_id, &w.secret, "GET", "/api/utility/partners/events?after=-1", None).await;
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("validation_failed")), "{:?}", r.body);
    app.host.shutdown().await;
}
