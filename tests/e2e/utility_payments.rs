//! Utility payments end to end, as a biller, a mini-program and the gateway would drive them.

use scenefin_core::auth::Provider;
use scenefin_e2e::{Api, BANK_BIN, OPERATOR_TOKEN, Reply, TestApp};
use serde_json::{Value, json};

pub(crate) struct Biller {
    pub(crate) id: String,
    pub(crate) partner_id: String,
    pub(crate) secret: String,
}

pub(crate) async fn register(app: &Api, body: Value) -> Biller {
    let r = app.send("POST", "/api/utility/billers", Some(&body), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    Biller {
        id: body["id"].as_str().expect("id").into(),
        partner_id: r.body["partner_id"].as_str().expect("partner_id").into(),
        secret: r.body["partner_secret"].as_str().expect("secret").into(),
    }
}

pub(crate) fn water(discount_budget_fen: i64) -> Value {
    json!({
        "id": "sz_water", "name": "Shenzhen Water", "category": "water", "city": "shenzhen",
        "account_rule": {"min_len": 8, "max_len": 10, "charset": "digits"},
        "exactness": "exact", "settlement_account": "6222000011112222",
        "discount": {"percent_bp": 500, "cap_fen": 1000, "budget_id": "water_card_2026", "budget_fen": discount_budget_fen}
    })
}

pub(crate) async fn customer(app: &TestApp, subject: &str) -> String {
    let s = app.login(Provider::Wechat, subject, None, None).await;
    s.body["token"].as_str().expect("token").to_owned()
}

pub(crate) fn event(id: &str, order_id: &str, status: &str, paid_fen: i64, bin: Option<&str>, at: &str) -> Value {
    let instrument = match bin {
        Some(bin) => json!({"type": "bank_card", "bin": bin, "card_fingerprint": "fp_1"}),
        None => json!({"type": "wallet"}),
    };
    json!({"event_id": id, "order_id": order_id, "status": status, "paid_fen": paid_fen, "paid_at": at, "instrument": instrument})
}

pub(crate) async fn order(app: &Api, token: &str, quote_id: &str, key: &str) -> Reply {
    app.place_order("/api/utility/orders", token, quote_id, key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_household_pays_its_water_bill_end_to_end() {
    let app = TestApp::spawn().await.expect("app");
    let now = app.now.to_rfc3339();

    // The operator registers the biller; the biller uploads bills with its credentials.
    let w = register(&app, water(100_000)).await;
    let upload = json!({"bills": [
        {"bill_id": "B2026-10-001", "account_no": "1234567890", "period": "2026-10", "amount_fen": 8650, "due_date": "2026-11-30", "holder_name": "张三丰"},
        {"bill_id": "B2026-11-001", "account_no": "1234567890", "period": "2026-11", "amount_fen": 7320, "due_date": "2026-12-31", "holder_name": "张三丰"}
    ]});
    let path = format!("/api/utility/billers/{}/bills", w.id);
    let up = app.partner(&w.partner_id, &w.secret, "PUT", &path, Some(&upload)).await;
    assert_eq!((up.status, up.body["created"].as_u64()), (200, Some(2)), "{:?}", up.body);
    let again = app.partner(&w.partner_id, &w.secret, "PUT", &path, Some(&upload)).await;
    assert_eq!(
        (again.body["created"].as_u64(), again.body["updated"].as_u64()),
        (Some(0), Some(2)),
        "idempotent per bill"
    );
    let unsigned = app.send("PUT", &path, Some(&upload), None).await;
    assert_eq!((unsigned.status, unsigned.body["code"].as_str()), (401, Some("missing_credentials")));
    let billers = app.send("GET", "/api/utility/billers?category=water&city=shenzhen", None, None).await;
    assert_eq!(billers.body["items"][0]["id"], "sz_water");
    assert!(billers.body["items"][0].get("settlement_account").is_none(), "not public");

    // A customer binds the account and sees what is due.
    let token = customer(&app, "wx_household").await;
    let bind = app
        .send(
            "POST",
            "/api/utility/accounts",
            Some(&json!({"biller_id": "sz_water", "account_no": "1234567890", "alias": "home"})),
            Some(&token),
        )
        .await;
    assert_eq!((bind.status, bind.body["holder_masked"].as_str()), (201, Some("张*丰")), "{:?}", bind.body);
    let accounts = app.send("GET", "/api/utility/accounts", None, Some(&token)).await;
    assert_eq!(accounts.body["items"][0]["outstanding_fen"], 15_970);
    let missing =
        app.send("GET", "/api/utility/bills?biller_id=sz_water&account_no=9999999999", None, Some(&token)).await;
    assert_eq!((missing.status, missing.body["code"].as_str()), (404, Some("no_such_account")));
    let bad = app.send("GET", "/api/utility/bills?biller_id=sz_water&account_no=12ab", None, Some(&token)).await;
    assert_eq!((bad.status, bad.body["code"].as_str()), (422, Some("invalid_account_number")));

    // Quotes: the bank's card gets 5% off (capped at 10 yuan), another card does not.
    let q_other = app.send("POST", "/api/utility/quotes", Some(&json!({"biller_id": "sz_water", "account_no": "1234567890", "bill_ids": ["B2026-10-001"], "pay_with": "other"})), Some(&token)).await;
    assert_eq!((q_other.status, q_other.body["total_fen"].as_i64()), (201, Some(8650)), "{:?}", q_other.body);
    let q = app.send("POST", "/api/utility/quotes", Some(&json!({"biller_id": "sz_water", "account_no": "1234567890", "bill_ids": ["B2026-10-001"], "pay_with": "bank_card", "card_bin": BANK_BIN})), Some(&token)).await;
    assert_eq!(q.body["total_fen"], 8650 - 432, "{:?}", q.body);
    assert_eq!(q.body["lines"][1]["kind"], "cardholder_discount");
    let inexact = app
        .send(
            "POST",
            "/api/utility/quotes",
            Some(&json!({"biller_id": "sz_water", "account_no": "1234567890", "amount_fen": 100, "pay_with": "other"})),
            Some(&token),
        )
        .await;
    assert_eq!((inexact.status, inexact.body["code"].as_str()), (422, Some("amount_not_allowed")));

    // Order, idempotently.
    let quote_id = q.body["quote_id"].as_str().expect("quote id");
    let placed = order(&app, &token, quote_id, "order-key-1").await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let replay = order(&app, &token, quote_id, "order-key-1").await;
    assert_eq!(replay.body, placed.body, "replayed byte for byte");
    let reused = order(&app, &token, q_other.body["quote_id"].as_str().expect("id"), "order-key-1").await;
    assert_eq!((reused.status, reused.body["code"].as_str()), (409, Some("idempotency_key_reused")));
    let order_id = placed.body["order"]["order_id"].as_str().expect("order id").to_owned();
    assert_eq!(placed.body["payment"]["amount_fen"], 8218);
    assert_eq!(placed.body["payment"]["bank_card_only"], true);
    // A second order for the same bill, placed while the first is unpaid (say, from another phone): refused,
    // naming the order that holds the bill.
    let placed2 = order(&app, &token, q_other.body["quote_id"].as_str().expect("id"), "order-key-2").await;
    assert_eq!((placed2.status, placed2.body["code"].as_str()), (409, Some("bill_in_payment")), "{:?}", placed2.body);
    assert_eq!(placed2.body["open_order_id"].as_str(), Some(order_id.as_str()));

    // The gateway: a forged notification, then the real one five times at once, then a late failure.
    let paid = event("evt_1", &order_id, "succeeded", 8218, Some("6225881234"), &now);
    let forged = {
        let body = serde_json::to_vec(&paid).expect("json");
        let headers = vec![
            ("webhook-id".to_owned(), "msg_x".to_owned()),
            ("webhook-timestamp".to_owned(), app.now.unix_secs().to_string()),
            ("webhook-signature".to_owned(), "v1,AAAA".to_owned()),
        ];
        app.send_raw("POST", "/api/utility/payments/notify", body, &headers).await
    };
    assert_eq!((forged.status, forged.body["code"].as_str()), (401, Some("invalid_signature")));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(app.notify("/api/utility/payments/notify", &paid));
    }
    for r in futures_join(tasks).await {
        assert_eq!((r.status, r.body["state"].as_str()), (200, Some("paid")), "{:?}", r.body);
    }
    let late_failure =
        app.notify("/api/utility/payments/notify", &event("evt_2", &order_id, "failed", 0, None, &now)).await;
    assert_eq!(late_failure.body["state"], "paid", "a failure after success changes nothing");
    let wrong_amount = app
        .notify("/api/utility/payments/notify", &event("evt_3", &order_id, "succeeded", 1, Some("6225881234"), &now))
        .await;
    assert_eq!((wrong_amount.status, wrong_amount.body["code"].as_str()), (422, Some("amount_mismatch")));

    // Receipt, settled bill, customer activated.
    let receipt = app.send("GET", &format!("/api/utility/orders/{order_id}"), None, Some(&token)).await;
    assert_eq!((receipt.body["state"].as_str(), receipt.body["receipt_no"].as_str()), (Some("paid"), Some("evt_1")));
    let due = app.send("GET", "/api/utility/bills?biller_id=sz_water&account_no=1234567890", None, Some(&token)).await;
    assert_eq!(due.body["items"].as_array().map(Vec::len), Some(1), "only November is still due");
    let reupload = app.partner(&w.partner_id, &w.secret, "PUT", &path, Some(&upload)).await;
    assert_eq!(
        reupload.body["rejected"][0]["code"], "bill_paid",
        "a paid bill is never overwritten: {:?}",
        reupload.body
    );
    let me = app.send("GET", "/api/me", None, Some(&token)).await;
    assert_eq!(me.body["lifecycle"]["stage"], "activated");
    let history = app.send("GET", "/api/utility/orders", None, Some(&token)).await;
    let listed: Vec<&str> =
        history.body["items"].as_array().expect("items").iter().filter_map(|o| o["order_id"].as_str()).collect();
    assert_eq!(listed, [order_id.as_str()], "only the order that was placed");
    let stranger = customer(&app, "wx_stranger").await;
    assert_eq!(app.send("GET", &format!("/api/utility/orders/{order_id}"), None, Some(&stranger)).await.status, 404);

    // The biller refunds the first order; the bill reopens.
    let refund_path = format!("/api/utility/orders/{order_id}/refund");
    let mut headers = app.partner_headers(&w.partner_id, &w.secret, "POST", &refund_path, b"");
    headers.push(("idempotency-key".into(), "refund-1".into()));
    let refunded = app.send_raw("POST", &refund_path, Vec::new(), &headers).await;
    assert_eq!((refunded.status, refunded.body["state"].as_str()), (200, Some("refunded")), "{:?}", refunded.body);
    let due = app.send("GET", "/api/utility/bills?biller_id=sz_water&account_no=1234567890", None, Some(&token)).await;
    assert_eq!(due.body["items"].as_array().map(Vec::len), Some(2), "October is due again");

    // Settlement equals the ledger; the books balance.
    let day = &now[..10];
    let statement = app
        .send("GET", &format!("/api/utility/billers/sz_water/settlement?date={day}"), None, Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(statement.status, 200, "{:?}", statement.body);
    assert_eq!(statement.body["reconciled"], true, "{:?}", statement.body);
    assert_eq!(statement.body["total_gross_fen"], statement.body["ledger_total_fen"]);
    assert_eq!(statement.body["total_gross_fen"], 0, "one payment of 86.50, refunded");
    assert_eq!(statement.body["lines"].as_array().map(Vec::len), Some(2));
    let by_partner = app
        .partner(&w.partner_id, &w.secret, "GET", &format!("/api/utility/billers/sz_water/settlement?date={day}"), None)
        .await;
    assert_eq!(by_partner.body["total_gross_fen"], 0);
    let check = app.send("GET", "/api/ops/ledger/check", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!((check.status, check.body["balanced"].as_bool()), (200, Some(true)), "{:?}", check.body);
    let stats = app.send("GET", "/api/utility/billers/sz_water/stats", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(
        (
            stats.body["accounts_bound"].as_i64(),
            stats.body["orders_paid"].as_i64(),
            stats.body["orders_paid_bank_card"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    app.host.shutdown().await;
}

async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let handles: Vec<_> = futures.into_iter().map(Box::pin).collect();
    for h in handles {
        out.push(h.await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_payments_get_exactly_fifty_discounts() {
    let app = std::sync::Arc::new(TestApp::spawn().await.expect("app"));
    let now = app.now.to_rfc3339();
    let prepaid = json!({
        "id": "sz_power", "name": "Shenzhen Power", "category": "power", "city": "shenzhen",
        "account_rule": {"min_len": 6, "max_len": 12, "charset": "digits"},
        "exactness": "adhoc", "settlement_account": "6222000033334444",
        "discount": {"percent_bp": 1000, "cap_fen": 1000, "budget_id": "power_card_2026", "budget_fen": 50_000}
    });
    register(&app, prepaid).await;
    let token = customer(&app, "wx_rush").await;

    let mut tasks = Vec::new();
    for i in 0..200 {
        let (app, token, now) = (app.clone(), token.clone(), now.clone());
        tasks.push(tokio::spawn(async move {
            let quote = json!({"biller_id": "sz_power", "account_no": format!("{:08}", 10_000_000 + i), "amount_fen": 10_000, "pay_with": "bank_card", "card_bin": BANK_BIN});
            let q = app.send("POST", "/api/utility/quotes", Some(&quote), Some(&token)).await;
            assert_eq!(q.status, 201, "{:?}", q.body);
            let placed = order(&app, &token, q.body["quote_id"].as_str().expect("id"), &format!("rush-{i}")).await;
            assert_eq!(placed.status, 201, "{:?}", placed.body);
            let order_id = placed.body["order"]["order_id"].as_str().expect("id").to_owned();
            let total = placed.body["order"]["total_fen"].as_i64().expect("total");
            let paid = app.notify("/api/utility/payments/notify", &event(&format!("rush_{i}"), &order_id, "succeeded", total, Some("62258800"), &now)).await;
            assert_eq!(paid.body["state"], "paid", "{:?}", paid.body);
            total
        }));
    }
    let mut discounted = 0;
    for t in tasks {
        discounted += usize::from(t.await.expect("task") == 9_000);
    }
    assert_eq!(discounted, 50);
    let check = app.send("GET", "/api/ops/ledger/check", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(check.body["balanced"], true, "{:?}", check.body["discrepancies"]);
    let accounts = check.body["accounts"].as_array().expect("accounts");
    let stored = |name: &str| accounts.iter().find(|a| a["account"] == name).and_then(|a| a["stored_fen"].as_i64());
    assert_eq!(stored("bank:marketing"), Some(50_000), "the budget funded exactly 50 discounts");
    assert_eq!(stored("gateway:clearing"), Some(200 * 10_000 - 50_000));
    assert_eq!(stored("biller:sz_power:settlement"), Some(-200 * 10_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_and_unknown_paths_are_problems_not_panics() {
    let app = TestApp::spawn().await.expect("app");
    let r = app.send("DELETE", "/api/utility/billers", None, None).await;
    assert_eq!((r.status, r.body["code"].as_str()), (405, Some("method_not_allowed")));
    let r = app.send("GET", "/api/utility/billers/x/nothing-here", None, None).await;
    assert_eq!((r.status, r.body["code"].as_str()), (404, Some("not_found")));
    let r = app.send("POST", "/api/utility/quotes", None, None).await;
    assert_eq!((r.status, r.body["code"].as_str()), (401, Some("missing_credentials")), "auth comes before the body");
    let token =
        app.login(Provider::Wechat, "wx_bad_input", None, None).await.body["token"].as_str().expect("token").to_owned();
    let headers = vec![("authorization".to_owned(), format!("Bearer {token}"))];
    let r = app.send_raw("POST", "/api/utility/quotes", b"{not json".to_vec(), &headers).await;
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("malformed_json")));
    let r = app
        .send(
            "POST",
            "/api/utility/quotes",
            Some(&json!({"biller_id": "x", "account_no": "1", "pay_with": "cash"})),
            Some(&token),
        )
        .await;
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("pay_with")));
    let r = app.send("POST", "/api/utility/billers", Some(&json!({"id": "a:b"})), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 400);
    let r = app.send_raw("POST", "/api/utility/payments/notify", b"{}".to_vec(), &[]).await;
    assert_eq!((r.status, r.body["code"].as_str()), (401, Some("missing_credentials")));
    app.host.shutdown().await;
}

/// The biller categories of the brief (water, power, gas, heating companies).
const BRIEF_CATEGORIES: [&str; 4] = ["water", "power", "gas", "heating"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billers_of_every_category_the_brief_and_the_spec_list_are_accepted_and_no_other() {
    let app = TestApp::spawn().await.expect("app");
    let biller = |id: &str, category: &str| {
        json!({
            "id": id, "name": format!("{id} company"), "category": category, "city": "shenzhen",
            "account_rule": {"min_len": 6, "max_len": 12, "charset": "digits"},
            "exactness": "adhoc", "settlement_account": "6222000055556666"
        })
    };
    for category in BRIEF_CATEGORIES {
        let id = format!("sz_{category}");
        register(&app, biller(&id, category)).await;
        let listed = app.send("GET", &format!("/api/utility/billers?category={category}"), None, None).await;
        assert_eq!(
            (listed.status, listed.body["items"][0]["id"].as_str(), listed.body["items"][0]["category"].as_str()),
            (200, Some(id.as_str()), Some(category)),
            "{:?}",
            listed.body
        );
    }
    // The spec lists exactly the brief's categories.
    let doc = crate::openapi::document();
    let request = crate::openapi::resolve(&doc, &doc["components"]["schemas"]["BillerRequest"]);
    let spec = crate::openapi::resolve(&doc, &request["properties"]["category"]);
    let listed: Vec<&str> = spec["enum"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert_eq!(listed, BRIEF_CATEGORIES, "docs/openapi.yaml BillerRequest.category: {spec:?}");
    // Anything else is refused, and nothing is registered.
    for category in ["telecom", "Power", "electricity", ""] {
        let r =
            app.send("POST", "/api/utility/billers", Some(&biller("sz_other", category)), Some(OPERATOR_TOKEN)).await;
        assert_eq!(
            (r.status, r.body["code"].as_str(), r.body["field"].as_str()),
            (400, Some("validation_failed"), Some("category")),
            "{category}: {:?}",
            r.body
        );
    }
    let all = app.send("GET", "/api/utility/billers", None, None).await;
    assert_eq!(all.body["items"].as_array().map(Vec::len), Some(BRIEF_CATEGORIES.len()), "{:?}", all.body);
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_without_valid_credentials_does_not_tell_whether_the_order_exists() {
    let app = TestApp::spawn().await.expect("app");
    let w = register(&app, water(100_000)).await;
    let upload = json!({"bills": [
        {"bill_id": "R-1", "account_no": "1122334455", "period": "2026-10", "amount_fen": 5000, "due_date": "2026-11-30", "holder_name": "赵六"}
    ]});
    let up = app
        .partner(&w.partner_id, &w.secret, "PUT", &format!("/api/utility/billers/{}/bills", w.id), Some(&upload))
        .await;
    assert_eq!(up.status, 200, "{:?}", up.body);
    let token = customer(&app, "wx_refund_probe").await;
    let q = app
        .send(
            "POST",
            "/api/utility/quotes",
            Some(
                &json!({"biller_id": "sz_water", "account_no": "1122334455", "bill_ids": ["R-1"], "pay_with": "other"}),
            ),
            Some(&token),
        )
        .await;
    assert_eq!(q.status, 201, "{:?}", q.body);
    let placed = order(&app, &token, q.body["quote_id"].as_str().expect("quote id"), "probe-order").await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let real = placed.body["order"]["order_id"].as_str().expect("order id").to_owned();
    // A made-up id of the same shape.
    let made_up = format!("{}{}", &real[..real.len() - 1], if real.ends_with('0') { '1' } else { '0' });

    // The credentials of each attempt, for a refund path.
    let credentials = |how: &str, refund: &str| {
        let mut headers = match how {
            "none" => Vec::new(),
            "a customer's session" => vec![("authorization".to_owned(), format!("Bearer {token}"))],
            "a wrong operator token" => vec![("authorization".to_owned(), "Bearer not-the-operator-token".to_owned())],
            _ => {
                let mut signed = app.partner_headers(&w.partner_id, &w.secret, "POST", refund, b"");
                signed.retain(|(k, _)| k != "x-signature");
                signed.push(("x-signature".to_owned(), "0".repeat(64)));
                signed
            }
        };
        headers.push(("idempotency-key".to_owned(), "probe-refund".to_owned()));
        headers
    };
    for prefix in ["/api/utility/orders", "/api/property/orders"] {
        for how in ["none", "a customer's session", "a wrong operator token", "a wrong partner signature"] {
            let (existing, unknown) = (format!("{prefix}/{real}/refund"), format!("{prefix}/{made_up}/refund"));
            let a = app.send_raw("POST", &existing, Vec::new(), &credentials(how, &existing)).await;
            let b = app.send_raw("POST", &unknown, Vec::new(), &credentials(how, &unknown)).await;
            assert_eq!(a.status, 401, "{existing} with {how}: {:?}", a.body);
            assert!(a.content_type.starts_with("application/problem+json"), "{}", a.content_type);
            assert_eq!(
                (a.status, &a.body["code"], &a.body["detail"]),
                (b.status, &b.body["code"], &b.body["detail"]),
                "{prefix} refund with {how}: an existing and a made-up order answer alike"
            );
        }
    }
    let receipt = app.send("GET", &format!("/api/utility/orders/{real}"), None, Some(&token)).await;
    assert_eq!(receipt.body["state"], "pending_payment", "{:?}", receipt.body);
    app.host.shutdown().await;
}

/// A merchant-coupons campaign that lets utility quotes use its coupons.
async fn utility_coupon_campaign(app: &TestApp) {
    let merchant = json!({"merchant_id": "sz_grid_shop", "name": "Grid Shop", "district": "futian",
                          "stores": [{"store_id": "s1", "name": "Main"}]});
    let r = app.send("POST", "/api/coupons/merchants", Some(&merchant), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let campaign = json!({
        "id": "bill_day", "title": "¥3 off a utility bill", "kind": "daily", "merchant_ids": ["sz_grid_shop"],
        "coupon": {"type": "fixed_off", "amount_fen": 300, "min_spend_fen": 5000},
        "validity": {"days_after_claim": 7},
        "schedule": {"starts_at": "2026-11-01T00:00:00+08:00", "ends_at": "2026-12-31T00:00:00+08:00"},
        "stock_total": 10, "budget_fen": 3000, "applies_to": ["utility"]
    });
    let r = app.send("POST", "/api/coupons/campaigns", Some(&campaign), Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, r.body["budget_fen"].as_i64()), (201, Some(3000)), "{:?}", r.body);
    let public = app.send("GET", "/api/coupons/campaigns/bill_day", None, None).await;
    assert!(public.body.get("budget_fen").is_none(), "the budget is the operator's business: {:?}", public.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_coupon_pays_part_of_a_bill_once_and_comes_back_if_the_order_expires() {
    let app = TestApp::spawn().await.expect("app");
    let w = register(&app, water(100_000)).await;
    let upload = json!({"bills": [
        {"bill_id": "C-1", "account_no": "5555666677", "period": "2026-10", "amount_fen": 8000, "due_date": "2026-11-30", "holder_name": "王五"},
        {"bill_id": "C-2", "account_no": "5555666677", "period": "2026-11", "amount_fen": 6000, "due_date": "2026-12-30", "holder_name": "王五"}
    ]});
    let up = app.partner(&w.partner_id, &w.secret, "PUT", "/api/utility/billers/sz_water/bills", Some(&upload)).await;
    assert_eq!(up.status, 200, "{:?}", up.body);
    utility_coupon_campaign(&app).await;
    let token = customer(&app, "wx_coupon_payer").await;
    let mut claim = app.client.post(format!("{}/api/coupons/campaigns/bill_day/claim", app.base));
    claim =
        claim.bearer_auth(&token).header("idempotency-key", "claim-1").header("x-scenefin-now", app.now.to_rfc3339());
    let claimed: Value = claim.send().await.expect("claim").json().await.expect("json");
    let coupon_id = claimed["coupon_id"].as_str().expect("coupon").to_owned();
    let quote_body = |bill: &str| {
        json!({"biller_id": "sz_water", "account_no": "5555666677", "bill_ids": [bill], "pay_with": "bank_card",
               "card_bin": "62258801", "coupon_id": coupon_id})
    };

    // The coupon comes off first, the cardholder discount (5%) applies to the rest.
    let q = app.send("POST", "/api/utility/quotes", Some(&quote_body("C-1")), Some(&token)).await;
    assert_eq!(q.status, 201, "{:?}", q.body);
    let kinds: Vec<(&str, i64)> = q.body["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| (l["kind"].as_str().unwrap_or(""), l["amount_fen"].as_i64().unwrap_or(0)))
        .collect();
    assert_eq!(kinds, vec![("base", 8000), ("coupon", -300), ("cardholder_discount", -385)]);
    assert_eq!(q.body["total_fen"], 7315);
    // Held by that quote: another quote cannot use it, nor a merchant.
    let other = app.send("POST", "/api/utility/quotes", Some(&quote_body("C-2")), Some(&token)).await;
    assert_eq!((other.status, other.body["code"].as_str()), (409, Some("coupon_in_use")), "{:?}", other.body);
    let stranger = customer(&app, "wx_not_the_owner").await;
    let stolen = app.send("POST", "/api/utility/quotes", Some(&quote_body("C-1")), Some(&stranger)).await;
    assert_eq!(stolen.body["code"], "coupon_not_found");

    // The order is never paid: once it expires the coupon is back in the wallet.
    let quote_id = q.body["quote_id"].as_str().expect("quote").to_owned();
    let placed = order(&app, &token, &quote_id, "coupon-order-1").await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let order_id = placed.body["order"]["order_id"].as_str().expect("order").to_owned();
    let later = app.now.plus_secs(31 * 60).to_rfc3339();
    let expired = app
        .client
        .get(format!("{}/api/utility/orders/{order_id}", app.base))
        .bearer_auth(&token)
        .header("x-scenefin-now", &later)
        .send()
        .await
        .expect("get");
    let expired: Value = expired.json().await.expect("json");
    assert_eq!(expired["state"], "expired");
    let wallet = app.send("GET", "/api/coupons/wallet?status=active", None, Some(&token)).await;
    assert_eq!(wallet.body["items"][0]["coupon_id"].as_str(), Some(coupon_id.as_str()), "{:?}", wallet.body);

    // Used in a paid order: exactly once, and the budget committed.
    let q = app.send("POST", "/api/utility/quotes", Some(&quote_body("C-2")), Some(&token)).await;
    assert_eq!((q.status, q.body["total_fen"].as_i64()), (201, Some(5415)), "{:?}", q.body);
    let quote_id = q.body["quote_id"].as_str().expect("quote").to_owned();
    let placed = order(&app, &token, &quote_id, "coupon-order-2").await;
    let order_id = placed.body["order"]["order_id"].as_str().expect("order").to_owned();
    let paid = event("evt-coupon-1", &order_id, "succeeded", 5415, Some("62258801"), &app.now.to_rfc3339());
    for _ in 0..2 {
        let n = app.notify("/api/utility/payments/notify", &paid).await;
        assert_eq!(n.status, 200, "{:?}", n.body);
    }
    let used = app.send("GET", "/api/coupons/wallet?status=used", None, Some(&token)).await;
    assert_eq!(used.body["items"].as_array().map(Vec::len), Some(1), "{:?}", used.body);
    let stats = app.send("GET", "/api/coupons/campaigns/bill_day/stats", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!((stats.body["budget"]["committed_fen"].as_i64(), stats.body["issued"].as_i64()), (Some(300), Some(1)));
    let check = app.send("GET", "/api/ops/ledger/check", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(check.body["balanced"], true, "{:?}", check.body);
    // (After the first order's payment window: until then it still holds bill C-1.)
    let again = app
        .client
        .post(format!("{}/api/utility/quotes", app.base))
        .bearer_auth(&token)
        .header("x-scenefin-now", &later)
        .json(&quote_body("C-1"))
        .send()
        .await
        .expect("quote");
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["code"], "coupon_in_use", "used coupons are not usable again: {again:?}");
}
