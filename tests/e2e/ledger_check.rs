//! The operator's ledger check over the years: payments far apart in time (further apart than the check's default
//! window, and more than a year), a payment that arrives late for a day the check has already closed, and a balance
//! tampered with in the store.

use scenefin_core::auth::Provider;
use scenefin_core::clock::Timestamp;
use scenefin_e2e::{Api, OPERATOR_TOKEN, TestApp};
use scenefin_host::kv::{Op, Output};
use serde_json::{Value, json};

/// An adhoc biller: any amount to any 6 to 12 digit account.
const BILLER: &str = "ledger_power";
const SETTLEMENT: &str = "biller:ledger_power:settlement";

fn date(t: Timestamp) -> String {
    t.to_rfc3339()[..10].to_owned()
}

/// A utility payment of `amount_fen` at the app's clock (logging in then): quote, order, the gateway's success.
async fn pay(app: &Api, subject: &str, amount_fen: i64, key: &str) {
    let login = app.login(Provider::Wechat, subject, None, None).await;
    let token = login.body["token"].as_str().unwrap_or_else(|| panic!("login: {:?}", login.body)).to_owned();
    let quote = json!({"biller_id": BILLER, "account_no": "12345678", "amount_fen": amount_fen, "pay_with": "other"});
    let q = app.send("POST", "/api/utility/quotes", Some(&quote), Some(&token)).await;
    assert_eq!(q.status, 201, "{:?}", q.body);
    let quote_id = q.body["quote_id"].as_str().expect("quote id");
    let placed = app.place_order("/api/utility/orders", &token, quote_id, key).await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let order = &placed.body["order"];
    let event = json!({"event_id": format!("evt_{key}"), "order_id": order["order_id"], "status": "succeeded",
                       "paid_fen": order["total_fen"], "paid_at": app.now.to_rfc3339(),
                       "instrument": {"type": "wallet"}});
    let r = app.notify("/api/utility/payments/notify", &event).await;
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("paid")), "{:?}", r.body);
}

async fn check(app: &Api, query: &str) -> Value {
    let r = app.send("GET", &format!("/api/ops/ledger/check{query}"), None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

#[track_caller]
fn balanced(report: &Value) {
    assert_eq!(report["balanced"], true, "{report:#}");
}

fn account<'a>(report: &'a Value, name: &str) -> &'a Value {
    let accounts = report["accounts"].as_array().expect("accounts");
    accounts.iter().find(|a| a["account"] == name).unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_ledger_check_stays_exact_when_payments_are_years_apart_and_still_finds_a_tampered_balance() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    let biller = json!({
        "id": BILLER, "name": "Ledger Power", "category": "power", "city": "shenzhen",
        "account_rule": {"min_len": 6, "max_len": 12, "charset": "digits"},
        "exactness": "adhoc", "settlement_account": "6222000077778888"
    });
    let r = app.send("POST", "/api/utility/billers", Some(&biller), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    // Go-live day, 40 days later (outside the default 31-day window), and 400 days later (more than a year).
    pay(&app, "wx_ledger_a", 1_000, "k0").await;
    app.now = t0.plus_days(40);
    pay(&app, "wx_ledger_a", 2_000, "k40").await;
    app.now = t0.plus_days(400);
    pay(&app, "wx_ledger_a", 4_000, "k400").await;

    // The default check (the last 31 days) compares like with like: it balances, and the balances are all-time.
    let report = check(&app, "").await;
    balanced(&report);
    assert_eq!(report["postings"], 1, "only day 400's payment is listed: {report:#}");
    let settlement = account(&report, SETTLEMENT);
    assert_eq!(
        (settlement["stored_fen"].as_i64(), settlement["recomputed_fen"].as_i64()),
        (Some(-7_000), Some(-7_000))
    );
    assert_eq!((settlement["opening_fen"].as_i64(), settlement["movement_fen"].as_i64()), (Some(-3_000), Some(-4_000)));
    assert!(report["closed_through"].is_string(), "old days are closed into checkpoints: {report:#}");
    // Again, now from the checkpoints the first check wrote.
    balanced(&check(&app, "").await);

    // Ranges in the past balance too: opening + postings of the range = closing of the range.
    let past = check(&app, &format!("?from={}&to={}", date(t0.plus_days(30)), date(t0.plus_days(60)))).await;
    balanced(&past);
    assert_eq!(past["postings"], 1, "{past:#}");
    let settlement = account(&past, SETTLEMENT);
    assert_eq!((settlement["opening_fen"].as_i64(), settlement["movement_fen"].as_i64()), (Some(-1_000), Some(-2_000)));
    balanced(&check(&app, &format!("?from={}&to={}", date(t0), date(t0.plus_days(365)))).await);

    // A payment dated on a day that is already closed (a late posting) reopens that day, and the check stays exact.
    app.now = t0.plus_days(20);
    pay(&app, "wx_ledger_b", 500, "k20").await;
    app.now = t0.plus_days(400);
    let report = check(&app, "").await;
    balanced(&report);
    assert_eq!(account(&report, SETTLEMENT)["opening_fen"].as_i64(), Some(-3_500), "{report:#}");
    let reopened = report["reopened"].as_array().expect("reopened");
    assert!(reopened.iter().any(|r| r["day"] == date(t0.plus_days(20))), "{report:#}");

    // Someone edits a balance shard in the store: the default check finds it.
    scenefin_e2e::host_only!("editing the host's store");
    let Ok(Output::Keys(keys)) = app.host.kv.exec("default", Op::Keys).await else { panic!("keys") };
    let shard = keys
        .into_iter()
        .find(|k| k.starts_with(&format!("ledger:acct:{SETTLEMENT}:")) && !k.ends_with("~born"))
        .expect("a balance shard");
    let Ok(Output::Value(Some(raw))) = app.host.kv.exec("default", Op::Get { key: shard.clone() }).await else {
        panic!("read {shard}")
    };
    let text = String::from_utf8(raw).expect("utf-8");
    let (before, rest) = text.split_once("\"balance_fen\":").expect("balance_fen");
    let digits = rest.find(|c: char| c != '-' && !c.is_ascii_digit()).expect("end of number");
    let balance: i64 = rest[..digits].parse().expect("number");
    let tampered = format!("{before}\"balance_fen\":{}{}", balance - 1, &rest[digits..]);
    let set = app.host.kv.exec("default", Op::Set { key: shard.clone(), value: tampered.into_bytes() }).await;
    assert!(set.is_ok(), "write {shard}");

    let report = check(&app, "").await;
    assert_eq!(report["balanced"], false, "{report:#}");
    let settlement = account(&report, SETTLEMENT);
    assert_eq!(
        (settlement["stored_fen"].as_i64(), settlement["recomputed_fen"].as_i64()),
        (Some(-7_501), Some(-7_500))
    );
    let discrepancies = report["discrepancies"].as_array().expect("discrepancies");
    assert!(discrepancies.iter().any(|d| d.as_str().is_some_and(|d| d.contains(SETTLEMENT))), "{report:#}");
}
