//! Partners' event feeds (issue 26, first part): a biller reads what happened to its bills — each payment and each
//! refund once, in order, whatever the concurrency, duplicate notifications and retries — from
//! `GET /api/utility/partners/events`, signed as itself.

use std::collections::BTreeMap;

use scenefin_e2e::{Api, OPERATOR_TOKEN, TestApp};
use serde_json::{Value, json};

use crate::campus_card as campus;
use crate::merchant_coupons as coupons;
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
            (order_id, paid_fen)
        });
    }
    let paid: Vec<(String, i64)> = payers.join_all().await;
    let orders: Vec<String> = paid.iter().map(|(o, _)| o.clone()).collect();

    // A second payment of a paid order (a duplicate capture): the gateway is told to return it and confirms it did,
    // twice; the biller reads that once.
    let (dup, dup_fen) = &paid[n as usize - 1];
    let second = utility::event("evt_ev_dup", dup, "succeeded", *dup_fen, None, &app.now.to_rfc3339());
    let r = app.notify("/api/utility/payments/notify", &second).await;
    assert_eq!(r.body["refund_instruction"]["reason"], "duplicate_payment", "{:?}", r.body);
    for _ in 0..2 {
        let done = app
            .notify("/api/utility/payments/refund-notify", &json!({"event_id": "evt_ev_dup", "order_id": dup}))
            .await;
        assert_eq!(done.body["refund_instruction"]["refund"], "refunded", "{:?}", done.body);
    }

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
        let returned: Vec<&Value> = events.iter().filter(|e| e["type"] == "payment.returned").collect();
        assert_eq!(returned.len(), 1, "page {page}: {events:?}");
        assert_eq!(
            (returned[0]["data"]["order_id"].as_str(), returned[0]["data"]["reason"].as_str()),
            (Some(dup.as_str()), Some("duplicate_payment"))
        );
        assert_eq!(events.len(), n as usize + 3, "page {page}: nothing else: {events:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_reads_each_redemption_and_reversal_of_its_coupons_once_in_order() {
    let app = TestApp::spawn().await.expect("app");
    let cafe = coupons::onboard_merchant(&app, "ev_cafe", "futian", &["ev_1", "ev_2"]).await;
    let other = coupons::onboard_merchant(&app, "ev_tea", "futian", &["ev_t1"]).await;
    coupons::create_campaign(&app, &coupons::campaign("ev_camp", &["ev_cafe", "ev_tea"])).await;
    let n = 6;
    let mut codes = Vec::new();
    for i in 0..n {
        let customer = coupons::login(&app, &format!("wx_cpn_events_{i}"), None).await;
        let r = coupons::claim(&app, &customer.token, "ev_camp", &format!("ev-claim-{i}")).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        codes.push(coupons::str_of(&r.body, "code"));
    }

    // Six redemptions at once at two tills; every other one sent twice at once (the POS retried).
    let mut tills = tokio::task::JoinSet::new();
    for (i, code) in codes.iter().enumerate() {
        let (app, cafe) = (app.api.clone(), cafe.clone());
        let order =
            coupons::order(code, if i % 2 == 0 { "ev_1" } else { "ev_2" }, 3000 + i as i64, &format!("ev-mo-{i}"));
        tills.spawn(async move {
            let (a, b) = if i % 2 == 0 {
                tokio::join!(coupons::redeem(&app, &cafe, &order), coupons::redeem(&app, &cafe, &order))
            } else {
                (coupons::redeem(&app, &cafe, &order).await, coupons::redeem(&app, &cafe, &order).await)
            };
            assert_eq!((a.status, b.status), (201, 201), "{:?} {:?}", a.body, b.body);
            assert_eq!(a.body["redemption_id"], b.body["redemption_id"]);
            (i, coupons::str_of(&a.body, "redemption_id"))
        });
    }
    let mut redemptions: Vec<(usize, String)> = tills.join_all().await;
    redemptions.sort();
    let redemptions: Vec<String> = redemptions.into_iter().map(|(_, id)| id).collect();

    // Two reversals, each asked twice.
    for id in &redemptions[..2] {
        for _ in 0..2 {
            let path = format!("/api/coupons/redemptions/{id}/reverse");
            let r = app.partner(&cafe.partner_id, &cafe.secret, "POST", &path, None).await;
            assert_eq!((r.status, r.body["state"].as_str()), (200, Some("reversed")), "{:?}", r.body);
        }
    }

    for page in [1, 4, 50] {
        let events = feed(&app, &cafe.partner_id, &cafe.secret, "coupons", page).await;
        let reversed = ("coupon.reversed", &redemptions[..2]);
        assert_each_once_in_order(&events, ("coupon.redeemed", &redemptions), reversed, 0, page);
        // What the cashier needs to confirm the discount without a second call, and never the code itself.
        let first = format!("coupon.redeemed:{}", redemptions[0]);
        let redeemed = events.iter().find(|e| e["id"] == first.as_str()).expect("the first redemption");
        let d = &redeemed["data"];
        assert_eq!(
            (
                redeemed["type"].as_str(),
                d["merchant_id"].as_str(),
                d["store_id"].as_str(),
                d["merchant_order_id"].as_str(),
                d["campaign_id"].as_str()
            ),
            (Some("coupon.redeemed"), Some("ev_cafe"), Some("ev_1"), Some("ev-mo-0"), Some("ev_camp")),
            "{redeemed}"
        );
        assert_eq!(
            (d["order_amount_fen"].as_i64(), d["discount_fen"].as_i64(), d["pay_fen"].as_i64()),
            (Some(3000), Some(500), Some(2500)),
            "{redeemed}"
        );
        assert!(d["coupon_id"].as_str().is_some() && d.get("code").is_none(), "{redeemed}");
        assert!(!redeemed.to_string().contains(&codes[0]), "the code is not repeated: {redeemed}");
        let reversed = events.iter().find(|e| e["type"] == "coupon.reversed").expect("a reversal");
        assert_eq!(
            (reversed["data"]["discount_fen"].as_i64(), reversed["data"]["coupon_restored"].as_bool()),
            (Some(500), Some(true)),
            "{reversed}"
        );
    }

    // Another merchant's feed holds none of it; an unsigned or badly signed read is refused.
    assert!(feed(&app, &other.partner_id, &other.secret, "coupons", 10).await.is_empty());
    let r = app.send("GET", "/api/coupons/partners/events", None, None).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    let r = app.partner(&cafe.partner_id, "not-the-secret", "GET", "/api/coupons/partners/events", None).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    app.host.shutdown().await;
}

/// Checks a feed read at page size `page`: each of `paid` once as `{paid_kind}:{id}`, each of `refunded` once as
/// `{refunded_kind}:{id}` after its payment, `extra` other events, all in seq order.
fn assert_each_once_in_order(
    events: &[Value],
    (paid_kind, paid): (&str, &[String]),
    (refunded_kind, refunded): (&str, &[String]),
    extra: usize,
    page: usize,
) {
    let seen = counted(events);
    for id in paid {
        assert_eq!(seen.get(&format!("{paid_kind}:{id}")), Some(&1), "page {page}: {events:?}");
    }
    let at = |id: String| events.iter().position(|e| e["id"] == id.as_str()).expect("present");
    for id in refunded {
        assert_eq!(seen.get(&format!("{refunded_kind}:{id}")), Some(&1), "page {page}: {events:?}");
        assert!(at(format!("{paid_kind}:{id}")) < at(format!("{refunded_kind}:{id}")), "paid before refunded");
    }
    assert_eq!(events.len(), paid.len() + refunded.len() + extra, "page {page}: nothing else: {events:?}");
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().expect("seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert!(events.iter().all(|e| e["occurred_at"].as_str().is_some_and(|t| t.ends_with("+08:00"))), "{events:?}");
}

/// `POST /api/{scenario}/orders/{order_id}/refund` as the operator, twice with the same key: refunded once.
async fn refund_twice(app: &Api, scenario: &str, order_id: &str) {
    for _ in 0..2 {
        let headers = [
            ("authorization".to_owned(), format!("Bearer {OPERATOR_TOKEN}")),
            ("idempotency-key".to_owned(), format!("ev-refund-{order_id}")),
        ];
        let path = format!("/api/{scenario}/orders/{order_id}/refund");
        let r = app.send_raw("POST", &path, Vec::new(), &headers).await;
        assert_eq!((r.status, r.body["state"].as_str()), (200, Some("refunded")), "{:?}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_property_company_reads_each_fee_payment_and_refund_of_its_community_once_in_order() {
    let app = TestApp::spawn().await.expect("app");
    let onboard = async |id: &str| {
        let community = json!({
            "id": id, "name": format!("{id} Garden"), "city": "shenzhen", "property_company": "Vanke Service",
            "settlement_account": "6222000055556666", "prepay": {"months": 12, "free_months": 1}
        });
        let r = app.send("POST", "/api/property/communities", Some(&community), Some(OPERATOR_TOKEN)).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        (
            r.body["partner_id"].as_str().expect("id").to_owned(),
            r.body["partner_secret"].as_str().expect("s").to_owned(),
        )
    };
    let (pid, secret) = onboard("ev_garden").await;
    let (other_pid, other_secret) = onboard("ev_court").await;
    let n = 5;
    let rooms: Vec<Value> = (0..n)
        .map(|i| {
            json!({"room_id": format!("R{i}"), "building": "1", "unit": "1", "number": format!("{i}"),
                   "owner_name": format!("业主{i}"), "area_m2": 80, "monthly_fee_fen": 20000 + i})
        })
        .collect();
    let r = app
        .partner(&pid, &secret, "PUT", "/api/property/communities/ev_garden/rooms", Some(&json!({"rooms": rooms})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let bills: Vec<Value> = (0..n)
        .map(|i| {
            json!({"bill_id": format!("EVF-{i}"), "room_id": format!("R{i}"), "cost_type": "property",
                   "period": "2026-12", "amount_fen": 20000 + i, "due_date": "2027-01-15"})
        })
        .collect();
    let r = app
        .partner(&pid, &secret, "PUT", "/api/property/communities/ev_garden/bills", Some(&json!({"bills": bills})))
        .await;
    assert_eq!((r.status, r.body["created"].as_u64()), (200, Some(n as u64)), "{:?}", r.body);

    // Five owners pay at once (the first also twelve months ahead), each notification delivered twice at once.
    let mut payers = tokio::task::JoinSet::new();
    for i in 0..n {
        let app = app.api.clone();
        payers.spawn(async move {
            let login =
                app.login(scenefin_core::auth::Provider::Wechat, &format!("wx_fee_events_{i}"), None, None).await;
            let token = login.body["token"].as_str().expect("token").to_owned();
            let claim =
                json!({"community_id": "ev_garden", "room_id": format!("R{i}"), "owner_name": format!("业主{i}")});
            let r = app.send("POST", "/api/property/households", Some(&claim), Some(&token)).await;
            assert_eq!(r.status, 201, "{:?}", r.body);
            let mut quote = json!({"room_id": format!("R{i}"), "bill_ids": [format!("EVF-{i}")], "pay_with": "other"});
            if i == 0 {
                quote["prepay_months"] = json!(12);
            }
            let q = app.send("POST", "/api/property/quotes", Some(&quote), Some(&token)).await;
            assert_eq!(q.status, 201, "{:?}", q.body);
            let quote_id = q.body["quote_id"].as_str().expect("quote");
            let placed = app.place_order("/api/property/orders", &token, quote_id, &format!("evf-{i}")).await;
            assert_eq!(placed.status, 201, "{:?}", placed.body);
            let order_id = placed.body["order"]["order_id"].as_str().expect("order").to_owned();
            let total = placed.body["order"]["total_fen"].as_i64().expect("total");
            let event = json!({"event_id": format!("evt_fee_{i}"), "order_id": order_id, "status": "succeeded",
                               "paid_fen": total, "paid_at": app.now.to_rfc3339(), "instrument": {"type": "wallet"}});
            let (a, b) = tokio::join!(
                app.notify("/api/property/payments/notify", &event),
                app.notify("/api/property/payments/notify", &event)
            );
            assert_eq!((a.status, b.status), (200, 200), "{:?} {:?}", a.body, b.body);
            (i, order_id)
        });
    }
    let mut orders: Vec<(i32, String)> = payers.join_all().await;
    orders.sort();
    let orders: Vec<String> = orders.into_iter().map(|(_, o)| o).collect();
    for order_id in &orders[..2] {
        refund_twice(&app, "property", order_id).await;
    }

    for page in [1, 3, 50] {
        let events = feed(&app, &pid, &secret, "property", page).await;
        assert_each_once_in_order(&events, ("fee.paid", &orders), ("fee.refunded", &orders[..2]), 0, page);
        // What the property company needs to write the bill off and credit the months without a second call.
        let first = format!("fee.paid:{}", orders[0]);
        let paid = events.iter().find(|e| e["id"] == first.as_str()).expect("the first payment");
        let d = &paid["data"];
        assert_eq!(
            (paid["type"].as_str(), d["community_id"].as_str(), d["room_id"].as_str(), d["prepaid_months"].as_u64()),
            (Some("fee.paid"), Some("ev_garden"), Some("R0"), Some(12)),
            "{paid}"
        );
        assert_eq!(
            (
                d["bills"][0]["bill_id"].as_str(),
                d["bills"][0]["outcome"].as_str(),
                d["bills"][0]["amount_fen"].as_i64()
            ),
            (Some("EVF-0"), Some("paid"), Some(20000)),
            "{paid}"
        );
        let refunded = events.iter().find(|e| e["type"] == "fee.refunded").expect("a refund");
        assert!(refunded["data"]["refunded_fen"].as_i64().is_some_and(|f| f > 0), "{refunded}");
    }

    // Another community's company sees none of it; an unsigned or badly signed read is refused.
    assert!(feed(&app, &other_pid, &other_secret, "property", 10).await.is_empty());
    let r = app.send("GET", "/api/property/partners/events", None, None).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    let r = app.partner(&pid, "not-the-secret", "GET", "/api/property/partners/events", None).await;
    assert_eq!(r.status, 401, "{:?}", r.body);

    // The next day the company's first poll closes the day: one `statement.closed`, with the totals of the
    // statement it names (five payments and two refunds: seven lines).
    let mut tomorrow = app.api.clone();
    tomorrow.now = tomorrow.now.plus_days(1);
    let events = feed(&tomorrow, &pid, &secret, "property", 50).await;
    let closed: Vec<&Value> = events.iter().filter(|e| e["type"] == "statement.closed").collect();
    assert_eq!(closed.len(), 1, "{events:?}");
    let d = &closed[0]["data"];
    assert_eq!(
        (d["community_id"].as_str(), d["lines"].as_u64(), d["reconciled"].as_bool()),
        (Some("ev_garden"), Some(7), Some(true)),
        "{d}"
    );
    let statement = tomorrow.partner(&pid, &secret, "GET", d["statement_path"].as_str().expect("path"), None).await;
    assert_eq!(
        (statement.status, &statement.body["total_gross_fen"]),
        (200, &d["total_gross_fen"]),
        "{:?}",
        statement.body
    );
    assert!(feed(&tomorrow, &other_pid, &other_secret, "property", 10).await.is_empty(), "nothing to close for it");
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_school_reads_each_top_up_refund_and_reissue_of_its_cards_once_in_order() {
    let app = TestApp::spawn().await.expect("app");
    let school = campus::onboard_school(&app, "ev_u", None).await;
    let other = campus::onboard_school(&app, "ev_v", None).await;
    // A POS whose merchant id is the school's own id: it reads its own feed, never the school's.
    let pos = campus::add_merchant(&app, &school, "ev_u", "ev_u", "canteen").await;
    let n = 4;
    let members: Vec<Value> = (0..n)
        .map(|i| campus::member(&format!("E{i}"), "student", "学生", "2030-07-31", &format!("{}", 700_000 + i)))
        .collect();
    campus::issue(&app, &school, "ev_u", &members).await;

    // Four students top up at once, each notification delivered twice at once.
    let mut payers = tokio::task::JoinSet::new();
    for i in 0..n {
        let app = app.api.clone();
        payers.spawn(async move {
            let token = campus::customer(&app, &format!("wx_topup_events_{i}")).await;
            let card = campus::bind_card(&app, &token, "ev_u", &format!("E{i}"), &format!("{}", 700_000 + i)).await;
            let placed =
                campus::topup(&app, &token, &format!("ev-tu-{i}"), &campus::topup_body(&card, 1_000 + i, None)).await;
            assert_eq!(placed.status, 201, "{:?}", placed.body);
            let order_id = campus::str_of(&placed.body["order"], "order_id");
            let event = campus::paid_event(&format!("evt_tu_{i}"), &order_id, 1_000 + i, app.now, None);
            let (a, b) = tokio::join!(campus::notify(&app, &event), campus::notify(&app, &event));
            assert_eq!((a.status, b.status), (200, 200), "{:?} {:?}", a.body, b.body);
            (i, order_id, token, card)
        });
    }
    let mut paid = payers.join_all().await;
    paid.sort();
    let orders: Vec<String> = paid.iter().map(|(_, o, _, _)| o.clone()).collect();
    for order_id in &orders[..2] {
        refund_twice(&app, "campus", order_id).await;
    }
    // Two reissues: one asked twice in a row, one three times at once; one event each.
    let reissue = async |token: &str, card: &str| {
        app.send("POST", &format!("/api/campus/cards/{card}/reissue"), None, Some(token)).await
    };
    let mut reissued = Vec::new();
    let (_, _, token, card) = &paid[2];
    for _ in 0..2 {
        let r = reissue(token, card).await;
        assert!(matches!(r.status, 200 | 201), "{:?}", r.body);
        reissued.push(campus::str_of(&r.body["card"], "card_id"));
    }
    let (_, _, token, card) = &paid[3];
    let (a, b, c) = tokio::join!(reissue(token, card), reissue(token, card), reissue(token, card));
    for r in [&a, &b, &c] {
        assert!(matches!(r.status, 200 | 201), "{:?}", r.body);
        reissued.push(campus::str_of(&r.body["card"], "card_id"));
    }
    reissued.dedup();
    assert_eq!(reissued.len(), 2, "one new card per reissued card: {reissued:?}");

    for page in [1, 3, 50] {
        let events = feed(&app, &school.id, &school.secret, "campus", page).await;
        assert_each_once_in_order(&events, ("topup.credited", &orders), ("topup.refunded", &orders[..2]), 2, page);
        for (new, (_, _, _, old)) in reissued.iter().zip(&paid[2..]) {
            let id = format!("card.reissued:{new}");
            let found: Vec<&Value> = events.iter().filter(|e| e["id"] == id.as_str()).collect();
            assert_eq!(found.len(), 1, "page {page}: {events:?}");
            let d = &found[0]["data"];
            assert_eq!(
                (d["school_id"].as_str(), d["replaced_card_id"].as_str(), d["card_id"].as_str()),
                (Some("ev_u"), Some(old.as_str()), Some(new.as_str())),
                "{d}"
            );
            assert!(d["moved_fen"].as_i64().is_some_and(|f| f >= 1_000), "the balance moved: {d}");
        }
        let first = format!("topup.credited:{}", orders[0]);
        let credited = events.iter().find(|e| e["id"] == first.as_str()).expect("the first top-up");
        let d = &credited["data"];
        assert_eq!(
            (d["school_id"].as_str(), d["member_no"].as_str(), d["amount_fen"].as_i64(), d["bonus_fen"].as_i64()),
            (Some("ev_u"), Some("E0"), Some(1_000), Some(0)),
            "{credited}"
        );
    }

    // The other school and the POS (whose merchant id is the school's) see none of it; unsigned is refused.
    assert!(feed(&app, &other.id, &other.secret, "campus", 10).await.is_empty());
    assert!(feed(&app, &pos.id, &pos.secret, "campus", 10).await.is_empty());
    let r = app.send("GET", "/api/campus/partners/events", None, None).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    let r = app.partner(&school.id, "not-the-secret", "GET", "/api/campus/partners/events", None).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    app.host.shutdown().await;
}
