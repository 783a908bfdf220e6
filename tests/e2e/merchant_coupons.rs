//! Merchant coupons end to end: the operator registers district merchants and their campaigns, customers claim
//! coupons (never oversold, never over a limit or the budget, under any concurrency), earn check-in streak coupons,
//! and merchants redeem them exactly once, with the bank's discount in the ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use scenefin_core::auth::Provider;
use scenefin_core::clock::Timestamp;
use scenefin_e2e::{Api, OPERATOR_TOKEN, Reply, TestApp, ledger_account, retryable};
use scenefin_host::KvKind;
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// How often a client retries a request that met store contention (`503`) or timed out, with the same key.
const MAX_ATTEMPTS: usize = 50;

/// The account the bank's coupon discounts are paid from.
const MARKETING: &str = "bank:marketing";

/// A merchant and its signing credentials.
#[derive(Clone)]
pub(crate) struct Merchant {
    pub(crate) id: String,
    pub(crate) partner_id: String,
    pub(crate) secret: String,
}

/// A logged-in customer.
#[derive(Clone)]
pub(crate) struct Customer {
    pub(crate) id: String,
    pub(crate) subject: String,
    pub(crate) token: String,
}

pub(crate) fn str_of(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_else(|| panic!("no string {field} in {v}")).to_owned()
}

fn int_of(v: &Value, field: &str) -> i64 {
    v[field].as_i64().unwrap_or_else(|| panic!("no integer {field} in {v}"))
}

fn items(r: &Reply) -> Vec<Value> {
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["next"], Value::Null, "{:?}", r.body);
    r.body["items"].as_array().unwrap_or_else(|| panic!("no items in {:?}", r.body)).clone()
}

/// The values of `field` in a list of objects.
fn field_set(list: &[Value], field: &str) -> BTreeSet<String> {
    list.iter().map(|v| str_of(v, field)).collect()
}

/// Asserts a refusal: its status, its stable code, and that it is a problem+json document.
#[track_caller]
fn refused(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status, r.body["code"].as_str()), (status, Some(code)), "{:?}", r.body);
    assert!(r.content_type.starts_with("application/problem+json"), "{}: {:?}", r.content_type, r.body);
}

fn at(rfc3339: &str) -> Timestamp {
    Timestamp::parse_rfc3339(rfc3339).expect("timestamp")
}

fn time_of(v: &Value, field: &str) -> Timestamp {
    at(&str_of(v, field))
}

/// `YYYY-MM-DD` of an instant, in Asia/Shanghai.
fn date(t: Timestamp) -> String {
    t.to_rfc3339()[..10].to_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// Merchants and campaigns

pub(crate) async fn onboard_merchant(app: &Api, id: &str, district: &str, stores: &[&str]) -> Merchant {
    let stores: Vec<Value> = stores.iter().map(|s| json!({"store_id": s, "name": format!("{id} {s}")})).collect();
    let body = json!({"merchant_id": id, "name": format!("{id} shop"), "district": district, "stores": stores});
    let r = app.send("POST", "/api/coupons/merchants", Some(&body), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    Merchant { id: id.to_owned(), partner_id: str_of(&r.body, "partner_id"), secret: str_of(&r.body, "partner_secret") }
}

/// A running campaign at `merchant_ids`: ¥5 off from ¥20, valid 7 days after the claim, stock 1,000, one per
/// customer, a ¥5,000 budget. Tests change what they need with [`with`].
pub(crate) fn campaign(id: &str, merchant_ids: &[&str]) -> Value {
    json!({
        "id": id,
        "title": format!("¥5 off ({id})"),
        "kind": "daily",
        "merchant_ids": merchant_ids,
        "coupon": {"type": "fixed_off", "amount_fen": 500, "min_spend_fen": 2000},
        "validity": {"days_after_claim": 7},
        "schedule": {"starts_at": "2026-11-20T00:00:00+08:00", "ends_at": "2026-12-31T23:59:59+08:00"},
        "stock_total": 1000,
        "per_customer_limit": 1,
        "budget_fen": 500_000,
        "applies_to": ["merchant"]
    })
}

/// A campaign like [`campaign`] for every merchant of a district (and no `merchant_ids`).
fn district_campaign(id: &str, district: &str) -> Value {
    let mut c = with(campaign(id, &[]), json!({"kind": "district", "district": district}));
    c.as_object_mut().map(|fields| fields.remove("merchant_ids"));
    c
}

/// `base` with the top-level fields of `patch` replaced.
pub(crate) fn with(mut base: Value, patch: Value) -> Value {
    if let (Some(fields), Value::Object(patch)) = (base.as_object_mut(), patch) {
        fields.extend(patch);
    }
    base
}

pub(crate) async fn create_campaign(app: &Api, body: &Value) -> Value {
    let r = app.send("POST", "/api/coupons/campaigns", Some(body), Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, &r.body["id"]), (201, &body["id"]), "{body}: {:?}", r.body);
    r.body
}

/// `GET /api/coupons/campaigns/{id}` (public).
async fn campaign_view(app: &TestApp, id: &str) -> Value {
    let r = app.send("GET", &format!("/api/coupons/campaigns/{id}"), None, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

/// A campaign's status and remaining stock.
async fn status_and_stock(app: &TestApp, id: &str) -> (String, i64) {
    let c = campaign_view(app, id).await;
    (str_of(&c, "status"), int_of(&c, "remaining_stock"))
}

/// `POST /api/coupons/campaigns/{id}/{action}` as the operator (pause, resume).
async fn campaign_action(app: &TestApp, id: &str, action: &str) -> Reply {
    app.send("POST", &format!("/api/coupons/campaigns/{id}/{action}"), None, Some(OPERATOR_TOKEN)).await
}

async fn set_stock(app: &TestApp, id: &str, stock_total: i64) -> Reply {
    let body = json!({ "stock_total": stock_total });
    app.send("PUT", &format!("/api/coupons/campaigns/{id}/stock"), Some(&body), Some(OPERATOR_TOKEN)).await
}

/// Ids of the running campaigns listed for a query (`district=…` or `merchant_id=…`).
async fn listed(app: &TestApp, query: &str) -> BTreeSet<String> {
    let list = items(&app.send("GET", &format!("/api/coupons/campaigns?{query}"), None, None).await);
    assert!(list.iter().all(|c| c["remaining_stock"].is_i64()), "{list:?}");
    field_set(&list, "id")
}

pub(crate) async fn stats(app: &Api, id: &str) -> Value {
    let r = app.send("GET", &format!("/api/coupons/campaigns/{id}/stats"), None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

/// A figure of the stats' budget (`total`, `reserved`, `committed`, `available`; with or without `_fen`).
pub(crate) fn budget(stats: &Value, name: &str) -> i64 {
    let b = &stats["budget"];
    b[name].as_i64().or_else(|| b[format!("{name}_fen")].as_i64()).unwrap_or_else(|| panic!("no budget {name}: {b}"))
}

/// `(issued, redeemed)` of a channel in the stats, keyed by its code or by its kind (one code per kind here).
fn by_channel(stats: &Value, code: &str, kind: &str) -> (i64, i64) {
    let channels = &stats["by_channel"];
    let ch = if channels[code].is_object() { &channels[code] } else { &channels[kind] };
    assert!(ch.is_object(), "neither {code} nor {kind} in {channels}");
    (int_of(ch, "issued"), int_of(ch, "redeemed"))
}

// ---------------------------------------------------------------------------------------------------------------
// Customers

pub(crate) async fn login(app: &Api, subject: &str, channel_code: Option<&str>) -> Customer {
    let r = app.login(Provider::Wechat, subject, None, channel_code).await;
    assert!(matches!(r.status, 200 | 201), "{:?}", r.body);
    Customer { id: str_of(&r.body, "customer_id"), subject: subject.to_owned(), token: str_of(&r.body, "token") }
}

/// The same customer signed in again at the app's (moved) clock: sessions last a day.
async fn relogin(app: &Api, customer: &Customer) -> Customer {
    let again = login(app, &customer.subject, None).await;
    assert_eq!(again.id, customer.id);
    again
}

async fn relogin_all(app: &TestApp, customers: &[Customer]) -> Vec<Customer> {
    let mut again = Vec::with_capacity(customers.len());
    for c in customers {
        again.push(relogin(app, c).await);
    }
    again
}

/// Logs `n` customers in, 32 at a time.
pub(crate) async fn login_many(app: &Api, prefix: &str, n: usize) -> Vec<Customer> {
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (app, permits, subject) = (app.clone(), permits.clone(), format!("{prefix}_{i}"));
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore");
            (i, login(&app, &subject, None).await)
        });
    }
    let mut done = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        done.push(joined.expect("login task"));
    }
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, c)| c).collect()
}

/// An operator-recorded utility payment: it activates the customer (tag `utility_payer`, and `bank_cardholder` when
/// paid with the bank's card).
async fn record_payment(app: &TestApp, customer: &Customer, event_id: &str, bank_card: bool) {
    let event = json!({"event_id": event_id, "kind": "paid", "scenario": "utility", "amount_fen": 8800, "bank_card": bank_card});
    let path = format!("/api/ops/customers/{}/events", customer.id);
    let r = app.send("POST", &path, Some(&event), Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, r.body["stage"].as_str()), (200, Some("activated")), "{:?}", r.body);
}

/// The customer as the operator sees it (automatic tags in `tags`, the lifecycle stage).
async fn ops_view(app: &TestApp, customer: &Customer) -> Value {
    let r = app.send("GET", &format!("/api/ops/customers/{}", customer.id), None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

fn has_tag(profile: &Value, tag: &str) -> bool {
    profile["tags"].as_array().is_some_and(|tags| tags.iter().any(|t| t == tag))
}

/// Creates community `community_id` in property-fees with one room, and has `owner` claim it.
async fn claim_room(app: &TestApp, community_id: &str, owner: &Customer) {
    let community = json!({"id": community_id, "name": format!("{community_id} garden"), "city": "shenzhen",
                           "property_company": "Vanke Service", "settlement_account": "6222000055556666"});
    let r = app.send("POST", "/api/property/communities", Some(&community), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let (pid, secret) = (str_of(&r.body, "partner_id"), str_of(&r.body, "partner_secret"));
    let rooms = json!({"rooms": [{"room_id": "B1-101", "building": "1", "unit": "1", "number": "101",
                                  "owner_name": "王小明", "area_m2": 90, "monthly_fee_fen": 25000}]});
    let path = format!("/api/property/communities/{community_id}/rooms");
    let r = app.partner(&pid, &secret, "PUT", &path, Some(&rooms)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let claim = json!({"community_id": community_id, "room_id": "B1-101", "owner_name": "王小明"});
    let r = app.send("POST", "/api/property/households", Some(&claim), Some(&owner.token)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

// ---------------------------------------------------------------------------------------------------------------
// Claims and the wallet

/// `POST /api/coupons/campaigns/{id}/claim` with an `Idempotency-Key`.
pub(crate) async fn claim(app: &Api, token: &str, campaign_id: &str, key: &str) -> Reply {
    let headers =
        vec![("authorization".to_owned(), format!("Bearer {token}")), ("idempotency-key".to_owned(), key.to_owned())];
    app.send_raw("POST", &format!("/api/coupons/campaigns/{campaign_id}/claim"), Vec::new(), &headers).await
}

/// A claim with the client's retry: on `503` or a timeout the same request again, with the same key.
async fn claim_with_retry(app: &TestApp, token: &str, campaign_id: &str, key: &str) -> Reply {
    for attempt in 0..MAX_ATTEMPTS {
        let r = claim(app, token, campaign_id, key).await;
        if !retryable(&r) {
            return r;
        }
        eprintln!("retryable answer {} {} {}: retrying", r.status, r.body["code"], r.body["detail"]);
        tokio::time::sleep(Duration::from_millis(5 + 5 * attempt as u64)).await;
    }
    panic!("claim {campaign_id} with {key}: still not through after {MAX_ATTEMPTS} attempts")
}

/// A claim that must issue an active coupon of the campaign; returns the coupon.
async fn claimed(app: &TestApp, customer: &Customer, campaign_id: &str, key: &str) -> Value {
    let r = claim_with_retry(app, &customer.token, campaign_id, key).await;
    assert_eq!(r.status, 201, "claim {campaign_id}: {:?}", r.body);
    let coupon = r.body;
    assert_eq!((coupon["campaign_id"].as_str(), coupon["status"].as_str()), (Some(campaign_id), Some("active")));
    assert_eq!(str_of(&coupon, "code").chars().count(), 12, "{coupon}");
    assert_eq!(time_of(&coupon, "claimed_at"), app.now, "{coupon}");
    assert!(time_of(&coupon, "expires_at") > app.now, "{coupon}");
    assert_eq!(coupon["used_at"], Value::Null, "{coupon}");
    coupon
}

pub(crate) async fn wallet(app: &Api, customer: &Customer, status: Option<&str>) -> Vec<Value> {
    let query = status.map(|s| format!("?status={s}")).unwrap_or_default();
    let list = items(&app.send("GET", &format!("/api/coupons/wallet{query}"), None, Some(&customer.token)).await);
    if let Some(status) = status {
        assert!(list.iter().all(|c| c["status"] == status), "{status}: {list:?}");
    }
    list
}

/// The coupon ids of the customer's wallet with that status.
async fn wallet_ids(app: &TestApp, customer: &Customer, status: &str) -> BTreeSet<String> {
    field_set(&wallet(app, customer, Some(status)).await, "coupon_id")
}

/// One coupon of the whole wallet.
async fn in_wallet(app: &TestApp, customer: &Customer, coupon: &Value) -> Value {
    let all = wallet(app, customer, None).await;
    all.into_iter()
        .find(|c| c["coupon_id"] == coupon["coupon_id"])
        .unwrap_or_else(|| panic!("{} not in the wallet", coupon["coupon_id"]))
}

fn set_of(ids: &[&Value]) -> BTreeSet<String> {
    ids.iter().map(|c| str_of(c, "coupon_id")).collect()
}

async fn checkin(app: &TestApp, customer: &Customer) -> Value {
    let r = app.send("POST", "/api/coupons/checkin", None, Some(&customer.token)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["date"].as_str(), Some(date(app.now).as_str()), "{:?}", r.body);
    r.body
}

/// The campaigns of the coupons a check-in answer lists, and its refusals (`[campaign_id, code]`).
fn checkin_outcome(r: &Value) -> (Vec<String>, Vec<[String; 2]>) {
    let coupons = r["coupons"].as_array().expect("coupons").iter().map(|c| str_of(c, "campaign_id")).collect();
    let refusals = r["refusals"]
        .as_array()
        .expect("refusals")
        .iter()
        .map(|f| [str_of(f, "campaign_id"), str_of(f, "code")])
        .collect();
    (coupons, refusals)
}

/// The first check-in of the day: asserts the streak, the campaigns of the coupons issued and the refusals.
async fn checked_in(app: &TestApp, customer: &Customer, streak: i64, issued: &[&str], refusals: &[[&str; 2]]) -> Value {
    let r = checkin(app, customer).await;
    let expected = (
        issued.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        refusals.iter().map(|[c, k]| [(*c).to_owned(), (*k).to_owned()]).collect::<Vec<_>>(),
    );
    assert_eq!(
        (r["streak"].as_i64(), r["already_checked_in"].as_bool(), checkin_outcome(&r)),
        (Some(streak), Some(false), expected),
        "{}: {r}",
        app.now.to_rfc3339()
    );
    r
}

/// Checking in again the same day: the streak stays, and nothing new is issued (the answer may repeat the day's
/// coupons, no other).
async fn checked_in_again(app: &TestApp, customer: &Customer, first: &Value) {
    let r = checkin(app, customer).await;
    assert_eq!((&r["streak"], r["already_checked_in"].as_bool()), (&first["streak"], Some(true)), "{r}");
    let ids = |v: &Value| -> BTreeSet<String> { field_set(v["coupons"].as_array().expect("coupons"), "coupon_id") };
    assert!(ids(&r).is_subset(&ids(first)), "{r} after {first}");
}

/// A coupon campaign's entry in the operator's campaign review (`GET /api/ops/campaigns`) at `api`'s clock.
async fn reviewed_budget(api: &Api, id: &str) -> Value {
    let r = api.send("GET", "/api/ops/campaigns", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let campaigns = r.body["coupon_campaigns"].as_array().expect("coupon campaigns").clone();
    campaigns.into_iter().find(|c| c["campaign_id"] == id).unwrap_or_else(|| panic!("{id} not reviewed"))["budget"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coupons_that_expire_unused_give_their_budget_back_for_new_claims() {
    let app = Arc::new(TestApp::spawn().await.expect("app"));
    let t0 = app.now;
    onboard_merchant(&app, "noodle_bar", "futian", &["nb1"]).await;
    // The budget funds exactly three ¥5 coupons, each valid a day; stock is plenty, so only the budget limits.
    let body = with(
        campaign("three_a_day", &["noodle_bar"]),
        json!({"budget_fen": 1500, "validity": {"days_after_claim": 1}}),
    );
    create_campaign(&app, &body).await;

    // Three customers claim at once: the budget is all reserved, a fourth is refused.
    let customers = login_many(&app, "wx_expiring", 4).await;
    let tokens = customers[..3].iter().map(|c| c.token.clone()).collect();
    let (issued, refusals) = rush_claims(&app, "three_a_day", tokens, "exp").await;
    assert_eq!((issued.len(), refusals.len()), (3, 0), "{refusals:?}");
    refused(&claim(&app, &customers[3].token, "three_a_day", "exp-3").await, 422, "budget_exhausted");
    let s = stats(&app, "three_a_day").await;
    assert_eq!((budget(&s, "reserved"), budget(&s, "available")), (1500, 0), "{s}");
    let b = reviewed_budget(&app, "three_a_day").await;
    assert_eq!((b["reserved_fen"].as_i64(), b["remaining_fen"].as_i64()), (Some(1500), Some(0)), "{b}");

    // Half an hour after the coupons expired their reservations are still held (a bill quote that locked one just
    // before its expiry may still be paid): nothing comes back yet.
    let mut api = app.api.clone();
    api.now = t0.plus_days(1).plus_secs(30 * 60);
    let late = login(&api, "wx_expiring_3", None).await;
    assert_eq!(wallet(&api, &relogin(&api, &customers[0]).await, Some("expired")).await.len(), 1);
    let s = stats(&api, "three_a_day").await;
    assert_eq!((budget(&s, "reserved"), budget(&s, "available")), (1500, 0), "{s}");
    refused(&claim(&api, &late.token, "three_a_day", "exp-3-early").await, 422, "budget_exhausted");

    // An hour after the expiry nobody has touched those coupons: every budget read shows the budget free...
    api.now = t0.plus_days(1).plus_secs(3600 + 60);
    let s = stats(&api, "three_a_day").await;
    assert_eq!(
        (budget(&s, "reserved"), budget(&s, "committed"), budget(&s, "available"), s["issued"].as_i64()),
        (0, 0, 1500, Some(3)),
        "{s}"
    );
    let b = reviewed_budget(&api, "three_a_day").await;
    assert_eq!(
        (b["reserved_fen"].as_i64(), b["spent_fen"].as_i64(), b["remaining_fen"].as_i64()),
        (Some(0), Some(0), Some(1500)),
        "{b}"
    );
    // ...and the campaign, still running, issues three new coupons (valid a day from now) at once from it.
    let mut tokens = vec![login(&api, "wx_expiring_3", None).await.token];
    for i in 4..6 {
        tokens.push(login(&api, &format!("wx_expiring_{i}"), None).await.token);
    }
    let mut tasks = JoinSet::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let api = api.clone();
        tasks.spawn(async move { claim(&api, &token, "three_a_day", &format!("again-{i}")).await });
    }
    while let Some(done) = tasks.join_next().await {
        let r = done.expect("task");
        assert_eq!((r.status, r.body["status"].as_str()), (201, Some("active")), "{:?}", r.body);
        assert_eq!(time_of(&r.body, "expires_at"), api.now.plus_days(1), "{:?}", r.body);
    }
    let s = stats(&api, "three_a_day").await;
    assert_eq!((budget(&s, "reserved"), budget(&s, "available"), s["issued"].as_i64()), (1500, 0, Some(6)), "{s}");
    let sixth = login(&api, "wx_expiring_6", None).await;
    refused(&claim(&api, &sixth.token, "three_a_day", "again-6").await, 422, "budget_exhausted");
    if let Ok(app) = Arc::try_unwrap(app) {
        app.host.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Redemptions

pub(crate) fn order(code: &str, store_id: &str, order_amount_fen: i64, merchant_order_id: &str) -> Value {
    json!({"code": code, "store_id": store_id, "order_amount_fen": order_amount_fen,
           "merchant_order_id": merchant_order_id})
}

pub(crate) async fn redeem(app: &Api, m: &Merchant, body: &Value) -> Reply {
    app.partner(&m.partner_id, &m.secret, "POST", "/api/coupons/redemptions", Some(body)).await
}

/// A merchant's redemption with its retry: on `503` or a timeout the same order again, freshly signed.
async fn redeem_with_retry(app: &TestApp, m: &Merchant, body: &Value) -> Reply {
    for attempt in 0..MAX_ATTEMPTS {
        let r = redeem(app, m, body).await;
        if !retryable(&r) {
            return r;
        }
        eprintln!("retryable answer {} {} {}: retrying", r.status, r.body["code"], r.body["detail"]);
        tokio::time::sleep(Duration::from_millis(5 + 5 * attempt as u64)).await;
    }
    panic!("{body}: still not through after {MAX_ATTEMPTS} attempts")
}

/// A redemption that must go through with that discount; returns the redemption.
async fn redeemed(app: &TestApp, m: &Merchant, body: &Value, coupon: &Value, discount_fen: i64) -> Value {
    let r = redeem_with_retry(app, m, body).await;
    assert_eq!(r.status, 201, "{body}: {:?}", r.body);
    let pay = int_of(body, "order_amount_fen") - discount_fen;
    assert_eq!(
        (&r.body["coupon_id"], &r.body["campaign_id"], r.body["discount_fen"].as_i64(), r.body["pay_fen"].as_i64()),
        (&coupon["coupon_id"], &coupon["campaign_id"], Some(discount_fen), Some(pay)),
        "{:?}",
        r.body
    );
    assert_ne!(r.body["state"], "reversed", "{:?}", r.body);
    r.body
}

async fn reverse(app: &TestApp, m: &Merchant, redemption: &Value) -> Reply {
    let path = format!("/api/coupons/redemptions/{}/reverse", str_of(redemption, "redemption_id"));
    app.partner(&m.partner_id, &m.secret, "POST", &path, None).await
}

/// A code that is no coupon's: the real code's characters rotated (same alphabet, same length).
fn unknown_code(real: &str, n: usize) -> String {
    let mut chars: Vec<char> = real.chars().collect();
    let len = chars.len();
    chars.rotate_left(1 + n % (len - 1));
    if n >= len - 1 {
        chars.reverse();
    }
    let code: String = chars.into_iter().collect();
    assert_ne!(code, real);
    code
}

// ---------------------------------------------------------------------------------------------------------------
// The ledger and the store

/// What the bank has paid for coupons, and what it owes each merchant, by the ledger.
pub(crate) async fn coupon_money(app: &TestApp, merchants: &[&Merchant]) -> (i64, Vec<i64>) {
    let report = app.ledger_check().await;
    let owed =
        merchants.iter().map(|m| -ledger_account(&report, &format!("cpn:merchant:{}:settlement", m.id))).collect();
    (ledger_account(&report, MARKETING), owed)
}

// ---------------------------------------------------------------------------------------------------------------
// Concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_claims_on_a_stock_of_100_issue_exactly_100_coupons() {
    stock_rush(TestApp::spawn().await.expect("app")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_claim_rush_on_the_sqlite_store_issues_exactly_100_coupons() {
    scenefin_e2e::host_only!("the host's SQLite store (spawn_on)");
    stock_rush(TestApp::spawn_on(KvKind::Sqlite).await.expect("app")).await;
}

/// 500 customers claim at once from a stock of 100 (the budget would cover 2,000).
async fn stock_rush(app: TestApp) {
    let app = Arc::new(app);
    let started = Instant::now();
    onboard_merchant(&app, "rush_cafe", "futian", &["rush_1"]).await;
    create_campaign(
        &app,
        &with(campaign("rush100", &["rush_cafe"]), json!({"stock_total": 100, "budget_fen": 1_000_000})),
    )
    .await;
    let customers = login_many(&app, "wx_rush", 500).await;
    let logged_in = started.elapsed();

    let mut tasks = JoinSet::new();
    for (i, c) in customers.iter().enumerate() {
        let (app, token) = (app.clone(), c.token.clone());
        tasks.spawn(async move { (i, claim_with_retry(&app, &token, "rush100", &format!("rush-{i}")).await) });
    }
    // Meanwhile the public campaign page never shows a stock below zero or above the total.
    let over = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (app, over) = (app.clone(), over.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !over.load(Ordering::Relaxed) {
                seen.push(status_and_stock(&app, "rush100").await.1);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
    let mut winners: BTreeMap<usize, Value> = BTreeMap::new();
    let mut sold_out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done.expect("task");
        if r.status == 201 {
            assert_eq!((r.body["campaign_id"].as_str(), r.body["status"].as_str()), (Some("rush100"), Some("active")));
            winners.insert(i, r.body);
        } else {
            refused(&r, 422, "out_of_stock");
            sold_out.push(i);
        }
    }
    over.store(true, Ordering::Relaxed);
    let seen = watcher.await.expect("watcher");
    assert!(!seen.is_empty() && seen.iter().all(|s| (0..=100).contains(s)), "{seen:?}");
    assert_eq!((winners.len(), sold_out.len()), (100, 400));
    let coupons: Vec<&Value> = winners.values().collect();
    assert_eq!(set_of(&coupons).len(), 100, "100 distinct coupons");
    assert_eq!(coupons.iter().map(|c| str_of(c, "code")).collect::<BTreeSet<_>>().len(), 100, "100 distinct codes");

    assert_eq!(status_and_stock(&app, "rush100").await, ("running".to_owned(), 0));
    let s = stats(&app, "rush100").await;
    assert_eq!((s["issued"].as_i64(), s["remaining_stock"].as_i64()), (Some(100), Some(0)), "{s}");
    assert_eq!((budget(&s, "reserved"), budget(&s, "available")), (100 * 500, 1_000_000 - 100 * 500), "{s}");

    // Each winner holds exactly its coupon; a loser holds none and stays refused.
    let (first, coupon) = winners.iter().next().expect("a winner");
    let mine = wallet(&app, &customers[*first], None).await;
    assert_eq!(set_of(&mine.iter().collect::<Vec<_>>()), set_of(&[coupon]));
    let loser = &customers[sold_out[0]];
    assert!(wallet(&app, loser, None).await.is_empty());
    refused(&claim(&app, &loser.token, "rush100", "rush-late").await, 422, "out_of_stock");
    // Replaying a winner's key replays its coupon and issues nothing more.
    let replay = claim(&app, &customers[*first].token, "rush100", &format!("rush-{first}")).await;
    assert_eq!((replay.status, &replay.body["coupon_id"]), (201, &coupon["coupon_id"]), "{:?}", replay.body);
    assert_eq!(stats(&app, "rush100").await["issued"], 100);
    eprintln!("stock rush: 500 logins in {logged_in:?}, all in {:?}", started.elapsed());
    if let Ok(app) = Arc::try_unwrap(app) {
        app.host.shutdown().await;
    }
}

/// Claims at once, one per token (the i-th with key `{prefix}-{i}`); returns the coupons issued and the refusals.
async fn rush_claims(
    app: &Arc<TestApp>,
    campaign_id: &str,
    tokens: Vec<String>,
    prefix: &str,
) -> (Vec<Value>, Vec<Reply>) {
    let mut tasks = JoinSet::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (app, campaign_id, key) = (app.clone(), campaign_id.to_owned(), format!("{prefix}-{i}"));
        tasks.spawn(async move { claim_with_retry(&app, &token, &campaign_id, &key).await });
    }
    let (mut issued, mut refusals) = (Vec::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        let r = done.expect("task");
        if r.status == 201 { issued.push(r.body) } else { refusals.push(r) }
    }
    (issued, refusals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_pass_the_per_customer_limit_nor_the_budget() {
    let app = Arc::new(TestApp::spawn().await.expect("app"));
    onboard_merchant(&app, "tea_house", "luohu", &["tea_1"]).await;

    // One customer, 50 claims at once with 50 different keys, limit 1: one coupon.
    create_campaign(&app, &campaign("one_each", &["tea_house"])).await;
    let greedy = login(&app, "wx_greedy", None).await;
    let (issued, refusals) = rush_claims(&app, "one_each", vec![greedy.token.clone(); 50], "greedy").await;
    assert_eq!((issued.len(), refusals.len()), (1, 49));
    refusals.iter().for_each(|r| refused(r, 422, "limit_reached"));
    assert_eq!(wallet_ids(&app, &greedy, "active").await, set_of(&[&issued[0]]));
    let s = stats(&app, "one_each").await;
    assert_eq!(
        (s["issued"].as_i64(), s["remaining_stock"].as_i64(), budget(&s, "reserved")),
        (Some(1), Some(999), 500)
    );

    // A budget of ¥150 for coupons worth at most ¥5 each (10% off, capped at ¥5: the cap is what a claim reserves):
    // 60 customers at once, stock 1,000, get exactly 30.
    let thirty = with(
        campaign("thirty", &["tea_house"]),
        json!({"coupon": {"type": "percent_off", "percent_bp": 1000, "max_off_fen": 500}, "budget_fen": 15_000}),
    );
    create_campaign(&app, &thirty).await;
    let customers = login_many(&app, "wx_budget", 60).await;
    let tokens = customers.iter().map(|c| c.token.clone()).collect();
    let (issued, refusals) = rush_claims(&app, "thirty", tokens, "budget").await;
    assert_eq!((issued.len(), refusals.len()), (30, 30));
    refusals.iter().for_each(|r| refused(r, 422, "budget_exhausted"));
    assert_eq!(set_of(&issued.iter().collect::<Vec<_>>()).len(), 30);
    let s = stats(&app, "thirty").await;
    assert_eq!((s["issued"].as_i64(), s["remaining_stock"].as_i64()), (Some(30), Some(970)), "{s}");
    assert_eq!(
        (budget(&s, "total"), budget(&s, "reserved"), budget(&s, "committed"), budget(&s, "available")),
        (15_000, 15_000, 0, 0),
        "{s}"
    );
    let late = login(&app, "wx_budget_late", None).await;
    refused(&claim(&app, &late.token, "thirty", "late").await, 422, "budget_exhausted");
    if let Ok(app) = Arc::try_unwrap(app) {
        app.host.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Redemptions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_redeem_a_code_once_with_every_check_and_a_reversal_restores_coupon_and_budget() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    let sunny = onboard_merchant(&app, "sunny_cafe", "nanshan", &["sunny_1", "sunny_2"]).await;
    let moon = onboard_merchant(&app, "moon_bakery", "nanshan", &["moon_1"]).await;
    let again = json!({"merchant_id": "sunny_cafe", "name": "Sunny 2", "district": "nanshan",
                       "stores": [{"store_id": "x", "name": "x"}]});
    refused(
        &app.send("POST", "/api/coupons/merchants", Some(&again), Some(OPERATOR_TOKEN)).await,
        409,
        "merchant_exists",
    );

    create_campaign(&app, &campaign("cafe5", &["sunny_cafe"])).await;
    refused(
        &app.send("POST", "/api/coupons/campaigns", Some(&campaign("cafe5", &["sunny_cafe"])), Some(OPERATOR_TOKEN))
            .await,
        409,
        "campaign_exists",
    );
    // Every merchant of the district, 10% off capped at ¥8, no minimum, two per customer.
    let pct =
        json!({"coupon": {"type": "percent_off", "percent_bp": 1000, "max_off_fen": 800}, "per_customer_limit": 2});
    create_campaign(&app, &with(district_campaign("nanshan10", "nanshan"), pct)).await;
    let tiny = with(campaign("tiny", &["sunny_cafe"]), json!({"coupon": {"type": "fixed_off", "amount_fen": 500}}));
    create_campaign(&app, &tiny).await;

    let alice = login(&app, "wx_alice", None).await;
    let a = claimed(&app, &alice, "cafe5", "a-1").await;
    let code = str_of(&a, "code");

    // The checks, in order: the store, the code at this merchant, the minimum spend, then used.
    refused(&redeem(&app, &sunny, &order(&code, "moon_1", 3000, "o-1")).await, 422, "unknown_store");
    refused(&redeem(&app, &moon, &order(&code, "moon_1", 3000, "m-1")).await, 404, "coupon_not_found");
    refused(
        &redeem(&app, &sunny, &order(&unknown_code(&code, 0), "sunny_1", 3000, "o-2")).await,
        404,
        "coupon_not_found",
    );
    refused(&redeem(&app, &sunny, &order(&code, "sunny_1", 1999, "o-3")).await, 422, "below_min_spend");
    assert_eq!(wallet_ids(&app, &alice, "active").await, set_of(&[&a]), "nothing refused touched the coupon");
    let first = redeemed(&app, &sunny, &order(&code, "sunny_2", 3000, "o-4"), &a, 500).await;
    // The same order again is the same redemption; the same order id for something else is a conflict.
    let replay = redeem(&app, &sunny, &order(&code, "sunny_2", 3000, "o-4")).await;
    assert!(matches!(replay.status, 200 | 201), "{:?}", replay.body);
    assert_eq!(replay.body["redemption_id"], first["redemption_id"], "{:?}", replay.body);
    refused(&redeem(&app, &sunny, &order(&code, "sunny_2", 3500, "o-4")).await, 409, "merchant_order_conflict");
    refused(&redeem(&app, &sunny, &order(&code, "sunny_1", 3000, "o-5")).await, 409, "coupon_already_used");
    let used = in_wallet(&app, &alice, &a).await;
    assert_eq!((used["status"].as_str(), time_of(&used, "used_at")), (Some("used"), app.now), "{used}");

    // Percentages truncate and are capped; a discount never takes the whole order.
    let p1 = claimed(&app, &alice, "nanshan10", "p-1").await;
    let p2 = claimed(&app, &alice, "nanshan10", "p-2").await;
    redeemed(&app, &sunny, &order(&str_of(&p1, "code"), "sunny_1", 5009, "o-6"), &p1, 500).await;
    redeemed(&app, &moon, &order(&str_of(&p2, "code"), "moon_1", 20_000, "m-2"), &p2, 800).await;
    let t = claimed(&app, &alice, "tiny", "t-1").await;
    redeemed(&app, &sunny, &order(&str_of(&t, "code"), "sunny_1", 300, "o-7"), &t, 299).await;
    assert_eq!(coupon_money(&app, &[&sunny, &moon]).await, (500 + 500 + 800 + 299, vec![500 + 500 + 299, 800]));

    // 20 redemptions of one code at once, each for its own order: exactly one goes through.
    let bob = login(&app, "wx_bob", None).await;
    let b = claimed(&app, &bob, "cafe5", "b-1").await;
    let shared = Arc::new(app);
    let mut tasks = JoinSet::new();
    for i in 0..20 {
        let (app, sunny, body) =
            (shared.clone(), sunny.clone(), order(&str_of(&b, "code"), "sunny_1", 3000, &format!("race-{i}")));
        tasks.spawn(async move { redeem_with_retry(&app, &sunny, &body).await });
    }
    let mut wins = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let r = done.expect("task");
        if r.status == 201 {
            wins.push(r.body);
        } else {
            refused(&r, 409, "coupon_already_used");
        }
    }
    let Ok(app_back) = Arc::try_unwrap(shared) else { panic!("tasks are over") };
    app = app_back;
    assert_eq!(wins.len(), 1, "{wins:?}");
    let bobs = wins.remove(0);
    assert_eq!((&bobs["coupon_id"], bobs["discount_fen"].as_i64()), (&b["coupon_id"], Some(500)));
    assert_eq!(coupon_money(&app, &[&sunny, &moon]).await, (2099 + 500, vec![1299 + 500, 800]));
    let s = stats(&app, "cafe5").await;
    assert_eq!(
        (s["issued"].as_i64(), s["redeemed"].as_i64(), s["discount_spent_fen"].as_i64()),
        (Some(2), Some(2), Some(1000))
    );
    assert_eq!((budget(&s, "reserved"), budget(&s, "committed")), (1000, 1000), "{s}");

    // Reversal: only by the merchant that redeemed; the coupon is active again, the discount back in the ledger
    // and its value reserved again.
    let by_other = reverse(&app, &moon, &first).await;
    assert!(matches!(by_other.status, 403 | 404), "{:?}", by_other.body);
    let reversed = reverse(&app, &sunny, &first).await;
    assert_eq!(
        (reversed.status, reversed.body["state"].as_str(), reversed.body["coupon_restored"].as_bool()),
        (200, Some("reversed"), Some(true)),
        "{:?}",
        reversed.body
    );
    assert_eq!(reversed.body["redemption_id"], first["redemption_id"]);
    assert_eq!(in_wallet(&app, &alice, &a).await["status"], "active");
    let money = (2099, vec![1299, 800]);
    assert_eq!(coupon_money(&app, &[&sunny, &moon]).await, money);
    let s = stats(&app, "cafe5").await;
    assert_eq!((budget(&s, "reserved"), budget(&s, "committed")), (1000, 500), "{s}");
    // Reversing again changes nothing.
    let twice = reverse(&app, &sunny, &first).await;
    assert!(matches!(twice.status, 200 | 409), "{:?}", twice.body);
    assert_eq!(coupon_money(&app, &[&sunny, &moon]).await, money);
    // The restored coupon can be used again.
    redeemed(&app, &sunny, &order(&code, "sunny_1", 2000, "o-8"), &a, 500).await;
    assert_eq!(coupon_money(&app, &[&sunny, &moon]).await, (2599, vec![1799, 800]));

    // Eight days on, an unused coupon has expired; a redemption reversed after its coupon expired voids it.
    let carol = login(&app, "wx_carol", None).await;
    let c = claimed(&app, &carol, "cafe5", "c-1").await;
    app.now = t0.plus_days(8);
    let bob = relogin(&app, &bob).await;
    refused(&redeem(&app, &sunny, &order(&str_of(&c, "code"), "sunny_1", 3000, "o-9")).await, 422, "coupon_expired");
    let late = reverse(&app, &sunny, &bobs).await;
    assert_eq!(
        (late.status, late.body["state"].as_str(), late.body["coupon_restored"].as_bool()),
        (200, Some("reversed"), Some(false)),
        "{:?}",
        late.body
    );
    assert_eq!(in_wallet(&app, &bob, &b).await["status"], "void");
    assert_eq!(coupon_money(&app, &[&sunny, &moon]).await, (2099, vec![1299, 800]));
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_unknown_codes_within_a_minute_lock_the_store_out_for_five_minutes() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    let shop = onboard_merchant(&app, "guess_shop", "futian", &["g1"]).await;
    let other = onboard_merchant(&app, "honest_shop", "futian", &["h1"]).await;
    create_campaign(&app, &campaign("guess", &["guess_shop", "honest_shop"])).await;
    let dave = login(&app, "wx_dave", None).await;
    let code = str_of(&claimed(&app, &dave, "guess", "d-1").await, "code");
    let guess = |n: usize, at: &str| order(&unknown_code(&code, n), "g1", 3000, &format!("guess-{at}-{n}"));

    // Nine misses, then nine more three minutes later: never ten within a minute.
    for n in 0..9 {
        refused(&redeem(&app, &shop, &guess(n, "a")).await, 404, "coupon_not_found");
    }
    app.now = t0.plus_secs(180);
    let t1 = app.now;
    for n in 9..18 {
        refused(&redeem(&app, &shop, &guess(n, "b")).await, 404, "coupon_not_found");
    }
    // The tenth within this minute is still answered; from then on even the right code is refused.
    refused(&redeem(&app, &shop, &guess(18, "b")).await, 404, "coupon_not_found");
    let honest = order(&code, "g1", 3000, "real-1");
    refused(&redeem(&app, &shop, &honest).await, 429, "too_many_failed_lookups");
    // Another merchant is not locked.
    refused(&redeem(&app, &other, &order(&unknown_code(&code, 19), "h1", 3000, "h-1")).await, 404, "coupon_not_found");
    app.now = t1.plus_secs(299);
    refused(&redeem(&app, &shop, &honest).await, 429, "too_many_failed_lookups");
    assert_eq!(wallet(&app, &dave, Some("active")).await.len(), 1);
    app.now = t1.plus_secs(301);
    let r = redeem(&app, &shop, &honest).await;
    assert_eq!((r.status, r.body["discount_fen"].as_i64()), (201, Some(500)), "{:?}", r.body);
    assert_eq!(coupon_money(&app, &[&shop, &other]).await, (500, vec![500, 0]));
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_lockout_is_per_store_and_exact_under_fifty_concurrent_unknown_codes() {
    lookup_rush(TestApp::spawn().await.expect("app")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_lookup_rush_on_the_sqlite_store_is_exact_too() {
    scenefin_e2e::host_only!("the host's SQLite store (spawn_on)");
    lookup_rush(TestApp::spawn_on(KvKind::Sqlite).await.expect("app")).await;
}

/// Fifty unknown codes at once at one till of a merchant with two tills.
async fn lookup_rush(app: TestApp) {
    let shop = onboard_merchant(&app, "rush_guess_shop", "futian", &["till_1", "till_2"]).await;
    create_campaign(&app, &campaign("rush_guess", &["rush_guess_shop"])).await;
    let erin = login(&app, "wx_erin", None).await;
    let code = str_of(&claimed(&app, &erin, "rush_guess", "e-1").await, "code");

    // Fifty unknown codes at till 1 at once (one instant, so one minute): exactly ten are answered, the rest are
    // the lockout.
    let api: Api = app.api.clone();
    let mut tasks = JoinSet::new();
    for n in 0..50 {
        let (api, shop, body) =
            (api.clone(), shop.clone(), order(&unknown_code(&code, n), "till_1", 3000, &format!("rush-{n}")));
        tasks.spawn(async move { redeem(&api, &shop, &body).await });
    }
    let mut answers: BTreeMap<(u16, String), usize> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let r = joined.expect("lookup task");
        assert!(r.content_type.starts_with("application/problem+json"), "{:?}", r.body);
        *answers.entry((r.status, r.body["code"].as_str().unwrap_or_default().to_owned())).or_default() += 1;
    }
    let expected =
        BTreeMap::from([((404, "coupon_not_found".to_owned()), 10), ((429, "too_many_failed_lookups".to_owned()), 40)]);
    assert_eq!(answers, expected);
    // Till 1 is locked, even for the right code; till 2 of the same merchant is not.
    refused(&redeem(&app, &shop, &order(&code, "till_1", 3000, "real-1")).await, 429, "too_many_failed_lookups");
    refused(
        &redeem(&app, &shop, &order(&unknown_code(&code, 50), "till_2", 3000, "t2-miss")).await,
        404,
        "coupon_not_found",
    );
    let r = redeem(&app, &shop, &order(&code, "till_2", 3000, "real-2")).await;
    assert_eq!((r.status, r.body["discount_fen"].as_i64()), (201, Some(500)), "{:?}", r.body);
    assert_eq!(coupon_money(&app, &[&shop]).await, (500, vec![500]));
    app.host.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Eligibility and events

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_follows_the_customers_profile_and_claiming_and_redeeming_report_events() {
    let app = TestApp::spawn().await.expect("app");
    let cafe = onboard_merchant(&app, "elig_cafe", "nanshan", &["e1"]).await;
    let fresh = login(&app, "wx_fresh", None).await;
    let payer = login(&app, "wx_payer", None).await;
    record_payment(&app, &payer, "pay-payer-1", false).await;
    let cardholder = login(&app, "wx_cardholder", None).await;
    record_payment(&app, &cardholder, "pay-card-1", true).await;
    let owner = login(&app, "wx_owner", None).await;
    claim_room(&app, "sky", &owner).await;

    let campaigns = [
        with(campaign("welcome", &["elig_cafe"]), json!({"kind": "new_customer"})),
        with(campaign("newbies", &["elig_cafe"]), json!({"eligibility": {"new_customers_only": true}})),
        with(campaign("payers", &["elig_cafe"]), json!({"eligibility": {"tags_any": ["utility_payer", "nobody_tag"]}})),
        with(campaign("vips", &["elig_cafe"]), json!({"eligibility": {"tags_any": ["vip_guest"]}})),
        with(campaign("cards", &["elig_cafe"]), json!({"eligibility": {"cardholders_only": true}})),
        with(campaign("active", &["elig_cafe"]), json!({"eligibility": {"lifecycle_in": ["activated", "engaged"]}})),
        with(
            campaign("sky_perk", &["elig_cafe"]),
            json!({"kind": "community_perk", "eligibility": {"community_ids": ["sky"]}}),
        ),
        with(campaign("streaks", &["elig_cafe"]), json!({"kind": "checkin", "checkin_streaks": [3]})),
        with(campaign("referred", &["elig_cafe"]), json!({"kind": "referral_reward"})),
    ];
    for c in &campaigns {
        create_campaign(&app, c).await;
    }
    // The community perk is published to the community's perks, which property-fees shows.
    let perks = items(&app.send("GET", "/api/property/communities/sky/perks", None, None).await);
    assert_eq!(field_set(&perks, "campaign_id"), BTreeSet::from(["sky_perk".to_owned()]), "{perks:?}");

    // Refusals write nothing (but the idempotency record).
    let before = app.snapshot().await;
    assert!(before.keys().any(|k| k.starts_with("cpn:campaign:welcome")), "the snapshot sees the store");
    let refusals = [
        (&payer, "welcome"),
        (&payer, "newbies"),
        (&fresh, "payers"),
        (&payer, "vips"),
        (&payer, "cards"),
        (&fresh, "cards"),
        (&fresh, "active"),
        (&fresh, "sky_perk"),
        (&payer, "sky_perk"),
        (&owner, "streaks"),
        (&owner, "referred"),
    ];
    for (who, id) in refusals {
        let r = claim(&app, &who.token, id, &format!("refused-{id}")).await;
        assert_eq!((r.status, r.body["code"].as_str()), (422, Some("not_eligible")), "{id}: {:?}", r.body);
    }
    assert_eq!(app.snapshot().await, before, "refused claims left no trace");
    assert!(!has_tag(&ops_view(&app, &payer).await, "coupon_user"));

    // The eligible claims.
    claimed(&app, &payer, "payers", "ok-payers").await;
    claimed(&app, &payer, "active", "ok-active").await;
    claimed(&app, &cardholder, "cards", "ok-cards").await;
    claimed(&app, &cardholder, "payers", "ok-payers").await;
    let tag = json!({ "tag": "vip_guest" });
    let path = format!("/api/ops/customers/{}/tags", fresh.id);
    assert_eq!(app.send("POST", &path, Some(&tag), Some(OPERATOR_TOKEN)).await.status, 200);
    claimed(&app, &fresh, "vips", "ok-vips").await;
    let welcome = claimed(&app, &fresh, "welcome", "ok-welcome").await;

    // Claiming tags the customer `coupon_user` without activating them; redeeming activates them, after which
    // new-customer campaigns are closed to them.
    let profile = ops_view(&app, &fresh).await;
    assert!(has_tag(&profile, "coupon_user"), "{profile}");
    assert_eq!(profile["lifecycle"]["stage"], "new", "{profile}");
    redeemed(&app, &cafe, &order(&str_of(&welcome, "code"), "e1", 2500, "w-1"), &welcome, 500).await;
    let profile = ops_view(&app, &fresh).await;
    assert_eq!(profile["lifecycle"]["stage"], "activated", "{profile}");
    refused(&claim(&app, &fresh.token, "newbies", "after-redeem").await, 422, "not_eligible");

    // The owner of a room in the community carries its tag (set by property-fees) and gets its perk.
    let profile = ops_view(&app, &owner).await;
    assert!(has_tag(&profile, "community:sky"), "the owner's tags: {}", profile["tags"]);
    let perk = claimed(&app, &owner, "sky_perk", "ok-sky").await;
    assert_eq!(perk["merchant_ids"], json!(["elig_cafe"]), "{perk}");
    assert!(has_tag(&ops_view(&app, &owner).await, "coupon_user"));
    app.host.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Schedule, operations, stock

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_pause_resume_stock_and_daily_limits_govern_claims() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    onboard_merchant(&app, "noodle_bar", "nanshan", &["n1"]).await;
    onboard_merchant(&app, "far_shop", "yantian", &["f1"]).await;
    let mut c: Vec<Customer> = [
        login(&app, "wx_sched_0", None).await,
        login(&app, "wx_sched_1", None).await,
        login(&app, "wx_sched_2", None).await,
    ]
    .into();

    // December has not started: not running, not listed, not claimable, and a refused claim writes nothing.
    let december = json!({"starts_at": "2026-12-01T00:00:00+08:00", "ends_at": "2026-12-31T23:59:59+08:00"});
    create_campaign(&app, &with(campaign("december", &["noodle_bar"]), json!({ "schedule": december }))).await;
    let november = json!({"starts_at": "2026-11-01T00:00:00+08:00", "ends_at": "2026-11-30T23:59:59+08:00"});
    create_campaign(&app, &with(campaign("november", &["noodle_bar"]), json!({ "schedule": november }))).await;
    create_campaign(&app, &with(campaign("noodles", &["noodle_bar"]), json!({"stock_total": 2}))).await;
    create_campaign(&app, &district_campaign("nanshan_week", "nanshan")).await;
    create_campaign(&app, &campaign("far_deal", &["far_shop"])).await;

    assert_eq!(status_and_stock(&app, "december").await.0, "scheduled");
    let before = app.snapshot().await;
    refused(&claim(&app, &c[0].token, "december", "dec-early").await, 422, "campaign_not_running");
    // Nor do bad requests: no key, no session, a customer's token on an operator route, a capless percentage.
    let path = "/api/coupons/campaigns/noodles/claim";
    let no_key = app.send("POST", path, None, Some(&c[0].token)).await;
    refused(&no_key, 400, "validation_failed");
    assert_eq!(no_key.body["field"], "Idempotency-Key");
    refused(&claim(&app, "", "noodles", "no-session").await, 401, "missing_credentials");
    let by_customer = app.send("POST", "/api/coupons/campaigns", Some(&campaign("mine", &[])), Some(&c[0].token)).await;
    refused(&by_customer, 401, "invalid_operator_token");
    let capless =
        with(campaign("capless", &["noodle_bar"]), json!({"coupon": {"type": "percent_off", "percent_bp": 500}}));
    let r = app.send("POST", "/api/coupons/campaigns", Some(&capless), Some(OPERATOR_TOKEN)).await;
    refused(&r, 400, "validation_failed");
    assert_eq!(r.body["field"], "coupon.max_off_fen");
    assert_eq!(app.snapshot().await, before, "refused requests leave no trace");
    let at_noodle_bar = listed(&app, "merchant_id=noodle_bar").await;
    assert!(at_noodle_bar.contains("november") && at_noodle_bar.contains("noodles"), "{at_noodle_bar:?}");
    assert!(!at_noodle_bar.contains("december") && !at_noodle_bar.contains("far_deal"), "{at_noodle_bar:?}");
    let in_nanshan = listed(&app, "district=nanshan").await;
    assert!(in_nanshan.contains("nanshan_week") && !in_nanshan.contains("far_deal"), "{in_nanshan:?}");
    assert_eq!(listed(&app, "merchant_id=far_shop").await, BTreeSet::from(["far_deal".to_owned()]));

    // Stock: two issued; lowering below that is refused, equal is allowed, raising frees more.
    claimed(&app, &c[0], "noodles", "s-0").await;
    claimed(&app, &c[1], "noodles", "s-1").await;
    refused(&claim(&app, &c[2].token, "noodles", "s-2").await, 422, "out_of_stock");
    refused(&set_stock(&app, "noodles", 1).await, 409, "stock_below_issued");
    assert_eq!(set_stock(&app, "noodles", 2).await.status, 200);
    let raised = set_stock(&app, "noodles", 3).await;
    assert_eq!((raised.status, raised.body["remaining_stock"].as_i64()), (200, Some(1)), "{:?}", raised.body);
    assert_eq!(status_and_stock(&app, "noodles").await, ("running".to_owned(), 1));
    claimed(&app, &c[2], "noodles", "s-2b").await;
    let s = stats(&app, "noodles").await;
    assert_eq!((s["issued"].as_i64(), s["remaining_stock"].as_i64()), (Some(3), Some(0)), "{s}");

    // Pause and resume: operator only; paused campaigns are neither claimable nor listed.
    let r = app.send("POST", "/api/coupons/campaigns/november/pause", None, Some(&c[0].token)).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    let paused = campaign_action(&app, "november", "pause").await;
    assert_eq!((paused.status, paused.body["status"].as_str()), (200, Some("paused")), "{:?}", paused.body);
    assert_eq!(status_and_stock(&app, "november").await.0, "paused");
    refused(&claim(&app, &c[0].token, "november", "nov-paused").await, 422, "campaign_not_running");
    assert!(!listed(&app, "merchant_id=noodle_bar").await.contains("november"));
    let resumed = campaign_action(&app, "november", "resume").await;
    assert_eq!((resumed.status, resumed.body["status"].as_str()), (200, Some("running")), "{:?}", resumed.body);
    claimed(&app, &c[0], "november", "nov-resumed").await;

    // December: the November campaign has ended, the December one runs.
    app.now = at("2026-12-01T09:00:00+08:00");
    c = relogin_all(&app, &c).await;
    assert_eq!(status_and_stock(&app, "november").await.0, "ended");
    refused(&claim(&app, &c[1].token, "november", "nov-late").await, 422, "campaign_not_running");
    assert_eq!(status_and_stock(&app, "december").await.0, "running");
    claimed(&app, &c[0], "december", "dec-on-time").await;
    let at_noodle_bar = listed(&app, "merchant_id=noodle_bar").await;
    assert!(at_noodle_bar.contains("december") && !at_noodle_bar.contains("november"), "{at_noodle_bar:?}");

    // A daily stock of one, and one a day per customer (two in all).
    app.now = t0;
    c = relogin_all(&app, &c).await;
    let daily = with(campaign("lunch", &["noodle_bar"]), json!({"daily_stock": 1, "stock_total": 10}));
    create_campaign(&app, &daily).await;
    let per_day =
        with(campaign("breakfast", &["noodle_bar"]), json!({"per_customer_limit": 2, "per_customer_daily_limit": 1}));
    create_campaign(&app, &per_day).await;
    claimed(&app, &c[0], "lunch", "l-0").await;
    refused(&claim(&app, &c[1].token, "lunch", "l-1").await, 422, "out_of_stock");
    claimed(&app, &c[1], "breakfast", "b-1").await;
    refused(&claim(&app, &c[1].token, "breakfast", "b-2").await, 422, "limit_reached");
    app.now = t0.plus_days(1);
    c = relogin_all(&app, &c).await;
    claimed(&app, &c[1], "lunch", "l-1-tomorrow").await;
    refused(&claim(&app, &c[2].token, "lunch", "l-2").await, 422, "out_of_stock");
    claimed(&app, &c[1], "breakfast", "b-2-tomorrow").await;
    app.now = t0.plus_days(2);
    c = relogin_all(&app, &c).await;
    refused(&claim(&app, &c[1].token, "breakfast", "b-3").await, 422, "limit_reached");
    assert_eq!(status_and_stock(&app, "lunch").await.1, 8);
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchants_listing_includes_the_district_campaigns_it_redeems() {
    let app = TestApp::spawn().await.expect("app");
    let tea = onboard_merchant(&app, "luohu_tea", "luohu", &["lt1"]).await;
    onboard_merchant(&app, "luohu_bakery", "luohu", &["lb1"]).await;
    onboard_merchant(&app, "futian_deli", "futian", &["fd1"]).await;
    create_campaign(&app, &campaign("tea_own", &["luohu_tea"])).await;
    create_campaign(&app, &campaign("bakery_own", &["luohu_bakery"])).await;
    create_campaign(&app, &district_campaign("luohu_week", "luohu")).await;
    create_campaign(&app, &district_campaign("futian_week", "futian")).await;
    // Named merchants plus a district: the deli (futian) redeems it by name, luohu's merchants by district.
    let both = with(campaign("deli_and_luohu", &["futian_deli"]), json!({"kind": "district", "district": "luohu"}));
    create_campaign(&app, &both).await;
    let ids = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<String>>();

    assert_eq!(listed(&app, "merchant_id=luohu_tea").await, ids(&["tea_own", "luohu_week", "deli_and_luohu"]));
    assert_eq!(listed(&app, "merchant_id=luohu_bakery").await, ids(&["bakery_own", "luohu_week", "deli_and_luohu"]));
    assert_eq!(listed(&app, "merchant_id=futian_deli").await, ids(&["futian_week", "deli_and_luohu"]));
    // Both filters: what the merchant redeems and is a campaign of that district.
    assert_eq!(listed(&app, "merchant_id=futian_deli&district=luohu").await, ids(&["deli_and_luohu"]));
    assert_eq!(listed(&app, "merchant_id=luohu_tea&district=futian").await, ids(&[]));
    // An unknown merchant redeems nothing; a malformed id could name none and is refused, like an empty filter.
    assert_eq!(listed(&app, "merchant_id=no_such_shop").await, ids(&[]));
    for query in ["merchant_id=bad%20id", "merchant_id=", "district=%01", &format!("district={}", "x".repeat(33))] {
        let r = app.send("GET", &format!("/api/coupons/campaigns?{query}"), None, None).await;
        assert_eq!((r.status, r.body["code"].as_str()), (400, Some("validation_failed")), "{query}: {:?}", r.body);
    }

    // What the listing promises holds at the till: the district coupon is redeemed at the tea house.
    let fay = login(&app, "wx_fay", None).await;
    let coupon = claimed(&app, &fay, "luohu_week", "f-1").await;
    redeemed(&app, &tea, &order(&str_of(&coupon, "code"), "lt1", 3000, "lw-1"), &coupon, 500).await;
    app.host.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Check-in

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_day_check_in_streak_issues_a_coupon_and_a_missed_day_starts_over() {
    let mut app = TestApp::spawn().await.expect("app");
    let day1 = app.now;
    onboard_merchant(&app, "streak_cafe", "nanshan", &["s1"]).await;
    let streaks = with(
        campaign("streak3", &["streak_cafe"]),
        json!({"kind": "checkin", "checkin_streaks": [3], "stock_total": 1, "coupon": {"type": "fixed_off", "amount_fen": 300}}),
    );
    create_campaign(&app, &streaks).await;
    let erin = login(&app, "wx_erin", None).await;
    let frank = login(&app, "wx_frank", None).await;

    // Day 1, twice: the second changes nothing.
    let first = checked_in(&app, &erin, 1, &[], &[]).await;
    checked_in_again(&app, &erin, &first).await;
    checked_in(&app, &frank, 1, &[], &[]).await;
    let state = app.send("GET", "/api/coupons/checkin", None, Some(&erin.token)).await;
    assert_eq!(
        (state.status, state.body["streak"].as_i64(), state.body["checked_in_today"].as_bool()),
        (200, Some(1), Some(true)),
        "{:?}",
        state.body
    );
    assert_eq!(state.body["last_date"].as_str(), Some(date(day1).as_str()));

    // Day 2 (late evening), day 3 (just after midnight): the third day issues the coupon, once.
    app.now = at("2026-11-24T23:30:00+08:00");
    let (erin, frank) = (relogin(&app, &erin).await, relogin(&app, &frank).await);
    let state = app.send("GET", "/api/coupons/checkin", None, Some(&erin.token)).await;
    assert_eq!(state.body["checked_in_today"].as_bool(), Some(false), "{:?}", state.body);
    checked_in(&app, &erin, 2, &[], &[]).await;
    checked_in(&app, &frank, 2, &[], &[]).await;
    app.now = at("2026-11-25T00:10:00+08:00");
    let issued = checked_in(&app, &erin, 3, &["streak3"], &[]).await;
    let coupon = &issued["coupons"][0];
    assert_eq!((coupon["status"].as_str(), coupon["discount"]["amount_fen"].as_i64()), (Some("active"), Some(300)));
    checked_in_again(&app, &erin, &issued).await;
    assert_eq!(wallet(&app, &erin, None).await.len(), 1);
    assert_eq!(wallet_ids(&app, &erin, "active").await, set_of(&[coupon]));
    // Frank reaches day 3 too, but the stock is gone: the refusal is reported, the streak counts.
    checked_in(&app, &frank, 3, &[], &[["streak3", "out_of_stock"]]).await;
    assert!(wallet(&app, &frank, None).await.is_empty());
    // Check-in campaigns are never claimed.
    refused(&claim(&app, &frank.token, "streak3", "claim-streak").await, 422, "not_eligible");

    // Erin skips day 4: day 5 starts over. With stock again, a second three-day streak meets her limit of one.
    assert_eq!(set_stock(&app, "streak3", 5).await.status, 200);
    app.now = day1.plus_days(4);
    let (erin, frank) = (relogin(&app, &erin).await, relogin(&app, &frank).await);
    checked_in(&app, &erin, 1, &[], &[]).await;
    checked_in(&app, &frank, 1, &[], &[]).await;
    app.now = day1.plus_days(5);
    let erin = relogin(&app, &erin).await;
    checked_in(&app, &erin, 2, &[], &[]).await;
    app.now = day1.plus_days(6);
    let erin = relogin(&app, &erin).await;
    checked_in(&app, &erin, 3, &[], &[["streak3", "limit_reached"]]).await;
    let state = app.send("GET", "/api/coupons/checkin", None, Some(&erin.token)).await;
    assert_eq!((state.body["streak"].as_i64(), state.body["checked_in_today"].as_bool()), (Some(3), Some(true)));
    assert_eq!(state.body["last_date"].as_str(), Some(date(app.now).as_str()));
    assert_eq!(wallet(&app, &erin, None).await.len(), 1);
    assert_eq!(stats(&app, "streak3").await["issued"], 1);
    app.host.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Statistics and the wallet

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_by_channel_and_the_wallet_sorts_coupons_by_status_over_time() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    let bistro = onboard_merchant(&app, "bistro", "futian", &["b1"]).await;
    for (code, channel) in [("BR001", "branch"), ("POSTER9", "poster")] {
        let body = json!({"code": code, "channel": channel, "campaign_id": "coupons_autumn"});
        assert_eq!(app.send("POST", "/api/channels", Some(&body), Some(OPERATOR_TOKEN)).await.status, 201);
    }
    let a1 = login(&app, "wx_branch_1", Some("BR001")).await;
    let a2 = login(&app, "wx_branch_2", Some("BR001")).await;
    let p1 = login(&app, "wx_poster_1", Some("POSTER9")).await;
    let d1 = login(&app, "wx_direct_1", None).await;

    create_campaign(&app, &with(campaign("bistro5", &["bistro"]), json!({"stock_total": 50, "budget_fen": 100_000})))
        .await;
    let short = with(campaign("bistro_short", &["bistro"]), json!({"validity": {"days_after_claim": 1}}));
    create_campaign(&app, &short).await;
    let fixed_end =
        with(campaign("bistro_long", &["bistro"]), json!({"validity": {"ends_at": "2026-12-20T23:59:59+08:00"}}));
    create_campaign(&app, &fixed_end).await;

    let mut coupons = Vec::new();
    for (i, who) in [&a1, &a2, &p1, &d1].into_iter().enumerate() {
        coupons.push(claimed(&app, who, "bistro5", &format!("k-{i}")).await);
    }
    redeemed(&app, &bistro, &order(&str_of(&coupons[0], "code"), "b1", 4000, "bo-1"), &coupons[0], 500).await;
    redeemed(&app, &bistro, &order(&str_of(&coupons[3], "code"), "b1", 2000, "bo-2"), &coupons[3], 500).await;

    // 4 issued, 2 redeemed: 50.00%; ¥10 spent, ¥10 more held for the two unused ones (`reserved` counts what is
    // reserved or committed, as core budgets do).
    let s = stats(&app, "bistro5").await;
    assert_eq!(
        (
            s["issued"].as_i64(),
            s["redeemed"].as_i64(),
            s["redemption_rate_bp"].as_i64(),
            s["discount_spent_fen"].as_i64()
        ),
        (Some(4), Some(2), Some(5000), Some(1000)),
        "{s}"
    );
    assert_eq!(
        (budget(&s, "total"), budget(&s, "reserved"), budget(&s, "committed"), budget(&s, "available")),
        (100_000, 2000, 1000, 98_000),
        "{s}"
    );
    assert_eq!(s["remaining_stock"].as_i64(), Some(46), "{s}");
    assert_eq!((by_channel(&s, "BR001", "branch"), by_channel(&s, "POSTER9", "poster")), ((2, 1), (1, 0)), "{s}");
    assert_eq!(coupon_money(&app, &[&bistro]).await, (1000, vec![1000]));
    let r = app.send("GET", "/api/coupons/campaigns/bistro5/stats", None, Some(&a1.token)).await;
    assert_eq!(r.status, 401, "{:?}", r.body);

    // a1's wallet: one used, one valid a day, one valid until 20 December.
    let short = claimed(&app, &a1, "bistro_short", "short").await;
    let long = claimed(&app, &a1, "bistro_long", "long").await;
    assert_eq!(time_of(&long, "expires_at"), at("2026-12-20T23:59:59+08:00"), "{long}");
    let used = &coupons[0];
    assert_eq!(wallet_ids(&app, &a1, "used").await, set_of(&[used]));
    assert_eq!(wallet_ids(&app, &a1, "active").await, set_of(&[&short, &long]));
    assert!(wallet_ids(&app, &a1, "expired").await.is_empty());
    assert_eq!(wallet(&app, &a1, None).await.len(), 3);
    // Three days on, the one-day coupon has expired; on 21 December, both have.
    app.now = t0.plus_days(3);
    let (a1, a2) = (relogin(&app, &a1).await, relogin(&app, &a2).await);
    assert_eq!(
        (wallet_ids(&app, &a1, "active").await, wallet_ids(&app, &a1, "expired").await),
        (set_of(&[&long]), set_of(&[&short]))
    );
    assert_eq!(wallet_ids(&app, &a1, "used").await, set_of(&[used]));
    app.now = at("2026-12-21T00:00:01+08:00");
    let (a1, a2) = (relogin(&app, &a1).await, relogin(&app, &a2).await);
    assert!(wallet_ids(&app, &a1, "active").await.is_empty());
    assert_eq!(wallet_ids(&app, &a1, "expired").await, set_of(&[&short, &long]));
    assert_eq!(wallet(&app, &a1, None).await.len(), 3);
    assert!(wallet(&app, &a2, Some("used")).await.is_empty());
    app.host.shutdown().await;
}
