//! Key-value round trips per route, counted by the host (`Kv::op_count`), in a steady state: after a first call of
//! each kind, so one-off creations (counters, indexes) do not count. Each route has a budget; a change that adds
//! round trips fails here first. The table goes to `target/kv-ops.md` (included in docs/BENCHMARKS.md by
//! `cargo xtask bench`).

use std::fmt::Write as _;

use scenefin_core::auth::Provider;
use scenefin_e2e::{OPERATOR_TOKEN, Reply, TestApp, workspace};
use serde_json::{Value, json};

/// What one request cost the store: calls (each a round trip the handler waited for), keys touched (a batch
/// counts each key) and the calls themselves.
struct Cost {
    calls: u64,
    keys: u64,
    trace: Vec<String>,
}

/// Runs one request and returns it with the store operations it made (nothing else runs meanwhile).
async fn counted(app: &TestApp, request: impl Future<Output = Reply>) -> (Reply, Cost) {
    let kv = app.host.kv.host_kv();
    let (calls, keys) = (kv.op_count(), kv.key_count());
    kv.start_trace();
    let reply = request.await;
    let trace = kv.take_trace();
    (reply, Cost { calls: kv.op_count() - calls, keys: kv.key_count() - keys, trace })
}

async fn token(app: &TestApp, subject: &str) -> String {
    app.login(Provider::Wechat, subject, None, None).await.body["token"].as_str().expect("token").to_owned()
}

fn creds(r: &Reply) -> (String, String) {
    (
        r.body["partner_id"].as_str().expect("partner_id").to_owned(),
        r.body["partner_secret"].as_str().expect("partner_secret").to_owned(),
    )
}

async fn ok(r: Reply, what: &str) -> Value {
    assert!((200..300).contains(&r.status), "{what}: {:?}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_round_trips_per_route_stay_within_budget() {
    scenefin_e2e::host_only!("the host's key-value operation count");
    let app = TestApp::spawn().await.expect("app");
    let now = app.now.to_rfc3339();
    let customer = token(&app, "wx_kv_ops").await;

    // Utility: a biller with bills, a bound account.
    let biller = json!({"id": "kv_water", "name": "KV Water", "category": "water", "city": "shenzhen",
        "account_rule": {"min_len": 8, "max_len": 10, "charset": "digits"}, "exactness": "exact",
        "settlement_account": "6222000011112222",
        "discount": {"percent_bp": 500, "cap_fen": 1000, "budget_id": "kv_card", "budget_fen": 1000000}});
    let (bid, bsecret) = creds(&app.send("POST", "/api/utility/billers", Some(&biller), Some(OPERATOR_TOKEN)).await);
    let bills: Vec<Value> = (0..3)
        .map(|i| {
            json!({"bill_id": format!("KV-{i}"), "account_no": "12345678", "period": "2026-11",
                        "amount_fen": 5000, "due_date": "2026-12-31", "holder_name": "测试"})
        })
        .collect();
    ok(
        app.partner(&bid, &bsecret, "PUT", "/api/utility/billers/kv_water/bills", Some(&json!({"bills": bills}))).await,
        "bills",
    )
    .await;
    let bind = json!({"biller_id": "kv_water", "account_no": "12345678"});
    ok(app.send("POST", "/api/utility/accounts", Some(&bind), Some(&customer)).await, "bind").await;

    // Coupons: a merchant and a campaign.
    let merchant = json!({"merchant_id": "kv_cafe", "name": "KV Cafe", "district": "futian", "stores": [{"store_id": "s1", "name": "Main"}]});
    let (mid, msecret) =
        creds(&app.send("POST", "/api/coupons/merchants", Some(&merchant), Some(OPERATOR_TOKEN)).await);
    let campaign = json!({"id": "kv_coffee", "title": "¥5 off", "kind": "daily", "merchant_ids": ["kv_cafe"],
        "coupon": {"type": "fixed_off", "amount_fen": 500, "min_spend_fen": 1000}, "validity": {"days_after_claim": 7},
        "schedule": {"starts_at": "2026-11-01T00:00:00+08:00", "ends_at": "2026-12-31T00:00:00+08:00"},
        "stock_total": 100, "per_customer_limit": 10, "budget_fen": 100000});
    ok(app.send("POST", "/api/coupons/campaigns", Some(&campaign), Some(OPERATOR_TOKEN)).await, "campaign").await;

    // Campus: a school, a POS, a bound card with a balance (a paid top-up).
    let school = json!({"id": "kv_school", "name": "KV School"});
    let (sid, ssecret) = creds(&app.send("POST", "/api/campus/schools", Some(&school), Some(OPERATOR_TOKEN)).await);
    let pos_body = json!({"merchant_id": "kv_canteen", "name": "Canteen", "kind": "canteen"});
    let pos = app.partner(&sid, &ssecret, "POST", "/api/campus/schools/kv_school/merchants", Some(&pos_body)).await;
    let (pid, psecret) = creds(&pos);
    let members = json!({"members": [{"member_no": "K1", "kind": "student", "name": "Kay", "valid_until": "2027-07-31", "activation_code": "123456"}]});
    ok(app.partner(&sid, &ssecret, "PUT", "/api/campus/schools/kv_school/members", Some(&members)).await, "members")
        .await;
    let bound = app
        .send(
            "POST",
            "/api/campus/cards/bind",
            Some(&json!({"school_id": "kv_school", "member_no": "K1", "activation_code": "123456"})),
            Some(&customer),
        )
        .await;
    let card = ok(bound, "card").await["card_id"].as_str().expect("card").to_owned();
    let topup = app
        .client
        .post(format!("{}/api/campus/topups", app.base))
        .bearer_auth(&customer)
        .header("idempotency-key", "kv-topup")
        .header("x-scenefin-now", &now)
        .json(&json!({"card_id": card, "amount_fen": 50000}))
        .send()
        .await
        .expect("topup");
    let topup: Value = topup.json().await.expect("json");
    let order = topup["order"]["order_id"].as_str().expect("order").to_owned();
    let paid = json!({"event_id": "kv-evt-topup", "order_id": order, "status": "succeeded", "paid_fen": 50000, "paid_at": now, "instrument": {"type": "wallet"}});
    ok(app.notify("/api/campus/payments/notify", &paid).await, "top-up").await;

    // Each route twice: the first warms what is created once; the second is measured.
    let (app, customer, now, card) = (&app, &customer, &now, &card);
    let mut rows: Vec<(&str, Cost, Budget)> = Vec::new();
    counted(app, app.login(Provider::Wechat, "wx_kv_login_0", None, None)).await;
    let login = counted(app, app.login(Provider::Wechat, "wx_kv_login_1", None, None)).await;
    assert_eq!(login.0.status, 201, "login: {:?}", login.0.body);
    // 9 keys: the identity is also looked up under its unkeyed hash (records from before keyed hashes,
    // scenefin_core::pii), in the same batch read: one more key, no more round trips.
    rows.push(("POST /api/sessions (a new customer)", login.1, Budget::new(6, 9, 8)));
    let me = || app.send("GET", "/api/me", None, Some(customer));
    counted(app, me()).await;
    rows.push(("GET /api/me", counted(app, me()).await.1, Budget::new(3, 1, 1)));

    let quote = |bill: &str| {
        let body = json!({"biller_id": "kv_water", "account_no": "12345678", "bill_ids": [bill], "pay_with": "bank_card", "card_bin": "62258801"});
        async move { app.send("POST", "/api/utility/quotes", Some(&body), Some(customer)).await }
    };
    let q0 = counted(app, quote("KV-0")).await.0;
    let (q1, quote_ops) = counted(app, quote("KV-1")).await;
    rows.push(("POST /api/utility/quotes", quote_ops, Budget::new(8, 17, 12)));
    let place = |q: &Reply, key: &'static str| {
        let quote_id = q.body["quote_id"].as_str().expect("quote").to_owned();
        async move { app.place_order("/api/utility/orders", customer, &quote_id, key).await }
    };
    let o0 = counted(app, place(&q0, "kv-o0")).await.0;
    let (o1, order_ops) = counted(app, place(&q1, "kv-o1")).await;
    rows.push(("POST /api/utility/orders", order_ops, Budget::new(12, 20, 19)));
    let pay = |o: &Reply, event: &str| {
        let body = json!({"event_id": event, "order_id": o.body["order"]["order_id"], "status": "succeeded",
            "paid_fen": o.body["order"]["total_fen"], "paid_at": now, "instrument": {"type": "bank_card", "bin": "62258801"}});
        async move { app.notify("/api/utility/payments/notify", &body).await }
    };
    counted(app, pay(&o0, "kv-evt-0")).await;
    // +5 for the biller's `bill.paid` event (scenefin_core::feed: reserve a slot, claim the id's placement, fill).
    rows.push((
        "POST /api/utility/payments/notify",
        counted(app, pay(&o1, "kv-evt-1")).await.1,
        Budget::new(25, 53, 50),
    ));

    let claim = |key: &'static str| {
        let req = app
            .client
            .post(format!("{}/api/coupons/campaigns/kv_coffee/claim", app.base))
            .bearer_auth(customer)
            .header("idempotency-key", key)
            .header("x-scenefin-now", now);
        async move {
            let res = req.send().await.expect("claim");
            Reply { status: res.status().as_u16(), content_type: String::new(), body: res.json().await.expect("json") }
        }
    };
    let c0 = counted(app, claim("kv-c0")).await.0;
    let (c1, claim_ops) = counted(app, claim("kv-c1")).await;
    rows.push(("POST /api/coupons/campaigns/{id}/claim", claim_ops, Budget::new(15, 32, 27)));
    let redeem = |c: &Reply, order: &str| {
        let body =
            json!({"code": c.body["code"], "store_id": "s1", "order_amount_fen": 3000, "merchant_order_id": order});
        let (mid, msecret) = (mid.clone(), msecret.clone());
        async move { app.partner(&mid, &msecret, "POST", "/api/coupons/redemptions", Some(&body)).await }
    };
    ok(counted(app, redeem(&c0, "kv-r0")).await.0, "redeem").await;
    // The partner POS routes append their audit entry (a counter and a write-once entry) after answering: +2 each.
    // +5 for the merchant's `coupon.redeemed` event (scenefin_core::feed: reserve a slot, claim the id's placement,
    // fill).
    rows.push(("POST /api/coupons/redemptions", counted(app, redeem(&c1, "kv-r1")).await.1, Budget::new(20, 49, 45)));

    let spend = |pos_txn: &str| {
        let body = json!({"pos_txn_id": pos_txn, "card_id": card, "amount_fen": 100});
        let (pid, psecret) = (pid.clone(), psecret.clone());
        async move { app.partner(&pid, &psecret, "POST", "/api/campus/spend", Some(&body)).await }
    };
    ok(counted(app, spend("kv-s0")).await.0, "spend").await;
    let (s1, spend_ops) = counted(app, spend("kv-s1")).await;
    ok(s1, "spend").await;
    rows.push(("POST /api/campus/spend", spend_ops, Budget::new(20, 49, 47)));

    let funnel = || app.send("GET", "/api/ops/funnel", None, Some(OPERATOR_TOKEN));
    counted(app, funnel()).await;
    rows.push(("GET /api/ops/funnel (30 days)", counted(app, funnel()).await.1, Budget::new(40, 40, 1)));

    let mut table = String::from(
        "| route | store operations (keys) | target | enforced | sequential round trips (calls) | target | enforced \
         |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut traces = String::new();
    for (route, cost, budget) in &rows {
        let _ = writeln!(
            table,
            "| `{route}` | {} | {} | {} | {} | {ROUND_TRIPS_TARGET} | {} |",
            cost.keys, budget.keys, budget.max_keys, cost.calls, budget.max_calls
        );
        let _ = writeln!(traces, "## {route}: {} calls, {} keys\n", cost.calls, cost.keys);
        for call in &cost.trace {
            let _ = writeln!(traces, "    {call}");
        }
        traces.push('\n');
    }
    println!("{table}");
    let _ = std::fs::create_dir_all(workspace().join("target"));
    let _ = std::fs::write(workspace().join("target/kv-ops.md"), &table);
    let _ = std::fs::write(workspace().join("target/kv-ops-trace.md"), &traces);
    for (route, cost, budget) in rows {
        assert!(
            cost.calls > 0 && cost.calls <= budget.max_calls,
            "{route}: {} round trips, more than the {} enforced\n{table}",
            cost.calls,
            budget.max_calls
        );
        assert!(
            cost.keys <= budget.max_keys,
            "{route}: {} store operations, more than the {} enforced\n{table}",
            cost.keys,
            budget.max_keys
        );
    }
}

/// The target of sequential round trips, on every route.
const ROUND_TRIPS_TARGET: u64 = 8;

/// What a route may spend. `keys` is the target of store operations (keys read or written); `max_keys` and
/// `max_calls` are enforced: what the route costs today (or the target, when met) with two to spare for a write
/// route (whether a ledger balance shard or a log chunk already exists varies with the generated ids), so a change
/// that adds store operations or round trips fails here first. docs/BENCHMARKS.md reports each route against the targets.
struct Budget {
    keys: u64,
    max_keys: u64,
    max_calls: u64,
}

impl Budget {
    fn new(keys: u64, max_keys: u64, max_calls: u64) -> Self {
        Self { keys, max_keys: max_keys.max(keys), max_calls: max_calls.max(1) }
    }
}
