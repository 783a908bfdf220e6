//! Referral tiers end to end: referrers share codes, friends register with them and pay a utility bill (their
//! qualifying first payment, reported through core events), and the referrer climbs the ladder — per-referral
//! rewards after the holding period (test clock), tier bonuses once, clawback on refund, every rejection reason,
//! budget exhaustion, and a hundred referees qualifying at once.
//!
//! Tiers are numbered from 1 in ladder order (`current_tier`, `next_tier.tier`, the leaderboard's `tier`): with the
//! README's ladder (1, 3 and 5 qualified), 3 qualified is tier 2 and `next_tier` says "2 more to reach tier 3".
//! `current_tier` may be that number or a tier object carrying it as `tier`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use scenefin_core::auth::{IdentityAssertion, Provider, sign_assertion};
use scenefin_core::clock::Timestamp;
use scenefin_e2e::{IDENTITY_SECRET, OPERATOR_TOKEN, Reply, TestApp, ledger_account, retryable};
use scenefin_host::KvKind;
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// How often a client sends a request again after store contention (`503`) or a timeout.
const MAX_ATTEMPTS: usize = 50;
/// The account every program's cash is paid from.
const MARKETING: &str = "bank:marketing";
/// The prepaid power biller the referees pay (any amount, any 6 to 12 digit account).
const BILLER: &str = "ref_power";
const PROGRAMS: &str = "/api/referrals/programs";

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/// A logged-in customer.
#[derive(Clone, Debug)]
struct Cust {
    id: String,
    subject: String,
    token: String,
}

/// Sends a request until it is not refused for contention or a timeout (the requests retried are idempotent).
async fn retry<F, Fut>(mut send: F) -> Reply
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Reply>,
{
    for attempt in 0..MAX_ATTEMPTS {
        let r = send().await;
        if !retryable(&r) {
            return r;
        }
        eprintln!("retryable answer {} {} {}: retrying", r.status, r.body["code"], r.body["detail"]);
        tokio::time::sleep(Duration::from_millis(5 + 5 * attempt as u64)).await;
    }
    panic!("still contended after {MAX_ATTEMPTS} attempts")
}

fn str_of(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_else(|| panic!("no string {field} in {v}")).to_owned()
}

fn int_of(v: &Value, field: &str) -> i64 {
    v[field].as_i64().unwrap_or_else(|| panic!("no integer {field} in {v}"))
}

fn at(rfc3339: &str) -> Timestamp {
    Timestamp::parse_rfc3339(rfc3339).expect("timestamp")
}

/// A timestamp field (`None` when null or absent).
fn time_of(v: &Value, field: &str) -> Option<Timestamp> {
    v[field].as_str().map(at)
}

/// A count given as a number or as a list.
fn count_of(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_array().and_then(|a| i64::try_from(a.len()).ok()))
}

/// Asserts a refusal: its status, its stable code, and that it is a problem+json document.
#[track_caller]
fn refused(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status, r.body["code"].as_str()), (status, Some(code)), "{:?}", r.body);
    assert!(r.content_type.starts_with("application/problem+json"), "{}: {:?}", r.content_type, r.body);
}

/// Asserts a 4xx problem+json refusal, whatever its code.
#[track_caller]
fn problem(r: &Reply, status: u16) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert!(r.content_type.starts_with("application/problem+json"), "{}: {:?}", r.content_type, r.body);
    assert!(r.body["code"].is_string(), "{:?}", r.body);
}

fn with(mut base: Value, patch: Value) -> Value {
    if let (Some(fields), Value::Object(patch)) = (base.as_object_mut(), patch) {
        fields.extend(patch);
    }
    base
}

// Customers

fn assertion(app: &TestApp, subject: &str, phone: Option<&str>, card: Option<&str>) -> String {
    let a = IdentityAssertion {
        provider: Provider::Wechat,
        subject: subject.into(),
        phone: phone.map(Into::into),
        card_fingerprint: card.map(Into::into),
        iat: app.now.unix_secs(),
    };
    sign_assertion(IDENTITY_SECRET.as_bytes(), &a)
}

/// `POST /api/sessions` with a verified phone, a card fingerprint and a referral code when given.
async fn session(
    app: &TestApp,
    subject: &str,
    phone: Option<&str>,
    card: Option<&str>,
    referral_code: Option<&str>,
) -> Reply {
    let mut body = json!({ "assertion": assertion(app, subject, phone, card) });
    if let Some(code) = referral_code {
        body["referral_code"] = code.into();
    }
    retry(|| app.send("POST", "/api/sessions", Some(&body), None)).await
}

fn signed_in(r: &Reply, subject: &str) -> Cust {
    Cust { id: str_of(&r.body, "customer_id"), subject: subject.to_owned(), token: str_of(&r.body, "token") }
}

/// Registers a new customer.
async fn register_as(
    app: &TestApp,
    subject: &str,
    phone: Option<&str>,
    card: Option<&str>,
    referral_code: Option<&str>,
) -> Cust {
    let r = session(app, subject, phone, card, referral_code).await;
    assert_eq!((r.status, r.body["is_new"].as_bool()), (201, Some(true)), "{subject}: {:?}", r.body);
    signed_in(&r, subject)
}

async fn register(app: &TestApp, subject: &str, referral_code: Option<&str>) -> Cust {
    register_as(app, subject, None, None, referral_code).await
}

/// The same customer signed in again at the app's (moved) clock.
async fn relogin(app: &TestApp, c: &Cust) -> Cust {
    let r = session(app, &c.subject, None, None, None).await;
    assert_eq!((r.status, r.body["customer_id"].as_str()), (200, Some(c.id.as_str())), "{:?}", r.body);
    signed_in(&r, &c.subject)
}

/// Registers `n` customers with `code`, 32 at a time (each retried on contention).
async fn register_many(app: &Arc<TestApp>, prefix: &str, n: usize, code: &str) -> Vec<Cust> {
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (app, permits, subject, code) = (app.clone(), permits.clone(), format!("{prefix}_{i}"), code.to_owned());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore");
            let r = session(&app, &subject, None, None, Some(&code)).await;
            // A login retried after a timeout may find the customer registered by the first attempt.
            assert!(matches!(r.status, 200 | 201), "{subject}: {:?}", r.body);
            (i, signed_in(&r, &subject))
        });
    }
    let mut done = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        done.push(joined.expect("registration task"));
    }
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, c)| c).collect()
}

// Programs and referrals

/// A running program (Nov 2026 to Jan 2027): first payment of at least ¥10 within 30 days, 7 holding days,
/// at most 50 referrals per referrer, a ¥10,000 budget, no referee reward.
pub(crate) fn program(id: &str, tiers: Value) -> Value {
    json!({
        "id": id,
        "title": format!("Bring a friend ({id})"),
        "qualifying": {"event": "first_payment", "min_amount_fen": 1000, "within_days": 30},
        "holding_days": 7,
        "tiers": tiers,
        "max_rewarded_per_referrer": 50,
        "budget_fen": 1_000_000,
        "schedule": {"starts_at": "2026-11-01T00:00:00+08:00", "ends_at": "2027-01-31T00:00:00+08:00"}
    })
}

/// The README's ladder: 1 → ¥5 each; 3 → ¥8 each and a ¥10 bonus; 5 → 300 points each and a coupon bonus.
fn readme_ladder() -> Value {
    json!([
        {"min_qualified": 1, "reward_per_referral": {"kind": "cash_fen", "amount": 500}},
        {"min_qualified": 3, "reward_per_referral": {"kind": "cash_fen", "amount": 800},
         "tier_bonus": {"kind": "cash_fen", "amount": 1000}},
        {"min_qualified": 5, "reward_per_referral": {"kind": "points", "amount": 300},
         "tier_bonus": {"kind": "coupon_campaign", "campaign_id": "thanks_coupon"}}
    ])
}

pub(crate) fn cash_tier(min_qualified: i64, amount: i64, bonus: Option<i64>) -> Value {
    let mut t = json!({"min_qualified": min_qualified, "reward_per_referral": {"kind": "cash_fen", "amount": amount}});
    if let Some(b) = bonus {
        t["tier_bonus"] = json!({"kind": "cash_fen", "amount": b});
    }
    t
}

pub(crate) async fn create_program(app: &TestApp, body: &Value) -> Value {
    let r = app.send("POST", PROGRAMS, Some(body), Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, &r.body["id"]), (201, &body["id"]), "{body}: {:?}", r.body);
    r.body
}

async fn code_reply(app: &TestApp, c: &Cust, program_id: &str) -> Reply {
    let body = json!({ "program_id": program_id });
    retry(|| app.send("POST", "/api/referrals/codes", Some(&body), Some(&c.token))).await
}

/// The customer's code in a program (get or create).
async fn code_for(app: &TestApp, c: &Cust, program_id: &str) -> String {
    let r = code_reply(app, c, program_id).await;
    assert!(matches!(r.status, 200 | 201), "{:?}", r.body);
    str_of(&r.body, "code")
}

async fn attach(app: &TestApp, c: &Cust, code: &str) -> Reply {
    let body = json!({ "code": code });
    retry(|| app.send("POST", "/api/referrals/attach", Some(&body), Some(&c.token))).await
}

/// `GET /api/referrals/me` (which settles what is due).
async fn me(app: &TestApp, c: &Cust, program_id: &str) -> Value {
    let path = format!("/api/referrals/me?program_id={program_id}");
    let r = retry(|| app.send("GET", &path, None, Some(&c.token))).await;
    assert_eq!((r.status, r.body["program_id"].as_str()), (200, Some(program_id)), "{:?}", r.body);
    r.body
}

async fn stats(app: &TestApp, program_id: &str) -> Value {
    let path = format!("{PROGRAMS}/{program_id}/stats");
    let r = retry(|| app.send("GET", &path, None, Some(OPERATOR_TOKEN))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

async fn leaderboard(app: &TestApp, program_id: &str, query: &str) -> Reply {
    let path = format!("{PROGRAMS}/{program_id}/leaderboard{query}");
    retry(|| app.send("GET", &path, None, Some(OPERATOR_TOKEN))).await
}

/// `(referrer_id, qualified, tier)` of each leaderboard row.
fn board(r: &Reply) -> Vec<(String, i64, i64)> {
    assert_eq!(r.status, 200, "{:?}", r.body);
    let items = r.body["items"].as_array().unwrap_or_else(|| panic!("no items in {:?}", r.body));
    items.iter().map(|i| (str_of(i, "referrer_id"), int_of(i, "qualified"), int_of(i, "tier"))).collect()
}

fn referrals(me: &Value) -> Vec<Value> {
    me["referrals"].as_array().unwrap_or_else(|| panic!("no referrals in {me}")).clone()
}

fn with_status(me: &Value, status: &str) -> Vec<Value> {
    referrals(me).into_iter().filter(|r| r["status"] == status).collect()
}

/// The referral whose qualifying payment was at `t`.
#[track_caller]
fn qualified_at(me: &Value, t: Timestamp) -> Value {
    let found: Vec<Value> = referrals(me).into_iter().filter(|r| time_of(r, "qualified_at") == Some(t)).collect();
    assert_eq!(found.len(), 1, "one referral qualified at {}: {me}", t.to_rfc3339());
    found.into_iter().next().unwrap_or_default()
}

/// `(kind, amount)` of a rewarded referral's reward.
fn reward_of(r: &Value) -> (String, i64) {
    (str_of(&r["reward"], "kind"), int_of(&r["reward"], "amount"))
}

fn cash(me: &Value) -> i64 {
    int_of(&me["rewards"], "cash_fen")
}

fn points(me: &Value) -> i64 {
    int_of(&me["rewards"], "points")
}

/// The number of a tier given as a number or as a tier object (`{tier, min_qualified, ...}`).
fn tier_number(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v["tier"].as_i64())
}

/// The referrer's qualified count and current tier.
#[track_caller]
fn standing(me: &Value, qualified: i64, tier: i64) {
    assert_eq!(
        (me["qualified_count"].as_i64(), tier_number(&me["current_tier"])),
        (Some(qualified), Some(tier)),
        "{me}"
    );
}

/// The next tier and its message ("2 more to reach tier 3").
#[track_caller]
fn next_tier(me: &Value, tier: i64, min_qualified: i64, remaining: i64) {
    let n = &me["next_tier"];
    assert_eq!(
        (n["tier"].as_i64(), n["min_qualified"].as_i64(), n["remaining"].as_i64()),
        (Some(tier), Some(min_qualified), Some(remaining)),
        "{me}"
    );
    assert_eq!(n["message"], format!("{remaining} more to reach tier {tier}"), "{me}");
}

/// At the top of the ladder there is no next tier.
#[track_caller]
fn top_tier(me: &Value) {
    assert!(me["next_tier"].is_null(), "{me}");
}

/// The stats' rejections by reason, without zero counts.
fn rejections(stats: &Value) -> BTreeMap<String, i64> {
    let map = stats["rejections"].as_object().unwrap_or_else(|| panic!("no rejections in {stats}"));
    map.iter().filter_map(|(k, v)| v.as_i64().filter(|n| *n != 0).map(|n| (k.clone(), n))).collect()
}

fn reasons(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Asserts the store holds exactly what it held `before` (partners' nonces and idempotency records aside), naming
/// the keys that differ.
async fn assert_unchanged(app: &TestApp, before: &BTreeMap<String, Vec<u8>>, what: &str) {
    let after = app.snapshot().await;
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(changed.is_empty(), "{what} wrote {changed:?}");
}

// Money

/// The ledger check over every day since the programs started, asserted balanced.
async fn ledger(app: &TestApp) -> Value {
    let path = format!("/api/ops/ledger/check?from=2026-11-01&to={}", &app.now.to_rfc3339()[..10]);
    let r = app.send("GET", &path, None, Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, r.body["balanced"].as_bool()), (200, Some(true)), "{:?}", r.body);
    r.body
}

/// A customer's reward account (credits are negative).
fn rewards_account(report: &Value, customer_id: &str) -> i64 {
    ledger_account(report, &format!("ref:rewards:{customer_id}"))
}

/// How many ledger postings have an id starting with `prefix` (not counting the `{key}:~born` creation counters
/// beside them).
async fn postings(app: &TestApp, prefix: &str) -> usize {
    let wanted = format!("ledger:posting:{prefix}");
    app.snapshot().await.keys().filter(|k| k.starts_with(&wanted) && !k.ends_with(":~born")).count()
}

// Utility payments

async fn open_biller(app: &TestApp) {
    let body = json!({
        "id": BILLER, "name": "Referral Power", "category": "power", "city": "shenzhen",
        "account_rule": {"min_len": 6, "max_len": 12, "charset": "digits"},
        "exactness": "adhoc", "settlement_account": "6222000055556666"
    });
    let r = app.send("POST", "/api/utility/billers", Some(&body), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

/// Quotes and places a utility order of `amount_fen` (no discount); `(order id, total)`.
async fn place(app: &TestApp, c: &Cust, account_no: &str, amount_fen: i64, key: &str) -> (String, i64) {
    let quote = json!({"biller_id": BILLER, "account_no": account_no, "amount_fen": amount_fen, "pay_with": "other"});
    let q = retry(|| app.send("POST", "/api/utility/quotes", Some(&quote), Some(&c.token))).await;
    assert_eq!((q.status, q.body["total_fen"].as_i64()), (201, Some(amount_fen)), "{:?}", q.body);
    let quote_id = str_of(&q.body, "quote_id");
    let placed = retry(|| app.place_order("/api/utility/orders", &c.token, &quote_id, key)).await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    (str_of(&placed.body["order"], "order_id"), int_of(&placed.body["order"], "total_fen"))
}

/// The gateway's success notification for an order, paid now.
async fn notify_paid(app: &TestApp, order_id: &str, total: i64, event_id: &str) {
    let event = json!({"event_id": event_id, "order_id": order_id, "status": "succeeded", "paid_fen": total,
                       "paid_at": app.now.to_rfc3339(), "instrument": {"type": "wallet"}});
    let r = retry(|| app.notify("/api/utility/payments/notify", &event)).await;
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("paid")), "{:?}", r.body);
}

/// A utility bill of `amount_fen` paid by `c` now; the order id.
async fn pay(app: &TestApp, c: &Cust, account_no: &str, amount_fen: i64, key: &str) -> String {
    let (order_id, total) = place(app, c, account_no, amount_fen, key).await;
    notify_paid(app, &order_id, total, &format!("evt_{key}")).await;
    order_id
}

/// The operator refunds a utility order now.
async fn refund(app: &TestApp, order_id: &str, key: &str) {
    let path = format!("/api/utility/orders/{order_id}/refund");
    let headers = vec![
        ("authorization".to_owned(), format!("Bearer {OPERATOR_TOKEN}")),
        ("idempotency-key".to_owned(), key.into()),
    ];
    let r = app.send_raw("POST", &path, Vec::new(), &headers).await;
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("refunded")), "{:?}", r.body);
}

/// A merchant-coupons `referral_reward` campaign the README ladder's top tier gives as its bonus.
async fn thanks_coupon_campaign(app: &TestApp) {
    let merchant = json!({"merchant_id": "thanks_cafe", "name": "Thanks Cafe", "district": "futian",
                          "stores": [{"store_id": "t1", "name": "Main"}]});
    let r = app.send("POST", "/api/coupons/merchants", Some(&merchant), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let campaign = json!({
        "id": "thanks_coupon", "title": "¥10 off, thanks for the friends", "kind": "referral_reward",
        "merchant_ids": ["thanks_cafe"], "coupon": {"type": "fixed_off", "amount_fen": 1000, "min_spend_fen": 3000},
        "validity": {"days_after_claim": 30},
        "schedule": {"starts_at": "2026-11-01T00:00:00+08:00", "ends_at": "2027-01-31T00:00:00+08:00"},
        "stock_total": 100, "budget_fen": 100_000, "applies_to": ["merchant"]
    });
    let r = app.send("POST", "/api/coupons/campaigns", Some(&campaign), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

// ---------------------------------------------------------------------------------------------------------------
// The ladder

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referrer_climbs_the_ladder_with_rising_rewards_and_each_tier_bonus_once() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    open_biller(&app).await;
    thanks_coupon_campaign(&app).await;
    let body =
        with(program("spring_friends", readme_ladder()), json!({"referee_reward": {"kind": "points", "amount": 100}}));
    create_program(&app, &body).await;
    let public = app.send("GET", "/api/referrals/programs/spring_friends", None, None).await;
    assert_eq!((public.status, &public.body["tiers"]), (200, &readme_ladder()), "{:?}", public.body);
    assert_eq!(public.body["holding_days"], 7);
    assert!(public.body.get("budget_fen").is_none(), "the budget is the operator's business: {:?}", public.body);

    // One code per referrer and program: created the first time, the same code after.
    let alice = register(&app, "wx_ladder_alice", None).await;
    let first = code_reply(&app, &alice, "spring_friends").await;
    assert_eq!((first.status, first.body["program_id"].as_str()), (201, Some("spring_friends")), "{:?}", first.body);
    let code = str_of(&first.body, "code");
    assert!(str_of(&first.body, "share_path").contains(&code), "{:?}", first.body);
    let again = code_reply(&app, &alice, "spring_friends").await;
    assert_eq!((again.status, again.body["code"].as_str()), (200, Some(code.as_str())), "{:?}", again.body);

    // Six friends register with it: six pending referrals, the first tier one qualified referral away.
    let mut friends = Vec::new();
    for i in 1..=6 {
        friends.push(register(&app, &format!("wx_ladder_friend_{i}"), Some(&code)).await);
    }
    let view = me(&app, &alice, "spring_friends").await;
    assert_eq!(view["code"], code.as_str());
    assert_eq!((referrals(&view).len(), with_status(&view, "pending").len()), (6, 6), "{view}");
    assert_eq!(view["qualified_count"], 0, "{view}");
    next_tier(&view, 1, 1, 1);
    assert_eq!(cash(&view), 0);

    // The sixth friend's first payment is below the program's minimum: still pending.
    pay(&app, &friends[5], "30000006", 999, "ladder-small").await;
    assert_eq!(me(&app, &alice, "spring_friends").await["qualified_count"], 0);

    // The first five pay an hour apart. Bonuses are paid as soon as their tier is reached (during the holding
    // period): ¥10 at 3 qualified, a coupon at 5.
    let mut paid_at = Vec::new();
    for (i, friend) in friends[..5].iter().enumerate() {
        app.now = t0.plus_secs(3600 * (i as i64 + 1));
        pay(&app, friend, &format!("3000000{}", i + 1), 1500, &format!("ladder-{i}")).await;
        paid_at.push(app.now);
        let view = me(&app, &alice, "spring_friends").await;
        let mine = qualified_at(&view, app.now);
        assert_eq!(mine["status"], "qualified", "{view}");
        assert_eq!(time_of(&mine, "rewardable_at"), Some(app.now.plus_days(7)), "{view}");
        assert!(mine["rewarded_at"].is_null(), "{view}");
        assert_eq!(with_status(&view, "rewarded").len(), 0, "held for 7 days: {view}");
        match i + 1 {
            1 => {
                standing(&view, 1, 1);
                next_tier(&view, 2, 3, 2);
            }
            2 => {
                standing(&view, 2, 1);
                next_tier(&view, 2, 3, 1);
            }
            3 => {
                standing(&view, 3, 2);
                next_tier(&view, 3, 5, 2);
            }
            4 => {
                standing(&view, 4, 2);
                next_tier(&view, 3, 5, 1);
            }
            _ => {
                standing(&view, 5, 3);
                top_tier(&view);
            }
        }
        let bonus = if i + 1 >= 3 { 1000 } else { 0 };
        assert_eq!(cash(&view), bonus, "{view}");
        assert_eq!(count_of(&view["rewards"]["bonuses"]), Some(i64::from(i + 1 >= 3) + i64::from(i + 1 >= 5)));
        assert_eq!(rewards_account(&ledger(&app).await, &alice.id), -bonus);
    }
    let view = me(&app, &alice, "spring_friends").await;
    assert_eq!(count_of(&view["rewards"]["coupons"]), Some(1), "{view}");
    assert_eq!(with_status(&view, "pending").len(), 1, "the small payer: {view}");

    // Reading again, and the operator's reads, pay no bonus twice.
    me(&app, &alice, "spring_friends").await;
    stats(&app, "spring_friends").await;
    board(&leaderboard(&app, "spring_friends", "").await);
    let view = me(&app, &alice, "spring_friends").await;
    assert_eq!((cash(&view), count_of(&view["rewards"]["bonuses"])), (1000, Some(2)), "{view}");
    assert_eq!(postings(&app, &format!("bonus:spring_friends:{}:", alice.id)).await, 1, "one cash bonus");
    let wallet = app.send("GET", "/api/coupons/wallet", None, Some(&alice.token)).await;
    let coupons: Vec<&Value> = wallet.body["items"]
        .as_array()
        .expect("wallet")
        .iter()
        .filter(|c| c["campaign_id"] == "thanks_coupon")
        .collect();
    assert_eq!(coupons.len(), 1, "{:?}", wallet.body);
    let campaign = app.send("GET", "/api/coupons/campaigns/thanks_coupon/stats", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(campaign.body["issued"], 1, "{:?}", campaign.body);

    // Nothing is rewarded a second before the first holding period ends.
    app.now = paid_at[0].plus_days(7).plus_secs(-1);
    let alice = relogin(&app, &alice).await;
    assert_eq!(with_status(&me(&app, &alice, "spring_friends").await, "rewarded").len(), 0);

    // Then each referral is rewarded as its holding period ends, at the tier of its rank: the 1st and 2nd ¥5,
    // the 3rd and 4th ¥8, the 5th 300 points.
    let expected = [("cash_fen", 500), ("cash_fen", 500), ("cash_fen", 800), ("cash_fen", 800), ("points", 300)];
    let (mut cash_total, mut points_total) = (1000, 0);
    for (i, (kind, amount)) in expected.iter().enumerate() {
        app.now = paid_at[i].plus_days(7).plus_secs(30 * 60);
        let alice = relogin(&app, &alice).await;
        let view = me(&app, &alice, "spring_friends").await;
        let rewarded = qualified_at(&view, paid_at[i]);
        assert_eq!(rewarded["status"], "rewarded", "{view}");
        assert_eq!(reward_of(&rewarded), ((*kind).to_owned(), *amount), "{view}");
        assert!(time_of(&rewarded, "rewarded_at").is_some(), "{view}");
        assert_eq!(with_status(&view, "rewarded").len(), i + 1, "{view}");
        if *kind == "cash_fen" {
            cash_total += amount;
        } else {
            points_total += amount;
        }
        assert_eq!((cash(&view), points(&view)), (cash_total, points_total), "{view}");
        standing(&view, 5, 3);
    }
    assert_eq!((cash_total, points_total), (500 + 500 + 800 + 800 + 1000, 300));

    // The books: the referrer's reward account holds every cash reward and the cash bonus, once.
    let report = ledger(&app).await;
    assert_eq!(rewards_account(&report, &alice.id), -3600);
    assert_eq!(ledger_account(&report, MARKETING), 3600);
    assert_eq!(postings(&app, "rw:spring_friends:").await, 4, "four cash rewards (the fifth is points)");
    assert_eq!(postings(&app, "rr:spring_friends:").await, 0, "the referees' rewards are points");
    for f in &friends {
        assert_eq!(rewards_account(&report, &f.id), 0);
    }

    // The operator's view.
    let s = stats(&app, "spring_friends").await;
    let counts = ["referrals", "qualified", "clawed_back", "rewarded"].map(|f| int_of(&s, f));
    assert_eq!(counts, [6, 5, 0, 5], "{s}");
    assert_eq!(int_of(&s, "qualification_rate_bp"), 5 * 10_000 / 6, "{s}");
    assert_eq!((int_of(&s, "rewards_paid_fen"), int_of(&s, "points_awarded")), (3600, 300 + 5 * 100), "{s}");
    assert_eq!(int_of(&s, "coupons_issued"), 1, "{s}");
    assert_eq!((int_of(&s["budget"], "total_fen"), int_of(&s["budget"], "available_fen")), (1_000_000, 996_400));
    assert!(rejections(&s).is_empty(), "{s}");
    assert_eq!(board(&leaderboard(&app, "spring_friends", "").await), vec![(alice.id.clone(), 5, 3)]);
    let profile = app.send("GET", &format!("/api/ops/customers/{}", alice.id), None, Some(OPERATOR_TOKEN)).await;
    assert!(profile.body["tags"].as_array().expect("tags").iter().any(|t| t == "referrer"), "{:?}", profile.body);
    app.host.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Holding period and clawback

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_inside_the_holding_period_claws_back_the_referral_and_the_bonus_that_no_longer_holds() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    open_biller(&app).await;
    let tiers = json!([cash_tier(1, 500, None), cash_tier(2, 700, Some(1000))]);
    let body = with(program("autumn_friends", tiers), json!({"referee_reward": {"kind": "cash_fen", "amount": 100}}));
    create_program(&app, &body).await;
    let alice = register(&app, "wx_hold_alice", None).await;
    let code = code_for(&app, &alice, "autumn_friends").await;
    let mut friends = Vec::new();
    for i in 1..=4 {
        friends.push(register(&app, &format!("wx_hold_friend_{i}"), Some(&code)).await);
    }

    // Two friends pay: tier 2 and its ¥10 bonus at once.
    app.now = t0.plus_secs(60);
    let order1 = pay(&app, &friends[0], "40000001", 2000, "hold-1").await;
    let paid1 = app.now;
    app.now = t0.plus_secs(120);
    let order2 = pay(&app, &friends[1], "40000002", 2000, "hold-2").await;
    let paid2 = app.now;
    let view = me(&app, &alice, "autumn_friends").await;
    standing(&view, 2, 2);
    top_tier(&view);
    assert_eq!(cash(&view), 1000, "{view}");
    assert_eq!(rewards_account(&ledger(&app).await, &alice.id), -1000);

    // Day 3: the second friend's bill is refunded, inside its holding period: that referral is clawed back, the
    // count falls to 1, and the tier-2 bonus is reversed.
    app.now = t0.plus_days(3);
    refund(&app, &order2, "refund-hold-2").await;
    let alice = relogin(&app, &alice).await;
    let view = me(&app, &alice, "autumn_friends").await;
    assert_eq!(qualified_at(&view, paid2)["status"], "clawed_back", "{view}");
    assert_eq!(qualified_at(&view, paid1)["status"], "qualified", "{view}");
    standing(&view, 1, 1);
    next_tier(&view, 2, 2, 1);
    assert_eq!(cash(&view), 0, "{view}");
    let report = ledger(&app).await;
    assert_eq!((rewards_account(&report, &alice.id), ledger_account(&report, MARKETING)), (0, 0));
    assert_eq!(postings(&app, &format!("claw:autumn_friends:{}:", alice.id)).await, 1);
    // Paying again does not bring a clawed-back referral back.
    let second = relogin(&app, &friends[1]).await;
    pay(&app, &second, "40000012", 2000, "hold-2-again").await;
    standing(&me(&app, &alice, "autumn_friends").await, 1, 1);

    // Day 4: a third friend pays: tier 2 again, its bonus paid again.
    app.now = t0.plus_days(4);
    let third = relogin(&app, &friends[2]).await;
    pay(&app, &third, "40000003", 2000, "hold-3").await;
    let paid3 = app.now;
    let alice = relogin(&app, &alice).await;
    let view = me(&app, &alice, "autumn_friends").await;
    standing(&view, 2, 2);
    assert_eq!(cash(&view), 1000, "{view}");
    assert_eq!(postings(&app, &format!("bonus:autumn_friends:{}:", alice.id)).await, 2, "paid, clawed, paid again");
    assert_eq!(postings(&app, &format!("claw:autumn_friends:{}:", alice.id)).await, 1);

    // One second before the first friend's holding period ends: nothing rewarded yet.
    app.now = paid1.plus_days(7).plus_secs(-1);
    let alice = relogin(&app, &alice).await;
    let view = me(&app, &alice, "autumn_friends").await;
    assert_eq!((with_status(&view, "rewarded").len(), cash(&view)), (0, 1000), "{view}");

    // Day 7 + 1 h: the first friend's referral is rewarded as the 1st (¥5), with the friend's own ¥1.
    app.now = t0.plus_days(7).plus_secs(3600);
    let alice = relogin(&app, &alice).await;
    let view = me(&app, &alice, "autumn_friends").await;
    let first = qualified_at(&view, paid1);
    assert_eq!((first["status"].as_str(), reward_of(&first)), (Some("rewarded"), ("cash_fen".to_owned(), 500)));
    let third_referral = qualified_at(&view, paid3);
    assert_eq!(third_referral["status"], "qualified", "{view}");
    assert_eq!(time_of(&third_referral, "rewardable_at"), Some(paid3.plus_days(7)));
    assert_eq!(cash(&view), 1500, "{view}");
    assert_eq!(rewards_account(&ledger(&app).await, &friends[0].id), -100);

    // Day 8: the first friend's bill is refunded after its holding period: the reward stays.
    app.now = t0.plus_days(8);
    refund(&app, &order1, "refund-hold-1").await;
    let alice = relogin(&app, &alice).await;
    let view = me(&app, &alice, "autumn_friends").await;
    assert_eq!(qualified_at(&view, paid1)["status"], "rewarded", "{view}");
    standing(&view, 2, 2);
    assert_eq!(cash(&view), 1500, "{view}");
    assert_eq!(postings(&app, &format!("claw:autumn_friends:{}:", alice.id)).await, 1, "no new clawback");

    // Day 11 + 1 h: the third friend's referral is rewarded as the 2nd, at tier 2 (¥7).
    app.now = t0.plus_days(11).plus_secs(3600);
    let alice = relogin(&app, &alice).await;
    let view = me(&app, &alice, "autumn_friends").await;
    assert_eq!(reward_of(&qualified_at(&view, paid3)), ("cash_fen".to_owned(), 700), "{view}");
    assert_eq!(with_status(&view, "rewarded").len(), 2, "{view}");
    assert_eq!(cash(&view), 500 + 700 + 1000, "{view}");
    let report = ledger(&app).await;
    assert_eq!(rewards_account(&report, &alice.id), -2200);
    let referee_accounts: Vec<i64> = friends.iter().map(|f| rewards_account(&report, &f.id)).collect();
    assert_eq!(referee_accounts, [-100, 0, -100, 0], "the clawed-back and the pending friend get nothing");
    assert_eq!(ledger_account(&report, MARKETING), 2200 + 200);
    assert_eq!(postings(&app, "rw:autumn_friends:").await, 2);
    assert_eq!(postings(&app, "rr:autumn_friends:").await, 2);
    let s = stats(&app, "autumn_friends").await;
    assert_eq!((int_of(&s, "clawed_back"), int_of(&s, "rewarded")), (1, 2), "{s}");
    assert_eq!(int_of(&s, "rewards_paid_fen"), 2400, "{s}");
    assert_eq!(int_of(&s["budget"], "available_fen"), 1_000_000 - 2400, "{s}");

    // Day 31: the fourth friend's first payment comes after `within_days` (30): the referral stays pending.
    app.now = t0.plus_days(31);
    let fourth = relogin(&app, &friends[3]).await;
    pay(&app, &fourth, "40000004", 2000, "hold-4").await;
    let alice = relogin(&app, &alice).await;
    let view = me(&app, &alice, "autumn_friends").await;
    assert_eq!(with_status(&view, "pending").len(), 1, "{view}");
    standing(&view, 2, 2);
    ledger(&app).await;
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_gross_clawed_back_and_net_qualified_referrals_alike_everywhere() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    open_biller(&app).await;
    create_program(&app, &program("net_friends", json!([cash_tier(1, 500, None)]))).await;
    let alice = register(&app, "wx_net_alice", None).await;
    let code = code_for(&app, &alice, "net_friends").await;
    let mut friends = Vec::new();
    for i in 1..=3 {
        friends.push(register(&app, &format!("wx_net_friend_{i}"), Some(&code)).await);
    }
    // Two of three friends qualify; one of those is refunded inside the holding period and clawed back.
    app.now = t0.plus_secs(60);
    pay(&app, &friends[0], "50000001", 2000, "net-1").await;
    app.now = t0.plus_secs(120);
    let order2 = pay(&app, &friends[1], "50000002", 2000, "net-2").await;
    app.now = t0.plus_days(2);
    refund(&app, &order2, "refund-net-2").await;

    let s = stats(&app, "net_friends").await;
    let counts = ["referrals", "qualified_gross", "clawed_back", "qualified_net", "qualified"].map(|f| int_of(&s, f));
    assert_eq!(counts, [3, 2, 1, 1, 1], "{s}");
    assert_eq!(int_of(&s, "qualification_rate_bp"), 10_000 / 3, "net qualified per attached: {s}");
    // The referrer's page, the leaderboard and the operators' campaign review count the same net figure.
    let alice = relogin(&app, &alice).await;
    standing(&me(&app, &alice, "net_friends").await, 1, 1);
    assert_eq!(board(&leaderboard(&app, "net_friends", "").await), vec![(alice.id.clone(), 1, 1)]);
    let review = app.send("GET", "/api/ops/campaigns", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(review.status, 200, "{:?}", review.body);
    let listed = review.body["referral_programs"].as_array().expect("referral_programs");
    let p = listed.iter().find(|p| p["program_id"] == "net_friends").expect("net_friends reviewed");
    let counts = ["referrals", "qualified_gross", "clawed_back", "qualified_net", "qualified"].map(|f| int_of(p, f));
    assert_eq!(counts, [3, 2, 1, 1, 1], "{p}");
    app.host.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Rejections

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_reason_is_recorded_and_counted() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    open_biller(&app).await;
    let tiers = json!([cash_tier(1, 500, None)]);
    create_program(&app, &with(program("friends", tiers.clone()), json!({"max_rewarded_per_referrer": 2}))).await;
    // A flash program that ends tonight.
    let flash = with(
        program("flash", tiers),
        json!({"schedule": {"starts_at": "2026-11-01T00:00:00+08:00", "ends_at": "2026-11-24T00:00:00+08:00"}}),
    );
    create_program(&app, &flash).await;

    // referrer_over_cap: a referrer may have two referrals attached.
    let kim = register(&app, "wx_rej_kim", None).await;
    let kim_code = code_for(&app, &kim, "friends").await;
    let mut kims = Vec::new();
    for i in 1..=3 {
        kims.push(register(&app, &format!("wx_rej_kim_friend_{i}"), Some(&kim_code)).await);
    }
    let view = me(&app, &kim, "friends").await;
    assert_eq!(with_status(&view, "pending").len(), 2, "{view}");
    let over = with_status(&view, "rejected");
    assert_eq!((over.len(), over[0]["reason"].as_str()), (1, Some("referrer_over_cap")), "{view}");
    // A rejected referee's payment qualifies nothing.
    pay(&app, &kims[2], "60000003", 1500, "rej-over-cap").await;
    assert_eq!(me(&app, &kim, "friends").await["qualified_count"], 0);

    // self_referral.
    let sam = register(&app, "wx_rej_sam", None).await;
    let sam_code = code_for(&app, &sam, "friends").await;
    refused(&attach(&app, &sam, &sam_code).await, 422, "self_referral");
    let view = me(&app, &sam, "friends").await;
    let own = with_status(&view, "rejected");
    assert_eq!((own.len(), own[0]["reason"].as_str()), (1, Some("self_referral")), "recorded: {view}");

    // referral_loop: A→B→A.
    let a2 = register(&app, "wx_rej_loop_a2", None).await;
    let a2_code = code_for(&app, &a2, "friends").await;
    let b2 = register(&app, "wx_rej_loop_b2", Some(&a2_code)).await;
    let b2_code = code_for(&app, &b2, "friends").await;
    refused(&attach(&app, &a2, &b2_code).await, 422, "referral_loop");
    assert_eq!(with_status(&me(&app, &a2, "friends").await, "pending").len(), 1, "A→B stands");
    let view = me(&app, &b2, "friends").await;
    assert_eq!(with_status(&view, "rejected")[0]["reason"], "referral_loop", "{view}");

    // referral_loop: A→B→C→A.
    let a3 = register(&app, "wx_rej_loop_a3", None).await;
    let a3_code = code_for(&app, &a3, "friends").await;
    let b3 = register(&app, "wx_rej_loop_b3", Some(&a3_code)).await;
    let b3_code = code_for(&app, &b3, "friends").await;
    let c3 = register(&app, "wx_rej_loop_c3", Some(&b3_code)).await;
    let c3_code = code_for(&app, &c3, "friends").await;
    refused(&attach(&app, &a3, &c3_code).await, 422, "referral_loop");

    // shared_identity, same phone: Quinn registered without a phone, then verified Pat's.
    let pat = register_as(&app, "wx_rej_pat", Some("13800138000"), None, None).await;
    let pat_code = code_for(&app, &pat, "friends").await;
    let quinn = register(&app, "wx_rej_quinn", None).await;
    let again = session(&app, "wx_rej_quinn", Some("13800138000"), None, None).await;
    assert_eq!((again.status, again.body["customer_id"].as_str()), (200, Some(quinn.id.as_str())), "{:?}", again.body);
    refused(&attach(&app, &quinn, &pat_code).await, 422, "shared_identity");

    // shared_identity, same card: rejected at registration (the login itself succeeds).
    let pia = register_as(&app, "wx_rej_pia", None, Some("fp_shared_card_1"), None).await;
    let pia_code = code_for(&app, &pia, "friends").await;
    register_as(&app, "wx_rej_quincy", None, Some("fp_shared_card_1"), Some(&pia_code)).await;
    let view = me(&app, &pia, "friends").await;
    let shared = referrals(&view);
    assert_eq!((shared.len(), shared[0]["status"].as_str()), (1, Some("rejected")), "{view}");
    assert_eq!(shared[0]["reason"], "shared_identity", "{view}");

    // existing_customer: attaching after a first payment.
    let gil = register(&app, "wx_rej_gil", None).await;
    let gil_code = code_for(&app, &gil, "friends").await;
    let fay = register(&app, "wx_rej_fay", None).await;
    pay(&app, &fay, "60000010", 1500, "rej-fay").await;
    refused(&attach(&app, &fay, &gil_code).await, 422, "existing_customer");

    // Refusals that record nothing: an unknown code, a referee who was already referred.
    let eve = register(&app, "wx_rej_eve", None).await;
    let wes = register(&app, "wx_rej_wes", None).await;
    let flo = register(&app, "wx_rej_flo", None).await;
    let flo_code = code_for(&app, &flo, "flash").await;
    let before = app.snapshot().await;
    refused(&attach(&app, &eve, "ZZZZ2345").await, 404, "referral_code_not_found");
    refused(&attach(&app, &kims[0], &sam_code).await, 409, "already_referred");
    assert_unchanged(&app, &before, "refusals before attribution").await;

    // Day 6: still within 7 days of registering, a code can be attached.
    app.now = t0.plus_days(6);
    let wes = relogin(&app, &wes).await;
    let attached = attach(&app, &wes, &gil_code).await;
    assert_eq!((attached.status, attached.body["status"].as_str()), (201, Some("pending")), "{:?}", attached.body);

    // Day 8: too late to attach (existing_customer); the flash program has ended (program_not_running), for a
    // registration with its code and for an attachment.
    app.now = t0.plus_days(8);
    let eve = relogin(&app, &eve).await;
    refused(&attach(&app, &eve, &gil_code).await, 422, "existing_customer");
    register(&app, "wx_rej_late_uma", Some(&flo_code)).await;
    let vic = register(&app, "wx_rej_late_vic", None).await;
    refused(&attach(&app, &vic, &flo_code).await, 422, "program_not_running");
    let flo = relogin(&app, &flo).await;
    let view = me(&app, &flo, "flash").await;
    let late: Vec<Value> = with_status(&view, "rejected");
    assert_eq!(late.len(), 2, "{view}");
    assert!(late.iter().all(|r| r["reason"] == "program_not_running"), "{view}");
    let gil = relogin(&app, &gil).await;
    let view = me(&app, &gil, "friends").await;
    assert_eq!(with_status(&view, "pending").len(), 1, "{view}");
    let gil_rejected = with_status(&view, "rejected");
    assert_eq!(gil_rejected.len(), 2, "{view}");
    assert!(gil_rejected.iter().all(|r| r["reason"] == "existing_customer"), "{view}");

    // The operator sees every rejection by reason; accepted referrals: Kim's 2, B2, B3, C3 and Wes.
    let s = stats(&app, "friends").await;
    let expected = reasons(&[
        ("existing_customer", 2),
        ("referral_loop", 2),
        ("referrer_over_cap", 1),
        ("self_referral", 1),
        ("shared_identity", 2),
    ]);
    assert_eq!(rejections(&s), expected, "{s}");
    assert_eq!((int_of(&s, "referrals"), int_of(&s, "qualified")), (6, 0), "{s}");
    let s = stats(&app, "flash").await;
    assert_eq!(rejections(&s), reasons(&[("program_not_running", 2)]), "{s}");
    assert_eq!(int_of(&s, "referrals"), 0, "{s}");
    let report = ledger(&app).await;
    assert_eq!(ledger_account(&report, MARKETING), 0, "nothing rewarded");
    app.host.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Budget

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_stops_cash_rewards_cleanly_with_nothing_partial() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    open_biller(&app).await;
    // ¥5 per referral, no holding period, a ¥12 budget: two rewards fit, the third does not (¥2 is left).
    let body =
        with(program("thin_friends", json!([cash_tier(1, 500, None)])), json!({"holding_days": 0, "budget_fen": 1200}));
    create_program(&app, &body).await;
    let alice = register(&app, "wx_thin_alice", None).await;
    let code = code_for(&app, &alice, "thin_friends").await;
    let mut friends = Vec::new();
    for i in 1..=4 {
        friends.push(register(&app, &format!("wx_thin_friend_{i}"), Some(&code)).await);
    }
    for (i, friend) in friends.iter().enumerate() {
        let minute = 60 * (i as i64 + 1);
        app.now = t0.plus_secs(minute);
        pay(&app, friend, &format!("7000000{i}"), 1500, &format!("thin-{i}")).await;
        let paid = app.now;
        app.now = t0.plus_secs(minute + 30);
        let view = me(&app, &alice, "thin_friends").await;
        let mine = qualified_at(&view, paid);
        if i < 2 {
            assert_eq!((mine["status"].as_str(), reward_of(&mine)), (Some("rewarded"), ("cash_fen".to_owned(), 500)));
        } else {
            assert_eq!(mine["status"], "qualified", "{view}");
            assert_eq!(mine["reward"]["outcome"], "budget_exhausted", "{view}");
            assert!(mine["rewarded_at"].is_null(), "{view}");
        }
        assert_eq!(with_status(&view, "rewarded").len(), (i + 1).min(2), "{view}");
        assert_eq!(cash(&view), 500 * (i as i64 + 1).min(2), "{view}");
    }
    // Reading again changes nothing.
    let view = me(&app, &alice, "thin_friends").await;
    assert_eq!((with_status(&view, "qualified").len(), cash(&view)), (2, 1000), "{view}");
    standing(&view, 4, 1);
    let report = ledger(&app).await;
    assert_eq!((rewards_account(&report, &alice.id), ledger_account(&report, MARKETING)), (-1000, 1000));
    assert_eq!(postings(&app, "rw:thin_friends:").await, 2, "no partial reward");
    let s = stats(&app, "thin_friends").await;
    assert_eq!((int_of(&s, "qualified"), int_of(&s, "rewarded"), int_of(&s, "rewards_paid_fen")), (4, 2, 1000), "{s}");
    assert_eq!((int_of(&s["budget"], "total_fen"), int_of(&s["budget"], "available_fen")), (1200, 200), "{s}");
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_reward_must_name_an_existing_referral_reward_campaign() {
    let app = TestApp::spawn().await.expect("app");
    thanks_coupon_campaign(&app).await;
    let daily = json!({
        "id": "cafe_daily", "title": "¥5 off today", "kind": "daily", "merchant_ids": ["thanks_cafe"],
        "coupon": {"type": "fixed_off", "amount_fen": 500, "min_spend_fen": 2000}, "validity": {"days_after_claim": 7},
        "schedule": {"starts_at": "2026-11-01T00:00:00+08:00", "ends_at": "2027-01-31T00:00:00+08:00"},
        "stock_total": 100, "budget_fen": 50_000
    });
    let r = app.send("POST", "/api/coupons/campaigns", Some(&daily), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let coupon = |campaign: &str| json!({"kind": "coupon_campaign", "campaign_id": campaign});
    let per_referral = |campaign: &str| json!([{"min_qualified": 1, "reward_per_referral": coupon(campaign)}]);
    let bonus = |campaign: &str| {
        json!([{"min_qualified": 1, "reward_per_referral": {"kind": "cash_fen", "amount": 500},
                "tier_bonus": coupon(campaign)}])
    };
    let cash = json!([cash_tier(1, 500, None)]);

    let before = app.snapshot().await;
    let bad = [
        (
            program("p_missing", bonus("no_such_campaign")),
            "coupon_campaign_not_found",
            "tiers[0].tier_bonus.campaign_id",
        ),
        (
            program("p_daily", per_referral("cafe_daily")),
            "coupon_campaign_not_referral_reward",
            "tiers[0].reward_per_referral.campaign_id",
        ),
        (
            with(program("p_referee", cash.clone()), json!({"referee_reward": coupon("cafe_daily")})),
            "coupon_campaign_not_referral_reward",
            "referee_reward.campaign_id",
        ),
        (
            with(program("p_referee2", cash), json!({"referee_reward": coupon("nope")})),
            "coupon_campaign_not_found",
            "referee_reward.campaign_id",
        ),
    ];
    for (body, code, field) in &bad {
        let r = app.send("POST", PROGRAMS, Some(body), Some(OPERATOR_TOKEN)).await;
        refused(&r, 422, code);
        assert_eq!(r.body["field"], *field, "{:?}", r.body);
        let id = str_of(body, "id");
        refused(&app.send("GET", &format!("{PROGRAMS}/{id}"), None, None).await, 404, "program_not_found");
    }
    assert_unchanged(&app, &before, "refused programs").await;
    // A referral_reward campaign is accepted, as a per-referral reward and as a bonus.
    create_program(&app, &program("p_thanks", per_referral("thanks_coupon"))).await;
    create_program(&app, &program("p_thanks_bonus", bonus("thanks_coupon"))).await;
    app.host.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// The API surface

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_routes_codes_leaderboard_masking_and_bad_input_that_writes_nothing() {
    let app = TestApp::spawn().await.expect("app");
    open_biller(&app).await;
    let body = program("summer_friends", json!([cash_tier(1, 300, None), cash_tier(3, 600, None)]));
    let customer = register(&app, "wx_api_customer", None).await;

    // Before the program exists: nothing an unauthorised or malformed request does is written.
    let before = app.snapshot().await;
    refused(&app.send("POST", PROGRAMS, Some(&body), None).await, 401, "missing_credentials");
    refused(&app.send("POST", PROGRAMS, Some(&body), Some(&customer.token)).await, 401, "invalid_operator_token");
    let bad = [
        (json!({"id": "no spaces!"}), "id"),
        (json!({"tiers": []}), "tiers"),
        (json!({"tiers": [cash_tier(3, 300, None), cash_tier(1, 600, None)]}), "tiers"),
        (json!({"tiers": [cash_tier(1, 0, None)]}), "tiers"),
        (json!({"holding_days": -1}), "holding_days"),
        (json!({"budget_fen": -5}), "budget_fen"),
        (json!({"max_rewarded_per_referrer": 0}), "max_rewarded_per_referrer"),
        (json!({"qualifying": {"event": "signup", "min_amount_fen": 0, "within_days": 30}}), "qualifying"),
        (
            json!({"schedule": {"starts_at": "2026-12-01T00:00:00+08:00", "ends_at": "2026-11-01T00:00:00+08:00"}}),
            "schedule",
        ),
    ];
    for (patch, field) in bad {
        let r = app.send("POST", PROGRAMS, Some(&with(body.clone(), patch.clone())), Some(OPERATOR_TOKEN)).await;
        refused(&r, 400, "validation_failed");
        assert!(r.body["field"].as_str().is_some_and(|f| f.starts_with(field)), "{patch}: {:?}", r.body);
    }
    problem(
        &app.send("POST", PROGRAMS, Some(&with(body.clone(), json!({"surprise": 1}))), Some(OPERATOR_TOKEN)).await,
        400,
    );
    problem(
        &app.send("POST", PROGRAMS, Some(&with(body.clone(), json!({"budget_fen": "lots"}))), Some(OPERATOR_TOKEN))
            .await,
        400,
    );
    let operator = vec![("authorization".to_owned(), format!("Bearer {OPERATOR_TOKEN}"))];
    refused(&app.send_raw("POST", PROGRAMS, b"{not json".to_vec(), &operator).await, 400, "malformed_json");
    refused(&app.send("GET", &format!("{PROGRAMS}/summer_friends"), None, None).await, 404, "program_not_found");
    let codes = "/api/referrals/codes";
    refused(
        &app.send("POST", codes, Some(&json!({"program_id": "summer_friends"})), None).await,
        401,
        "missing_credentials",
    );
    refused(&code_reply(&app, &customer, "summer_friends").await, 404, "program_not_found");
    problem(&app.send("POST", codes, Some(&json!({})), Some(&customer.token)).await, 400);
    problem(&app.send("POST", codes, Some(&json!({"program_id": 5})), Some(&customer.token)).await, 400);
    refused(
        &app.send("POST", "/api/referrals/attach", Some(&json!({"code": "ABCD2345"})), None).await,
        401,
        "missing_credentials",
    );
    problem(&app.send("POST", "/api/referrals/attach", Some(&json!({})), Some(&customer.token)).await, 400);
    refused(&attach(&app, &customer, "ABCD2345").await, 404, "referral_code_not_found");
    refused(
        &app.send("GET", "/api/referrals/me?program_id=summer_friends", None, None).await,
        401,
        "missing_credentials",
    );
    for path in ["stats", "leaderboard"].map(|p| format!("{PROGRAMS}/summer_friends/{p}")) {
        refused(&app.send("GET", &path, None, None).await, 401, "missing_credentials");
        refused(&app.send("GET", &path, None, Some(&customer.token)).await, 401, "invalid_operator_token");
    }
    refused(
        &app.send("GET", &format!("{PROGRAMS}/summer_friends/stats"), None, Some(OPERATOR_TOKEN)).await,
        404,
        "program_not_found",
    );
    assert_unchanged(&app, &before, "refused requests").await;

    // The program, once: a second creation is refused and leaves the program as it was (only its creation claim,
    // a counter, records the attempt).
    create_program(&app, &body).await;
    let program_key = "ref:program:summer_friends";
    let stored = app.host.kv.get("default", program_key).await.expect("kv");
    assert!(stored.is_some(), "{program_key} holds the program");
    let mut changes = body.clone();
    changes["title"] = "Another title".into();
    refused(&app.send("POST", PROGRAMS, Some(&changes), Some(OPERATOR_TOKEN)).await, 409, "program_exists");
    assert_eq!(app.host.kv.get("default", program_key).await.expect("kv"), stored, "the program is unchanged");
    let before = app.snapshot().await;
    problem(&app.send("GET", "/api/referrals/me", None, Some(&customer.token)).await, 400);
    refused(
        &app.send("GET", "/api/referrals/me?program_id=winter", None, Some(&customer.token)).await,
        404,
        "program_not_found",
    );
    for limit in ["0", "101", "ten"] {
        problem(&leaderboard(&app, "summer_friends", &format!("?limit={limit}")).await, 400);
    }
    assert_unchanged(&app, &before, "refused requests").await;
    let public = app.send("GET", &format!("{PROGRAMS}/summer_friends"), None, None).await;
    assert_eq!((public.status, &public.body["tiers"]), (200, &body["tiers"]), "{:?}", public.body);

    // Three referrers: Lea brings 3 qualified friends, Lou 1, Liv 2.
    let mut referrers = Vec::new();
    let mut referees = Vec::new();
    for (r, (name, n)) in [("lea", 3), ("lou", 1), ("liv", 2)].into_iter().enumerate() {
        let referrer = register(&app, &format!("wx_api_{name}"), None).await;
        let code = code_for(&app, &referrer, "summer_friends").await;
        for i in 0..n {
            let subject = format!("wx_api_{name}_friend_{i}");
            let phone = format!("139123400{r}{i}");
            let friend = register_as(&app, &subject, Some(&phone), None, Some(&code)).await;
            pay(&app, &friend, &format!("8000{r}{i}00"), 1000, &format!("api-{name}-{i}")).await;
            referees.push((friend, phone));
        }
        referrers.push(referrer);
    }
    let (lea, lou, liv) = (&referrers[0], &referrers[1], &referrers[2]);
    let top = leaderboard(&app, "summer_friends", "").await;
    assert_eq!(board(&top), vec![(lea.id.clone(), 3, 2), (liv.id.clone(), 2, 1), (lou.id.clone(), 1, 1)]);
    let two = leaderboard(&app, "summer_friends", "?limit=2").await;
    assert_eq!(board(&two), vec![(lea.id.clone(), 3, 2), (liv.id.clone(), 2, 1)]);

    // A referrer sees their referee masked: neither the customer id nor the phone.
    let view = me(&app, lou, "summer_friends").await;
    let (friend, phone) = &referees[3];
    assert_eq!(phone, "13912340010");
    let referral = &referrals(&view)[0];
    let masked = str_of(referral, "referee_masked");
    assert!(masked.contains('*'), "{view}");
    let text = view.to_string();
    assert!(!text.contains(&friend.id) && !text.contains(phone.as_str()), "{view}");
    assert_eq!((referral["status"].as_str(), time_of(referral, "attached_at")), (Some("qualified"), Some(app.now)));
    standing(&view, 1, 1);
    next_tier(&view, 2, 3, 2);
    app.host.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// A hundred referees at once

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_referees_qualifying_at_once_give_exact_counts_tiers_and_rewards() {
    referee_rush(TestApp::spawn().await.expect("app")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_referee_rush_on_the_sqlite_store_is_exact_too() {
    scenefin_e2e::host_only!("the host's SQLite store (spawn_on)");
    referee_rush(TestApp::spawn_on(KvKind::Sqlite).await.expect("app")).await;
}

/// The rush ladder: 1 → ¥1; 10 → ¥2 and a ¥10 bonus; 50 → ¥3 and ¥50; 100 → ¥4 and ¥100.
const RUSH_TIERS: [(i64, i64, i64); 4] = [(1, 100, 0), (10, 200, 1000), (50, 300, 5000), (100, 400, 10_000)];

/// The reward of the n-th rewarded referral (1-based): the highest tier whose minimum is at most n.
fn rush_reward(n: i64) -> i64 {
    RUSH_TIERS.iter().rev().find(|(min, _, _)| *min <= n).map_or(0, |(_, amount, _)| *amount)
}

/// 101 friends register with one referrer's code at once (the cap is 100: one is refused), each places a utility
/// order, and the 101 payment notifications arrive at once while the referrer keeps reading their page.
async fn referee_rush(app: TestApp) {
    let t0 = app.now;
    open_biller(&app).await;
    let tiers: Vec<Value> = RUSH_TIERS
        .iter()
        .map(|(min, amount, bonus)| cash_tier(*min, *amount, (*bonus > 0).then_some(*bonus)))
        .collect();
    let body = with(
        program("rush_friends", Value::Array(tiers)),
        json!({"referee_reward": {"kind": "cash_fen", "amount": 50}, "max_rewarded_per_referrer": 100}),
    );
    create_program(&app, &body).await;
    let alice = register(&app, "wx_rush_alice", None).await;
    let code = code_for(&app, &alice, "rush_friends").await;

    let shared = Arc::new(app);
    let friends = register_many(&shared, "wx_rush_friend", 101, &code).await;
    let view = me(&shared, &alice, "rush_friends").await;
    assert_eq!((referrals(&view).len(), with_status(&view, "pending").len()), (101, 100), "{view}");
    let capped = with_status(&view, "rejected");
    assert_eq!((capped.len(), capped[0]["reason"].as_str()), (1, Some("referrer_over_cap")), "{view}");

    // Orders first (32 at a time), then every notification at once.
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = JoinSet::new();
    for (i, friend) in friends.iter().enumerate() {
        let (app, permits, friend) = (shared.clone(), permits.clone(), friend.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore");
            (i, place(&app, &friend, &(50_000_000 + i).to_string(), 1500, &format!("rush-{i}")).await)
        });
    }
    let mut orders = Vec::new();
    while let Some(done) = tasks.join_next().await {
        orders.push(done.expect("order task"));
    }
    orders.sort_by_key(|(i, _)| *i);

    let over = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (app, over, alice) = (shared.clone(), over.clone(), alice.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !over.load(Ordering::Relaxed) {
                let view = me(&app, &alice, "rush_friends").await;
                seen.push((int_of(&view, "qualified_count"), cash(&view)));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let mut tasks = JoinSet::new();
    for (i, (order_id, total)) in orders {
        let app = shared.clone();
        tasks.spawn(async move { notify_paid(&app, &order_id, total, &format!("evt_rush_{i}")).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("notification task");
    }
    over.store(true, Ordering::Relaxed);
    let seen = watcher.await.expect("watcher");
    // While they arrived the referrer's page only ever moved forward, and bonuses were only ever whole.
    assert!(!seen.is_empty());
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1), "{seen:?}");
    assert!(seen.iter().all(|(q, c)| (0..=100).contains(q) && [0, 1000, 6000, 16_000].contains(c)), "{seen:?}");

    // All 100 qualified at once: tier 4, the three bonuses paid exactly once, nothing rewarded yet.
    let view = me(&shared, &alice, "rush_friends").await;
    standing(&view, 100, 4);
    top_tier(&view);
    assert_eq!((with_status(&view, "qualified").len(), with_status(&view, "rewarded").len()), (100, 0), "{view}");
    assert_eq!((cash(&view), count_of(&view["rewards"]["bonuses"])), (16_000, Some(3)), "{view}");
    assert_eq!(rewards_account(&ledger(&shared).await, &alice.id), -16_000);

    // After the holding period the referrer, the operator's stats and the leaderboard read at once.
    let Ok(mut app) = Arc::try_unwrap(shared) else { panic!("every task is over") };
    app.now = t0.plus_days(7).plus_secs(3600);
    let alice = relogin(&app, &alice).await;
    let shared = Arc::new(app);
    let mut readers = JoinSet::new();
    for i in 0..10 {
        let (app, alice) = (shared.clone(), alice.clone());
        readers.spawn(async move {
            match i % 4 {
                0 | 1 => {
                    me(&app, &alice, "rush_friends").await;
                }
                2 => {
                    stats(&app, "rush_friends").await;
                }
                _ => {
                    board(&leaderboard(&app, "rush_friends", "").await);
                }
            }
        });
    }
    while let Some(done) = readers.join_next().await {
        done.expect("reader task");
    }
    let app = &shared;
    let view = me(app, &alice, "rush_friends").await;
    standing(&view, 100, 4);
    assert_eq!((with_status(&view, "rewarded").len(), with_status(&view, "rejected").len()), (100, 1), "{view}");
    let mut amounts: BTreeMap<i64, usize> = BTreeMap::new();
    for r in with_status(&view, "rewarded") {
        let (kind, amount) = reward_of(&r);
        assert_eq!(kind, "cash_fen");
        *amounts.entry(amount).or_default() += 1;
    }
    let mut expected_amounts: BTreeMap<i64, usize> = BTreeMap::new();
    for n in 1..=100 {
        *expected_amounts.entry(rush_reward(n)).or_default() += 1;
    }
    assert_eq!(amounts, expected_amounts, "9 × ¥1, 40 × ¥2, 50 × ¥3, 1 × ¥4");
    let per_referral: i64 = (1..=100).map(rush_reward).sum();
    let bonuses: i64 = RUSH_TIERS.iter().map(|(_, _, b)| b).sum();
    assert_eq!((per_referral, bonuses), (24_300, 16_000));
    assert_eq!(cash(&view), per_referral + bonuses, "{view}");

    let report = ledger(app).await;
    assert_eq!(rewards_account(&report, &alice.id), -(per_referral + bonuses));
    let referee_accounts: Vec<i64> = friends.iter().map(|f| rewards_account(&report, &f.id)).collect();
    assert_eq!(referee_accounts.iter().filter(|b| **b == -50).count(), 100, "{referee_accounts:?}");
    assert_eq!(referee_accounts.iter().sum::<i64>(), -5000, "the capped friend gets nothing");
    assert_eq!(ledger_account(&report, MARKETING), per_referral + bonuses + 5000);
    assert_eq!(postings(app, "rw:rush_friends:").await, 100);
    assert_eq!(postings(app, "rr:rush_friends:").await, 100);
    assert_eq!(postings(app, &format!("bonus:rush_friends:{}:", alice.id)).await, 3);
    assert_eq!(postings(app, "claw:rush_friends:").await, 0);

    let s = stats(app, "rush_friends").await;
    let counts = ["referrals", "qualified", "clawed_back", "rewarded"].map(|f| int_of(&s, f));
    assert_eq!(counts, [100, 100, 0, 100], "{s}");
    assert_eq!(int_of(&s, "qualification_rate_bp"), 10_000, "{s}");
    assert_eq!(int_of(&s, "rewards_paid_fen"), 45_300, "{s}");
    assert_eq!(int_of(&s["budget"], "available_fen"), 1_000_000 - 45_300, "{s}");
    assert_eq!(rejections(&s), reasons(&[("referrer_over_cap", 1)]), "{s}");
    assert_eq!(board(&leaderboard(app, "rush_friends", "").await), vec![(alice.id.clone(), 100, 4)]);
    if let Ok(app) = Arc::try_unwrap(shared) {
        app.host.shutdown().await;
    }
}
