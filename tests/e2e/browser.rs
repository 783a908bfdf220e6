//! The console and the mini-program demo in headless Chromium (Debian's `chromium`, driven by `playwright-core`
//! from npm; `.ci/run` installs both): login → pay a bill → claim a coupon → referral progress, then the console
//! showing the funnel and the books. Screenshots go to `target/browser-artifacts/`.

use std::process::Command;

use scenefin_e2e::{OPERATOR_TOKEN, TestApp, workspace};
use serde_json::json;

/// Seeds what the demo needs through the real APIs: a water biller with a bill, a coupon campaign, a referral
/// program. Schedules are around the real clock, since the browser sends no test clock.
async fn seed(app: &TestApp) {
    let biller = json!({
        "id": "demo_water", "name": "Demo Water", "category": "water", "city": "shenzhen",
        "account_rule": {"min_len": 10, "max_len": 10, "charset": "digits"},
        "exactness": "exact", "settlement_account": "6222000012345678"
    });
    let r = app.send("POST", "/api/utility/billers", Some(&biller), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let (pid, secret) =
        (r.body["partner_id"].as_str().expect("id"), r.body["partner_secret"].as_str().expect("secret"));
    let bills = json!({"bills": [{"bill_id": "DW-2026-11", "account_no": "8800112233", "period": "2026-11",
                                   "amount_fen": 12500, "due_date": "2027-01-31", "holder_name": "鲍勃"}]});
    let up = app.partner(pid, secret, "PUT", "/api/utility/billers/demo_water/bills", Some(&bills)).await;
    assert_eq!(up.status, 200, "{:?}", up.body);

    let merchant = json!({"merchant_id": "demo_cafe", "name": "Demo Cafe", "district": "nanshan",
                          "stores": [{"store_id": "s1", "name": "Main"}]});
    let r = app.send("POST", "/api/coupons/merchants", Some(&merchant), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let campaign = json!({
        "id": "demo_coffee", "title": "¥5 off coffee", "kind": "daily", "merchant_ids": ["demo_cafe"],
        "coupon": {"type": "fixed_off", "amount_fen": 500, "min_spend_fen": 1500},
        "validity": {"days_after_claim": 7},
        "schedule": {"starts_at": "2026-01-01T00:00:00+08:00", "ends_at": "2028-01-01T00:00:00+08:00"},
        "stock_total": 100, "budget_fen": 50000
    });
    let r = app.send("POST", "/api/coupons/campaigns", Some(&campaign), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let program = json!({
        "id": "demo_friends", "title": "Bring a friend",
        "qualifying": {"event": "first_payment", "min_amount_fen": 1000, "within_days": 30},
        "holding_days": 7,
        "tiers": [{"min_qualified": 1, "reward_per_referral": {"kind": "cash_fen", "amount": 500}},
                  {"min_qualified": 3, "reward_per_referral": {"kind": "cash_fen", "amount": 800}}],
        "max_rewarded_per_referrer": 50, "budget_fen": 100000,
        "schedule": {"starts_at": "2026-01-01T00:00:00+08:00", "ends_at": "2028-01-01T00:00:00+08:00"}
    });
    let r = app.send("POST", "/api/referrals/programs", Some(&program), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_walks_login_bill_coupon_referral_and_the_console_shows_it() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let script_dir = workspace().join("tests/browser");
    assert!(
        std::path::Path::new(&chromium).exists() && script_dir.join("node_modules/playwright-core").exists(),
        "browser tests need Debian's chromium and `npm ci` in tests/browser (.ci/run installs both)"
    );
    let app = TestApp::spawn_demo().await.expect("app");
    seed(&app).await;
    let artefacts = workspace().join("target/browser-artifacts");
    let base = app.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("demo.mjs")
            .arg(&base)
            .arg(OPERATOR_TOKEN)
            .arg(&artefacts)
            .current_dir(&script_dir)
            .env("CHROMIUM", &chromium)
            .output()
    })
    .await
    .expect("join")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_identity_and_gateway_are_refused_outside_demo_mode() {
    let app = TestApp::spawn().await.expect("app");
    for path in ["/api/demo/identity", "/api/demo/payments"] {
        let r = app.send("POST", path, Some(&json!({"persona": "alice"})), None).await;
        assert_eq!((r.status, r.body["code"].as_str()), (404, Some("demo_disabled")), "{path}: {:?}", r.body);
    }
    let page = app.get("/app").await;
    assert_eq!(page.status(), 200, "the pages themselves are always served");
    let csp = page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{csp}");
}
