//! Money at the edges: one bill paid from two phones, a second capture, a payment that fails, an order nobody comes
//! back for, a bill re-issued while an order for it is open, partial payments, a gateway with a wrong clock.

use scenefin_e2e::{Api, BANK_BIN, OPERATOR_TOKEN, Reply, TestApp, ledger_account};
use serde_json::{Value, json};

use crate::utility_payments::{Biller, customer, event, order, register, water};

const BILLS: &str = "/api/utility/billers/sz_water/bills";
const NOTIFY: &str = "/api/utility/payments/notify";

async fn upload(app: &Api, w: &Biller, bills: Value) {
    let up = app.partner(&w.partner_id, &w.secret, "PUT", BILLS, Some(&json!({ "bills": bills }))).await;
    assert_eq!(up.status, 200, "{:?}", up.body);
}

fn bill(id: &str, amount_fen: i64) -> Value {
    json!({"bill_id": id, "account_no": "1234567890", "period": "2026-10", "amount_fen": amount_fen,
           "due_date": "2026-11-30", "holder_name": "张三丰"})
}

fn bank_quote(bills: &[&str]) -> Value {
    json!({"biller_id": "sz_water", "account_no": "1234567890", "bill_ids": bills, "pay_with": "bank_card",
           "card_bin": BANK_BIN})
}

async fn quote(app: &Api, token: &str, body: &Value) -> Reply {
    app.send("POST", "/api/utility/quotes", Some(body), Some(token)).await
}

/// Sends `req` as if at `at` (the host's test clock header).
async fn at(app: &TestApp, at: &str, method: &str, path: &str, body: Option<&Value>, bearer: &str) -> Value {
    let mut req = app.client.request(method.parse().expect("method"), format!("{}{path}", app.base));
    req = req.bearer_auth(bearer).header("x-scenefin-now", at);
    if let Some(body) = body {
        req = req.json(body);
    }
    req.send().await.expect("send").json().await.expect("json")
}

async fn placed_order(app: &TestApp, token: &str, quote_body: &Value, key: &str) -> (String, i64) {
    let q = quote(app, token, quote_body).await;
    assert_eq!(q.status, 201, "{:?}", q.body);
    let placed = order(app, token, q.body["quote_id"].as_str().expect("quote"), key).await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let id = placed.body["order"]["order_id"].as_str().expect("order").to_owned();
    (id, placed.body["order"]["total_fen"].as_i64().expect("total"))
}

/// An app with the water biller (a 1,000 yuan discount budget), `bills` uploaded, and a customer logged in.
async fn water_app(bills: Value, subject: &str) -> (TestApp, Biller, String) {
    let app = TestApp::spawn().await.expect("app");
    let w = register(&app, water(100_000)).await;
    upload(&app, &w, bills).await;
    let token = customer(&app, subject).await;
    (app, w, token)
}

/// Asserts the water biller's statement of `now`'s day reconciles to the ledger with `gross_fen` in all.
async fn assert_reconciled(app: &Api, now: &str, gross_fen: i64) {
    let path = format!("/api/utility/billers/sz_water/settlement?date={}", &now[..10]);
    let statement = app.send("GET", &path, None, Some(OPERATOR_TOKEN)).await;
    let body = &statement.body;
    assert_eq!(
        (body["total_gross_fen"].as_i64(), body["reconciled"].as_bool()),
        (Some(gross_fen), Some(true)),
        "{body:?}"
    );
}

/// The water account's open bills, as the customer sees them.
async fn water_bills(app: &Api, token: &str) -> Reply {
    app.send("GET", "/api/utility/bills?biller_id=sz_water&account_no=1234567890", None, Some(token)).await
}

async fn budget(app: &TestApp, now: &str, budget_id: &str) -> Value {
    let review = at(app, now, "GET", "/api/ops/campaigns", None, OPERATOR_TOKEN).await;
    let budgets = review["scenario_budgets"].as_array().expect("scenario budgets");
    budgets.iter().find(|b| b["budget_id"] == budget_id).expect("budget")["budget"].clone()
}

async fn exceptions(app: &TestApp) -> Value {
    let r = app.send("GET", "/api/ops/exceptions", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bill_paid_from_several_phones_at_once_makes_one_order_and_the_others_are_told_which() {
    let app = std::sync::Arc::new(TestApp::spawn().await.expect("app"));
    let w = register(&app, water(100_000)).await;
    upload(&app, &w, json!([bill("B-1", 8650)])).await;
    let token = customer(&app, "wx_two_phones").await;

    // Six taps from two phones: each gets a quote (nothing holds the bill yet), then all order at once.
    let mut quotes = Vec::new();
    for _ in 0..6 {
        let q = quote(&app, &token, &bank_quote(&["B-1"])).await;
        assert_eq!(q.status, 201, "{:?}", q.body);
        quotes.push(q.body["quote_id"].as_str().expect("quote").to_owned());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, quote_id) in quotes.into_iter().enumerate() {
        let (app, token) = (app.clone(), token.clone());
        tasks.spawn(async move { order(&app, &token, &quote_id, &format!("tap-{i}")).await });
    }
    let mut placed = Vec::new();
    let mut refused = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r.expect("task");
        match r.status {
            201 => placed.push(r.body["order"]["order_id"].as_str().expect("order").to_owned()),
            _ => refused.push(r),
        }
    }
    assert_eq!(placed.len(), 1, "exactly one order holds the bill: {refused:?}");
    for r in &refused {
        assert_eq!((r.status, r.body["code"].as_str()), (409, Some("bill_in_payment")), "{:?}", r.body);
        assert_eq!(r.body["open_order_id"].as_str(), Some(placed[0].as_str()), "names the open order");
    }
    // A new quote is refused too while the order is open, naming it; the bill shows who is paying it.
    let again = quote(&app, &token, &bank_quote(&["B-1"])).await;
    assert_eq!((again.status, again.body["code"].as_str()), (409, Some("bill_in_payment")), "{:?}", again.body);
    assert_eq!(again.body["open_order_id"].as_str(), Some(placed[0].as_str()));
    let bills = water_bills(&app, &token).await;
    assert_eq!(bills.body["items"][0]["in_payment_by"].as_str(), Some(placed[0].as_str()));

    // Only the held order can be paid; the discount budget holds one discount, not six.
    let paid = event("evt-1", &placed[0], "succeeded", 8650 - 432, Some(BANK_BIN), &app.now.to_rfc3339());
    assert_eq!(app.notify(NOTIFY, &paid).await.body["state"], "paid");
    let b = budget(&app, &app.now.to_rfc3339(), "water_card_2026").await;
    assert_eq!((b["spent_fen"].as_i64(), b["reserved_fen"].as_i64()), (Some(432), Some(0)), "{b:?}");
    let stats = app.send("GET", "/api/utility/billers/sz_water/stats", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!((stats.body["orders_paid"].as_i64(), stats.body["bills_paid"].as_i64()), (Some(1), Some(1)));
    assert_eq!(app.ledger_check().await["balanced"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_for_an_order_that_cannot_take_it_goes_to_suspense_with_a_refund_everyone_can_see() {
    let (app, _, token) = water_app(json!([bill("S-1", 8650), bill("S-2", 5000)]), "wx_paid_twice").await;
    let now = app.now.to_rfc3339();

    // A second capture (another event id) of a paid order: accepted, not paid again.
    let (paid_order, total) = placed_order(&app, &token, &bank_quote(&["S-1"]), "s-1").await;
    assert_eq!(
        app.notify(NOTIFY, &event("evt-a", &paid_order, "succeeded", total, Some(BANK_BIN), &now)).await.status,
        200
    );
    let twice = app.notify(NOTIFY, &event("evt-b", &paid_order, "succeeded", total, Some(BANK_BIN), &now)).await;
    assert_eq!((twice.status, twice.body["state"].as_str()), (200, Some("paid")), "{:?}", twice.body);
    let instruction = &twice.body["refund_instruction"];
    assert_eq!(
        (instruction["event_id"].as_str(), instruction["amount_fen"].as_i64(), instruction["reason"].as_str()),
        (Some("evt-b"), Some(total), Some("duplicate_payment")),
        "the gateway is told to return it: {:?}",
        twice.body
    );
    assert_eq!(instruction["refund"], "due");
    // Repeats of either notification change nothing.
    for id in ["evt-a", "evt-b", "evt-b"] {
        assert_eq!(
            app.notify(NOTIFY, &event(id, &paid_order, "succeeded", total, Some(BANK_BIN), &now)).await.status,
            200
        );
    }

    // A success after a failure: the order stays failed, the money goes to suspense.
    let (failed_order, total2) = placed_order(&app, &token, &bank_quote(&["S-2"]), "s-2").await;
    let failed = app.notify(NOTIFY, &event("evt-c", &failed_order, "failed", 0, None, &now)).await;
    assert_eq!(failed.body["state"], "failed");
    let late = app.notify(NOTIFY, &event("evt-d", &failed_order, "succeeded", total2, Some(BANK_BIN), &now)).await;
    assert_eq!(
        (late.body["state"].as_str(), late.body["refund_instruction"]["reason"].as_str()),
        (Some("failed"), Some("paid_after_failure"))
    );

    // The customer sees the refund on the order; operators see exactly the two in the exceptions list.
    let receipt = app.send("GET", &format!("/api/utility/orders/{paid_order}"), None, Some(&token)).await;
    assert_eq!(receipt.body["refunds_due"][0]["event_id"], "evt-b", "{:?}", receipt.body);
    assert_eq!(receipt.body["receipt_no"], "evt-a");
    let listed = exceptions(&app).await;
    let events: Vec<&str> =
        listed["items"].as_array().expect("items").iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert_eq!(events, ["evt-b", "evt-d"], "{listed:?}");
    assert_eq!(listed["total_fen"].as_i64(), Some(total + total2));
    assert_eq!(listed["items"][0]["order_id"].as_str(), Some(paid_order.as_str()));

    // Never to the partner: the biller is owed one payment, the suspense account holds the rest, books balance.
    assert_reconciled(&app, &now, 8650).await;
    let check = app.ledger_check().await;
    assert_eq!(check["balanced"], true, "{check:?}");
    assert_eq!(ledger_account(&check, "bank:suspense"), -(total + total2));

    // The gateway returns the first: its instruction is done (once, however often confirmed), the money leaves
    // suspense; an event that brought no exception has nothing to confirm.
    let confirmation = json!({"event_id": "evt-b", "order_id": paid_order});
    for _ in 0..2 {
        let done = app.notify("/api/utility/payments/refund-notify", &confirmation).await;
        assert_eq!(
            (done.status, done.body["refund_instruction"]["refund"].as_str()),
            (200, Some("refunded")),
            "{:?}",
            done.body
        );
    }
    let nothing =
        app.notify("/api/utility/payments/refund-notify", &json!({"event_id": "evt-a", "order_id": paid_order})).await;
    assert_eq!((nothing.status, nothing.body["code"].as_str()), (404, Some("refund_not_due")), "{:?}", nothing.body);
    let listed = exceptions(&app).await;
    assert_eq!(listed["items"][0]["refund"], "refunded", "{listed:?}");
    let check = app.ledger_check().await;
    assert_eq!(check["balanced"], true, "{check:?}");
    assert_eq!(ledger_account(&check, "bank:suspense"), -total2);
    let stats = app.send("GET", "/api/utility/billers/sz_water/stats", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!((stats.body["orders_paid"].as_i64(), stats.body["bills_paid"].as_i64()), (Some(1), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_payment_gives_back_its_discount_and_its_bill_at_once_and_stays_failed() {
    let app = TestApp::spawn().await.expect("app");
    let now = app.now.to_rfc3339();
    // The budget funds exactly one 4.32 yuan discount.
    let w = register(&app, water(432)).await;
    upload(&app, &w, json!([bill("F-1", 8650)])).await;
    let token = customer(&app, "wx_failed_once").await;
    let (order_id, total) = placed_order(&app, &token, &bank_quote(&["F-1"]), "f-1").await;
    assert_eq!(total, 8650 - 432);
    assert_eq!(budget(&app, &now, "water_card_2026").await["remaining_fen"], 0);

    let failed = app.notify(NOTIFY, &event("evt-f", &order_id, "failed", 0, None, &now)).await;
    assert_eq!(failed.body["state"], "failed");
    let b = budget(&app, &now, "water_card_2026").await;
    assert_eq!(
        (b["reserved_fen"].as_i64(), b["remaining_fen"].as_i64()),
        (Some(0), Some(432)),
        "released at once: {b:?}"
    );
    // The customer pays again at once: a new quote holds the bill and gets the discount.
    let (retry, retry_total) = placed_order(&app, &token, &bank_quote(&["F-1"]), "f-2").await;
    assert_eq!(retry_total, 8650 - 432, "the discount came back");
    assert_eq!(
        app.notify(NOTIFY, &event("evt-g", &retry, "succeeded", retry_total, Some(BANK_BIN), &now)).await.body["state"],
        "paid"
    );

    // A day later the failed order is still failed: its history does not change.
    let tomorrow = app.now.plus_days(1).to_rfc3339();
    let seen = at(&app, &tomorrow, "GET", &format!("/api/utility/orders/{order_id}"), None, &token).await;
    assert_eq!(seen["state"], "failed", "{seen:?}");
    assert_eq!(seen["history"].as_array().map(Vec::len), Some(2));
    assert_eq!(app.ledger_check().await["balanced"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_nobody_comes_back_for_frees_its_budget_and_its_bill_when_it_expires() {
    let app = TestApp::spawn().await.expect("app");
    let w = register(&app, water(432)).await;
    upload(&app, &w, json!([bill("E-1", 8650)])).await;
    let token = customer(&app, "wx_walked_away").await;
    let (abandoned, _) = placed_order(&app, &token, &bank_quote(&["E-1"]), "e-1").await;

    // 32 minutes later nobody has read that order. A budget read already shows nothing reserved...
    let later = app.now.plus_secs(32 * 60).to_rfc3339();
    let b = budget(&app, &later, "water_card_2026").await;
    assert_eq!((b["reserved_fen"].as_i64(), b["remaining_fen"].as_i64()), (Some(0), Some(432)), "{b:?}");
    // ...a new quote gets the bill and the discount...
    let q = at(&app, &later, "POST", "/api/utility/quotes", Some(&bank_quote(&["E-1"])), &token).await;
    assert_eq!(q["total_fen"].as_i64(), Some(8650 - 432), "{q:?}");
    // ...and the customer's order list shows the old order expired.
    let listed = at(&app, &later, "GET", "/api/utility/orders", None, &token).await;
    let old = listed["items"].as_array().expect("items").iter().find(|o| o["order_id"] == abandoned.as_str()).cloned();
    assert_eq!(old.expect("listed")["state"], "expired");
    // Money for it arriving now is not a payment: it goes to suspense, to be refunded.
    let late = event("evt-late", &abandoned, "succeeded", 8650 - 432, Some(BANK_BIN), &later);
    let r = app.notify_at(NOTIFY, &late, app.now.plus_secs(32 * 60)).await;
    assert_eq!(
        (r.body["state"].as_str(), r.body["refund_instruction"]["reason"].as_str()),
        (Some("expired"), Some("paid_after_expiry")),
        "{:?}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bill_re_issued_while_an_order_for_it_is_open_is_never_settled_short() {
    let (app, w, token) = water_app(json!([bill("V-1", 8650)]), "wx_bill_changed").await;
    let now = app.now.to_rfc3339();
    let other = json!({"biller_id": "sz_water", "account_no": "1234567890", "bill_ids": ["V-1"], "pay_with": "other"});
    let (old_order, old_total) = placed_order(&app, &token, &other, "v-1").await;

    // The biller corrects the bill upwards while that order is open: a new version, payable at once.
    upload(&app, &w, json!([bill("V-1", 9000)])).await;
    let bills = water_bills(&app, &token).await;
    let shown = &bills.body["items"][0];
    assert_eq!(
        (shown["amount_fen"].as_i64(), shown["version"].as_i64(), shown["due_fen"].as_i64()),
        (Some(9000), Some(2), Some(9000)),
        "{shown:?}"
    );
    // The old order's payment arrives: an exception to refund, the bill stays open for its new amount.
    let paid = app.notify(NOTIFY, &event("evt-v1", &old_order, "succeeded", old_total, None, &now)).await;
    assert_eq!(paid.body["refund_instruction"]["reason"], "items_changed", "{:?}", paid.body);
    let bills = water_bills(&app, &token).await;
    assert_eq!(
        (bills.body["items"][0]["status"].as_str(), bills.body["outstanding_fen"].as_i64()),
        (Some("open"), Some(9000))
    );
    // A new quote pays the new amount.
    let (new_order, new_total) = placed_order(&app, &token, &other, "v-2").await;
    assert_eq!(new_total, 9000);
    assert_eq!(
        app.notify(NOTIFY, &event("evt-v2", &new_order, "succeeded", 9000, None, &now)).await.body["state"],
        "paid"
    );
    let day = &now[..10];
    let statement = app
        .send("GET", &format!("/api/utility/billers/sz_water/settlement?date={day}"), None, Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(statement.body["total_gross_fen"].as_i64(), Some(9000), "{:?}", statement.body);
    assert_eq!(exceptions(&app).await["total_fen"].as_i64(), Some(old_total));
    assert_eq!(app.ledger_check().await["balanced"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_payments_to_an_exact_down_biller_reduce_what_is_due() {
    let app = TestApp::spawn().await.expect("app");
    let now = app.now.to_rfc3339();
    let mut body = water(100_000);
    body["exactness"] = json!("exact_down");
    let w = register(&app, body).await;
    upload(&app, &w, json!([bill("P-1", 8650)])).await;
    let token = customer(&app, "wx_pays_in_parts").await;
    let amount =
        |fen: i64| json!({"biller_id": "sz_water", "account_no": "1234567890", "amount_fen": fen, "pay_with": "other"});

    let (first, total) = placed_order(&app, &token, &amount(3000), "p-1").await;
    assert_eq!(
        app.notify(NOTIFY, &event("evt-p1", &first, "succeeded", total, None, &now)).await.body["state"],
        "paid"
    );
    let bills = water_bills(&app, &token).await;
    assert_eq!(
        (bills.body["items"][0]["due_fen"].as_i64(), bills.body["outstanding_fen"].as_i64()),
        (Some(5650), Some(5650)),
        "{:?}",
        bills.body
    );
    let too_much = quote(&app, &token, &amount(5651)).await;
    assert_eq!((too_much.status, too_much.body["code"].as_str()), (422, Some("amount_not_allowed")));
    let (rest, total) = placed_order(&app, &token, &amount(5650), "p-2").await;
    assert_eq!(app.notify(NOTIFY, &event("evt-p2", &rest, "succeeded", total, None, &now)).await.body["state"], "paid");
    let bills = water_bills(&app, &token).await;
    assert_eq!(bills.body["items"].as_array().map(Vec::len), Some(0), "settled in full: {:?}", bills.body);
    assert_eq!(app.ledger_check().await["balanced"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_clock_hours_off_still_books_the_payment_on_the_day_it_arrived() {
    let (app, _, token) = water_app(json!([bill("T-1", 8650), bill("T-2", 5000)]), "wx_odd_clock").await;
    let now = app.now.to_rfc3339();
    let other =
        |id: &str| json!({"biller_id": "sz_water", "account_no": "1234567890", "bill_ids": [id], "pay_with": "other"});
    let (past, _) = placed_order(&app, &token, &other("T-1"), "t-1").await;
    let (future, _) = placed_order(&app, &token, &other("T-2"), "t-2").await;
    let two_days_ago = app.now.plus_days(-2).to_rfc3339();
    let next_week = app.now.plus_days(7).to_rfc3339();
    assert_eq!(app.notify(NOTIFY, &event("evt-t1", &past, "succeeded", 8650, None, &two_days_ago)).await.status, 200);
    assert_eq!(app.notify(NOTIFY, &event("evt-t2", &future, "succeeded", 5000, None, &next_week)).await.status, 200);

    // Both land in today's statement, which reconciles; the receipts never show a time before the order or after now.
    assert_reconciled(&app, &now, 13_650).await;
    for id in [&past, &future] {
        let receipt = app.send("GET", &format!("/api/utility/orders/{id}"), None, Some(&token)).await;
        let paid_at =
            scenefin_core::clock::Timestamp::parse_rfc3339(receipt.body["paid_at"].as_str().expect("paid_at"))
                .expect("time");
        assert!(paid_at >= app.now.plus_secs(-300) && paid_at <= app.now.plus_secs(300), "{:?}", receipt.body);
    }
    assert_eq!(app.ledger_check().await["balanced"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_property_fee_group_paid_from_two_phones_at_once_is_held_by_one_order() {
    let app = std::sync::Arc::new(TestApp::spawn().await.expect("app"));
    let community = json!({
        "id": "pine_court", "name": "Pine Court", "city": "shenzhen", "property_company": "Pine Service",
        "settlement_account": "6222000055557777"
    });
    let r = app.send("POST", "/api/property/communities", Some(&community), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let (pid, secret) = (
        r.body["partner_id"].as_str().expect("id").to_owned(),
        r.body["partner_secret"].as_str().expect("secret").to_owned(),
    );
    let rooms = json!({"rooms": [{"room_id": "R-101", "building": "1", "unit": "1", "number": "101", "owner_name": "王五", "area_m2": 80, "monthly_fee_fen": 20000}]});
    let r = app.partner(&pid, &secret, "PUT", "/api/property/communities/pine_court/rooms", Some(&rooms)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let bills = json!({"bills": [
        {"bill_id": "PK-1", "room_id": "R-101", "cost_type": "parking", "period": "2026-11", "amount_fen": 20000, "due_date": "2026-12-31", "relate_id": "nov"},
        {"bill_id": "EL-1", "room_id": "R-101", "cost_type": "elevator", "period": "2026-11", "amount_fen": 5000, "due_date": "2026-12-31", "relate_id": "nov"}
    ]});
    let r = app.partner(&pid, &secret, "PUT", "/api/property/communities/pine_court/bills", Some(&bills)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let token = customer(&app, "wx_pine_owner").await;
    let claim = json!({"community_id": "pine_court", "room_id": "R-101", "owner_name": "王五"});
    assert_eq!(app.send("POST", "/api/property/households", Some(&claim), Some(&token)).await.status, 201);

    let body = json!({"room_id": "R-101", "bill_ids": ["PK-1", "EL-1"], "pay_with": "other"});
    let mut quotes = Vec::new();
    for _ in 0..4 {
        let q = app.send("POST", "/api/property/quotes", Some(&body), Some(&token)).await;
        assert_eq!(q.status, 201, "{:?}", q.body);
        quotes.push(q.body["quote_id"].as_str().expect("quote").to_owned());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, quote_id) in quotes.into_iter().enumerate() {
        let (app, token) = (app.clone(), token.clone());
        tasks.spawn(
            async move { app.place_order("/api/property/orders", &token, &quote_id, &format!("pine-{i}")).await },
        );
    }
    let mut placed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r.expect("task");
        if r.status == 201 {
            placed.push(r.body["order"]["order_id"].as_str().expect("order").to_owned());
        } else {
            assert_eq!((r.status, r.body["code"].as_str()), (409, Some("bill_in_payment")), "{:?}", r.body);
        }
    }
    assert_eq!(placed.len(), 1, "one order holds the fee group");
    let paid = event("evt-pine", &placed[0], "succeeded", 25_000, None, &app.now.to_rfc3339());
    assert_eq!(app.notify("/api/property/payments/notify", &paid).await.body["state"], "paid");
    let again = app.send("POST", "/api/property/quotes", Some(&body), Some(&token)).await;
    assert_eq!((again.status, again.body["code"].as_str()), (409, Some("bill_not_open")), "{:?}", again.body);
    assert_eq!(app.ledger_check().await["balanced"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campus_top_up_is_refunded_to_its_instrument_only_while_the_card_still_holds_it() {
    use crate::campus_card::{
        add_merchant, bind_card, by_card, customer, issue, member, my_card, onboard_school, spend, top_up,
    };
    let app = TestApp::spawn().await.expect("app");
    let school = onboard_school(&app, "thu", None).await;
    let canteen = add_merchant(&app, &school, "thu", "thu_canteen", "canteen").await;
    issue(&app, &school, "thu", &[member("T1", "student", "李雷", "2030-07-31", "424242")]).await;
    let token = customer(&app, "wx_thu_t1").await;
    let card = bind_card(&app, &token, "thu", "T1", "424242").await;
    let first = top_up(&app, &token, &card, 10_000, "thu_tu_1").await;
    let second = top_up(&app, &token, &card, 5_000, "thu_tu_2").await;
    let spent = spend(&app, &canteen, &by_card("thu-1", &card, 8_000)).await;
    assert_eq!(spent.status, 201, "{:?}", spent.body);

    // The card holds 70 yuan: the 100 yuan top-up cannot come back, the 50 yuan one can, once.
    let refused = campus_refund(&app, &first, "r-1", None).await;
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (422, Some("insufficient_funds")),
        "{:?}",
        refused.body
    );
    let merchant = campus_refund(&app, &second, "r-2", Some(&canteen)).await;
    assert_eq!(merchant.status, 403, "a merchant cannot refund top-ups: {:?}", merchant.body);
    let done = campus_refund(&app, &second, "r-3", Some(&school)).await;
    assert_eq!((done.status, done.body["state"].as_str()), (200, Some("refunded")), "{:?}", done.body);
    assert_eq!(campus_refund(&app, &second, "r-4", None).await.body["state"], "refunded", "once");
    assert_eq!(my_card(&app, &token, &card).await["balance_fen"], 2_000);
    let receipt = app.send("GET", &format!("/api/campus/orders/{first}"), None, Some(&token)).await;
    assert_eq!(receipt.body["state"], "paid", "the refused refund changed nothing");
    let check = app.ledger_check().await;
    assert_eq!(check["balanced"], true, "{check:?}");
    assert_eq!(ledger_account(&check, &format!("campus:card:{card}:stored_value")), -2_000);
}

/// `POST /api/campus/orders/{order}/refund` as the operator (`by: None`) or a signed partner.
async fn campus_refund(app: &TestApp, order: &str, key: &str, by: Option<&crate::campus_card::Partner>) -> Reply {
    let path = format!("/api/campus/orders/{order}/refund");
    let mut headers = match by {
        Some(p) => app.partner_headers(&p.id, &p.secret, "POST", &path, b""),
        None => vec![("authorization".to_owned(), format!("Bearer {OPERATOR_TOKEN}"))],
    };
    headers.push(("idempotency-key".to_owned(), key.to_owned()));
    app.send_raw("POST", &path, Vec::new(), &headers).await
}

/// `POST /api/utility/orders/{order}/refund` signed by the biller, with `amount_fen` when given.
async fn utility_refund(app: &TestApp, w: &Biller, order: &str, key: &str, amount_fen: Option<i64>) -> Reply {
    let path = format!("/api/utility/orders/{order}/refund");
    let body = amount_fen.map(|a| serde_json::to_vec(&json!({ "amount_fen": a })).expect("json")).unwrap_or_default();
    let mut headers = app.partner_headers(&w.partner_id, &w.secret, "POST", &path, &body);
    headers.push(("idempotency-key".to_owned(), key.to_owned()));
    headers.push(("content-type".to_owned(), "application/json".to_owned()));
    app.send_raw("POST", &path, body, &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_refunds_give_back_at_most_what_is_left_once_each_and_the_statement_reconciles() {
    let (app, w, token) = water_app(json!([bill("R-1", 8650)]), "wx_partly_refunded").await;
    let app = std::sync::Arc::new(app);
    let now = app.now.to_rfc3339();
    let (order_id, total) = placed_order(&app, &token, &bank_quote(&["R-1"]), "r-1").await;
    assert_eq!(total, 8218);
    let paid = app.notify(NOTIFY, &event("evt-r", &order_id, "succeeded", total, Some(BANK_BIN), &now)).await;
    assert_eq!(paid.body["state"], "paid");

    // 10 yuan back, sent twice with one key: once.
    for _ in 0..2 {
        let r = utility_refund(&app, &w, &order_id, "part-1", Some(1000)).await;
        assert_eq!(
            (r.status, r.body["state"].as_str(), r.body["refunded_fen"].as_i64()),
            (200, Some("paid"), Some(1000)),
            "{:?}",
            r.body
        );
    }
    // Two more at once, each of 40 yuan, with 72.18 left: only one fits.
    let mut tasks = tokio::task::JoinSet::new();
    for key in ["part-2", "part-3"] {
        let (app, w, order_id) = (
            app.clone(),
            Biller { id: w.id.clone(), partner_id: w.partner_id.clone(), secret: w.secret.clone() },
            order_id.clone(),
        );
        tasks.spawn(async move { utility_refund(&app, &w, &order_id, key, Some(4000)).await });
    }
    let mut answers = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r.expect("task");
        answers.push((r.status, r.body["code"].as_str().map(str::to_owned)));
    }
    answers.sort();
    assert_eq!(answers, [(200, None), (422, Some("refund_exceeds_remaining".to_owned()))], "{answers:?}");
    let too_much = utility_refund(&app, &w, &order_id, "part-4", Some(3219)).await;
    assert_eq!((too_much.status, too_much.body["code"].as_str()), (422, Some("refund_exceeds_remaining")));
    // The rest (32.18 yuan and the bank's discount) closes the order and reopens the bill.
    let rest = utility_refund(&app, &w, &order_id, "rest", None).await;
    assert_eq!(
        (rest.status, rest.body["state"].as_str(), rest.body["refunded_fen"].as_i64()),
        (200, Some("refunded"), Some(total)),
        "{:?}",
        rest.body
    );
    assert_eq!(rest.body["partial_refunds"].as_array().map(Vec::len), Some(2));
    assert_eq!(water_bills(&app, &token).await.body["outstanding_fen"], 8650);

    // The biller's day: the payment, two partial refunds and the rest, to zero, line by line on the ledger.
    assert_reconciled(&app, &now, 0).await;
    let check = app.ledger_check().await;
    assert_eq!(check["balanced"], true, "{check:?}");
    assert_eq!((ledger_account(&check, "gateway:clearing"), ledger_account(&check, "bank:marketing")), (0, 0));
}
