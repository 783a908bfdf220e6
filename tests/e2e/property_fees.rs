//! Property fees end to end: a property company, an owner and the gateway.

use scenefin_core::auth::Provider;
use scenefin_e2e::{BANK_BIN, OPERATOR_TOKEN, Reply, TestApp};
use serde_json::{Value, json};

async fn order(app: &TestApp, token: &str, quote_id: &str, key: &str) -> Reply {
    app.place_order("/api/property/orders", token, quote_id, key).await
}

fn paid(id: &str, order_id: &str, paid_fen: i64, at: &str) -> Value {
    json!({"event_id": id, "order_id": order_id, "status": "succeeded", "paid_fen": paid_fen, "paid_at": at,
           "instrument": {"type": "bank_card", "bin": "62258801", "card_fingerprint": "fp_owner"}})
}

fn bill_ids(household: &Value) -> Vec<String> {
    household["bills"]
        .as_array()
        .expect("bills")
        .iter()
        .filter_map(|b| b["bill_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_pays_fees_with_late_fee_discount_and_prepay_then_gets_a_refund() {
    let app = TestApp::spawn().await.expect("app");
    let now = app.now.to_rfc3339();

    // Onboard the community; the property company uploads rooms and bills.
    let community = json!({
        "id": "sky_garden", "name": "Sky Garden", "city": "shenzhen", "property_company": "Vanke Service",
        "settlement_account": "6222000055556666",
        "owner_discount": {"percent_bp": 500, "cap_fen": 2000, "budget_id": "sky_owner_2026", "budget_fen": 100000},
        "prepay": {"months": 12, "free_months": 1},
        "late_fee": {"late_fee_bp_per_day": 5, "grace_days": 10, "cap_bp": 1000}
    });
    let r = app.send("POST", "/api/property/communities", Some(&community), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let (pid, secret) = (
        r.body["partner_id"].as_str().expect("id").to_owned(),
        r.body["partner_secret"].as_str().expect("secret").to_owned(),
    );
    let rooms = json!({"rooms": [
        {"room_id": "B1-U1-101", "building": "1", "unit": "1", "number": "101", "owner_name": "张三丰", "area_m2": 89.52, "monthly_fee_fen": 25000},
        {"room_id": "B1-U1-102", "building": "1", "unit": "1", "number": "102", "owner_name": "李四", "area_m2": 120, "monthly_fee_fen": 30000}
    ]});
    let r = app.partner(&pid, &secret, "PUT", "/api/property/communities/sky_garden/rooms", Some(&rooms)).await;
    assert_eq!((r.status, r.body["created"].as_u64()), (200, Some(2)), "{:?}", r.body);
    let bills = json!({"bills": [
        {"bill_id": "P2026-09-101", "room_id": "B1-U1-101", "cost_type": "property", "period": "2026-09", "amount_fen": 25000, "due_date": "2026-10-15"},
        {"bill_id": "PARK-10-101", "room_id": "B1-U1-101", "cost_type": "parking", "period": "2026-10", "amount_fen": 20000, "due_date": "2026-11-30", "relate_id": "oct-101"},
        {"bill_id": "ELEV-10-101", "room_id": "B1-U1-101", "cost_type": "elevator", "period": "2026-10", "amount_fen": 5000, "due_date": "2026-11-30", "relate_id": "oct-101"},
        {"bill_id": "X-1", "room_id": "NO-SUCH-ROOM", "cost_type": "other", "period": "2026-10", "amount_fen": 100, "due_date": "2026-11-30"}
    ]});
    let r = app.partner(&pid, &secret, "PUT", "/api/property/communities/sky_garden/bills", Some(&bills)).await;
    assert_eq!((r.status, r.body["created"].as_u64()), (200, Some(3)), "{:?}", r.body);
    assert_eq!(r.body["rejected"][0][1], "room_not_found");

    // The owner claims the room: a wrong name is refused without revealing the right one.
    let token =
        app.login(Provider::Wechat, "wx_owner_101", None, None).await.body["token"].as_str().expect("token").to_owned();
    let wrong = app
        .send(
            "POST",
            "/api/property/households",
            Some(&json!({"community_id": "sky_garden", "room_id": "B1-U1-101", "owner_name": "张三"})),
            Some(&token),
        )
        .await;
    assert_eq!((wrong.status, wrong.body["code"].as_str()), (422, Some("owner_name_mismatch")));
    assert!(!wrong.body.to_string().contains("三丰"), "the stored name never leaks");
    let ok = app
        .send(
            "POST",
            "/api/property/households",
            Some(&json!({"community_id": "sky_garden", "room_id": "B1-U1-101", "owner_name": " 张 三丰 "})),
            Some(&token),
        )
        .await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
    let h = app.send("GET", "/api/property/households", None, Some(&token)).await;
    let room = &h.body["items"][0];
    // 29 days past the 10 grace days at 0.05% a day on 250 yuan = 3.625 yuan, truncated to 3.62.
    assert_eq!(room["arrears_fen"], 25000 + 362 + 20000 + 5000, "{room:?}");
    assert_eq!(room["owner_masked"], "张*丰");

    // Quotes: a partial relate group is refused; the full payment with 12 months ahead on the bank's card.
    let partial = app
        .send(
            "POST",
            "/api/property/quotes",
            Some(&json!({"room_id": "B1-U1-101", "bill_ids": ["PARK-10-101"], "pay_with": "other"})),
            Some(&token),
        )
        .await;
    assert_eq!((partial.status, partial.body["code"].as_str()), (422, Some("partial_relate_group")));
    let q = app
        .send(
            "POST",
            "/api/property/quotes",
            Some(&json!({
                "room_id": "B1-U1-101", "bill_ids": ["P2026-09-101", "PARK-10-101", "ELEV-10-101"], "prepay_months": 12,
                "pay_with": "bank_card", "card_bin": BANK_BIN
            })),
            Some(&token),
        )
        .await;
    assert_eq!(q.status, 201, "{:?}", q.body);
    let kinds: Vec<&str> =
        q.body["lines"].as_array().expect("lines").iter().filter_map(|l| l["kind"].as_str()).collect();
    assert_eq!(kinds, ["fee", "late_fee", "fee", "fee", "prepay", "prepay_incentive", "cardholder_discount"]);
    assert_eq!(q.body["total_fen"], 25000 + 362 + 20000 + 5000 + 300_000 - 2000, "discount capped at 20 yuan");
    let stranger =
        app.login(Provider::Wechat, "wx_not_owner", None, None).await.body["token"].as_str().expect("token").to_owned();
    let r = app
        .send(
            "POST",
            "/api/property/quotes",
            Some(&json!({"room_id": "B1-U1-101", "bill_ids": ["P2026-09-101"], "pay_with": "other"})),
            Some(&stranger),
        )
        .await;
    assert_eq!(r.status, 404, "only the owner who claimed the room can pay for it");

    // Order and pay; duplicate notifications fulfil once.
    let placed = order(&app, &token, q.body["quote_id"].as_str().expect("quote"), "prop-order-1").await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let order_id = placed.body["order"]["order_id"].as_str().expect("order").to_owned();
    let total = placed.body["order"]["total_fen"].as_i64().expect("total");
    let event = paid("pevt_1", &order_id, total, &now);
    let (a, b, c) = tokio::join!(
        app.notify("/api/property/payments/notify", &event),
        app.notify("/api/property/payments/notify", &event),
        app.notify("/api/property/payments/notify", &event)
    );
    for r in [a, b, c] {
        assert_eq!((r.status, r.body["state"].as_str()), (200, Some("paid")), "{:?}", r.body);
    }
    let h = app.send("GET", "/api/property/households", None, Some(&token)).await;
    assert!(bill_ids(&h.body["items"][0]).is_empty(), "all bills settled");
    assert_eq!(h.body["items"][0]["prepaid_months"], 13, "12 paid + 1 free");
    let stats = app.send("GET", "/api/property/communities/sky_garden/stats", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(
        (stats.body["rooms"].as_i64(), stats.body["households_claimed"].as_i64()),
        (Some(2), Some(1)),
        "{:?}",
        stats.body
    );
    assert_eq!((stats.body["orders_paid"].as_i64(), stats.body["late_fee_income_fen"].as_i64()), (Some(1), Some(362)));
    assert_eq!(stats.body["bank_card_penetration_bp"], 10_000);
    assert_eq!(stats.body["collection"][0]["collection_rate_bp"], 10_000);
    let me = app.send("GET", "/api/me", None, Some(&token)).await;
    assert!(me.body["tags"].as_array().expect("tags").iter().any(|t| t == "property_owner"));

    // The property company refunds: bills reopen, prepaid months go, income is reversed.
    let path = format!("/api/property/orders/{order_id}/refund");
    let mut headers = app.partner_headers(&pid, &secret, "POST", &path, b"");
    headers.push(("idempotency-key".into(), "prop-refund-1".into()));
    let refunded = app.send_raw("POST", &path, Vec::new(), &headers).await;
    assert_eq!((refunded.status, refunded.body["state"].as_str()), (200, Some("refunded")), "{:?}", refunded.body);
    let h = app.send("GET", "/api/property/households", None, Some(&token)).await;
    assert_eq!(bill_ids(&h.body["items"][0]).len(), 3);
    assert_eq!(h.body["items"][0]["prepaid_months"], 0);
    let stats = app.send("GET", "/api/property/communities/sky_garden/stats", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(stats.body["late_fee_income_fen"], 0);
    assert_eq!(stats.body["collection"][0]["paid_fen"], 0);

    // Settlement and the ledger agree.
    let statement = app
        .partner(
            &pid,
            &secret,
            "GET",
            &format!("/api/property/communities/sky_garden/settlement?date={}", &now[..10]),
            None,
        )
        .await;
    assert_eq!(statement.status, 200, "{:?}", statement.body);
    assert_eq!(statement.body["reconciled"], true, "{:?}", statement.body);
    assert_eq!(statement.body["lines"].as_array().map(Vec::len), Some(2));
    assert_eq!(statement.body["total_gross_fen"], 0, "paid and refunded the same day");
    let check = app.send("GET", "/api/ops/ledger/check", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(check.body["balanced"], true, "{:?}", check.body);

    // Perks: none yet; a company cannot act on another community.
    let perks = app.send("GET", "/api/property/communities/sky_garden/perks", None, None).await;
    assert_eq!(perks.body["items"], json!([]));
    assert_eq!(app.send("GET", "/api/property/communities/nowhere/perks", None, None).await.status, 404);
    let other = app.partner(&pid, &secret, "GET", "/api/property/communities/other_garden/stats", None).await;
    assert_eq!(other.status, 403);
    app.host.shutdown().await;
}
