//! Campus cards end to end: the operator onboards a school, the school issues cards and registers its merchants,
//! students bind and top up their cards through the gateway, merchants' POS debit them, and every statement agrees
//! with the ledger.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use scenefin_core::auth::Provider;
use scenefin_core::clock::Timestamp;
use scenefin_e2e::{Api, OPERATOR_TOKEN, Reply, TestApp, ledger_account, retryable};
use scenefin_host::KvKind;
use serde_json::{Value, json};

/// A BIN of one of the bank's own cards (variable `bank_card_bins` is `622588` in tests).
const BANK_CARD_BIN: &str = "62258801";

/// A school's or a merchant POS's credentials.
#[derive(Clone)]
pub(crate) struct Partner {
    pub(crate) id: String,
    pub(crate) secret: String,
}

impl Partner {
    fn of(r: &Reply) -> Self {
        Partner { id: str_of(&r.body, "partner_id"), secret: str_of(&r.body, "partner_secret") }
    }
}

pub(crate) fn str_of(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_else(|| panic!("no string {field} in {v}")).to_owned()
}

pub(crate) fn int_of(v: &Value, field: &str) -> i64 {
    v[field].as_i64().unwrap_or_else(|| panic!("no integer {field} in {v}"))
}

/// Asserts a refusal: its status, its stable code, and that it is a problem+json document.
#[track_caller]
fn refused(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status, r.body["code"].as_str()), (status, Some(code)), "{:?}", r.body);
    assert!(r.content_type.starts_with("application/problem+json"), "{}: {:?}", r.content_type, r.body);
}

/// `YYYY-MM-DD` of an instant, in Asia/Shanghai.
fn date(t: Timestamp) -> String {
    t.to_rfc3339()[..10].to_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// Schools, merchants, members

pub(crate) async fn onboard_school(app: &Api, id: &str, topup_bonus: Option<Value>) -> Partner {
    let mut body = json!({"id": id, "name": format!("{id} University"), "city": "beijing"});
    if let Some(bonus) = topup_bonus {
        body["topup_bonus"] = bonus;
    }
    let r = app.send("POST", "/api/campus/schools", Some(&body), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    Partner::of(&r)
}

pub(crate) async fn add_merchant(
    app: &Api,
    school: &Partner,
    school_id: &str,
    merchant_id: &str,
    kind: &str,
) -> Partner {
    let body = json!({"merchant_id": merchant_id, "name": format!("{merchant_id} POS"), "kind": kind});
    let path = format!("/api/campus/schools/{school_id}/merchants");
    let r = app.partner(&school.id, &school.secret, "POST", &path, Some(&body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    Partner::of(&r)
}

pub(crate) fn member(member_no: &str, kind: &str, name: &str, valid_until: &str, code: &str) -> Value {
    json!({"member_no": member_no, "kind": kind, "name": name, "valid_until": valid_until, "activation_code": code})
}

async fn upload(app: &Api, school: &Partner, school_id: &str, members: &[Value]) -> Reply {
    let path = format!("/api/campus/schools/{school_id}/members");
    app.partner(&school.id, &school.secret, "PUT", &path, Some(&json!({ "members": members }))).await
}

/// The card an upload reply lists for `member_no`.
pub(crate) fn issued_card(upload: &Reply, member_no: &str) -> String {
    upload.body["cards"]
        .as_array()
        .expect("cards")
        .iter()
        .find(|c| c["member_no"] == member_no)
        .and_then(|c| c["card_id"].as_str())
        .unwrap_or_else(|| panic!("no card for {member_no} in {:?}", upload.body))
        .to_owned()
}

/// Uploads members that must all be accepted.
pub(crate) async fn issue(app: &Api, school: &Partner, school_id: &str, members: &[Value]) -> Reply {
    let r = upload(app, school, school_id, members).await;
    assert_eq!((r.status, &r.body["rejected"]), (200, &json!([])), "{:?}", r.body);
    r
}

pub(crate) async fn stats(app: &TestApp, school_id: &str) -> Value {
    let r = app.send("GET", &format!("/api/campus/schools/{school_id}/stats"), None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

// ---------------------------------------------------------------------------------------------------------------
// Customers and their cards

pub(crate) async fn customer(app: &Api, subject: &str) -> String {
    let s = app.login(Provider::Wechat, subject, None, None).await;
    s.body["token"].as_str().expect("token").to_owned()
}

async fn bind(app: &Api, token: &str, school_id: &str, member_no: &str, code: &str) -> Reply {
    let body = json!({"school_id": school_id, "member_no": member_no, "activation_code": code});
    app.send("POST", "/api/campus/cards/bind", Some(&body), Some(token)).await
}

/// Binds a member's card and returns its id.
pub(crate) async fn bind_card(app: &Api, token: &str, school_id: &str, member_no: &str, code: &str) -> String {
    let r = bind(app, token, school_id, member_no, code).await;
    assert_eq!((r.status, r.body["status"].as_str()), (201, Some("active")), "{:?}", r.body);
    str_of(&r.body, "card_id")
}

async fn my_cards(app: &Api, token: &str) -> Vec<Value> {
    let r = app.send("GET", "/api/campus/cards/me", None, Some(token)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["items"].as_array().expect("items").clone()
}

pub(crate) async fn my_card(app: &Api, token: &str, card_id: &str) -> Value {
    let cards = my_cards(app, token).await;
    cards.iter().find(|c| c["card_id"] == card_id).cloned().unwrap_or_else(|| panic!("{card_id} not in {cards:?}"))
}

async fn balance(app: &TestApp, token: &str, card_id: &str) -> i64 {
    int_of(&my_card(app, token, card_id).await, "balance_fen")
}

/// `POST /api/campus/cards/{id}/{action}` as the holder (report-lost, unfreeze, reissue, pay-code).
async fn card_action(app: &TestApp, token: &str, card_id: &str, action: &str) -> Reply {
    app.send("POST", &format!("/api/campus/cards/{card_id}/{action}"), None, Some(token)).await
}

pub(crate) async fn set_daily_limit(app: &Api, token: &str, card_id: &str, fen: i64) -> Reply {
    let path = format!("/api/campus/cards/{card_id}/limits");
    app.send("PUT", &path, Some(&json!({ "daily_limit_fen": fen })), Some(token)).await
}

/// `POST /api/campus/schools/{id}/cards/{card}/{action}` as the school (freeze, unfreeze).
async fn school_action(app: &TestApp, school: &Partner, school_id: &str, card_id: &str, action: &str) -> Reply {
    let path = format!("/api/campus/schools/{school_id}/cards/{card_id}/{action}");
    app.partner(&school.id, &school.secret, "POST", &path, None).await
}

/// A fresh pay code for the card: 18 digits, valid 60 s from now.
async fn pay_code(app: &TestApp, token: &str, card_id: &str) -> String {
    let r = card_action(app, token, card_id, "pay-code").await;
    assert_eq!((r.status, r.body["card_id"].as_str()), (201, Some(card_id)), "{:?}", r.body);
    let code = str_of(&r.body, "pay_code");
    assert!(code.len() == 18 && code.bytes().all(|b| b.is_ascii_digit()), "{code}");
    let expires = Timestamp::parse_rfc3339(&str_of(&r.body, "expires_at")).expect("expires_at");
    assert_eq!(expires, app.now.plus_secs(60), "valid for 60 s");
    code
}

/// Every transaction of the card, newest first, read in pages of 3 (checking the cursor neither skips nor repeats).
pub(crate) async fn transactions(app: &Api, token: &str, card_id: &str) -> Vec<Value> {
    let mut items: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let query = cursor.as_deref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let r = app
            .send("GET", &format!("/api/campus/cards/{card_id}/transactions?limit=3{query}"), None, Some(token))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let page = r.body["items"].as_array().expect("items");
        assert!(page.len() <= 3, "{page:?}");
        items.extend(page.iter().cloned());
        match r.body["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut ids: Vec<&str> = items.iter().filter_map(|t| t["txn_id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), items.len(), "each transaction listed once: {items:?}");
    items
}

/// What a listed transaction did to the balance: its signed `amount_fen` (positive in, negative out).
fn effect(txn: &Value) -> i64 {
    int_of(txn, "amount_fen")
}

pub(crate) fn kinds(txns: &[Value]) -> Vec<&str> {
    txns.iter().filter_map(|t| t["kind"].as_str()).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Top-ups and the gateway

/// `POST /api/campus/topups` with an `Idempotency-Key`.
pub(crate) async fn topup(app: &Api, token: &str, key: &str, body: &Value) -> Reply {
    topup_text(app, token, key, &body.to_string()).await
}

/// `POST /api/campus/topups` with an `Idempotency-Key` and a body exactly as written.
async fn topup_text(app: &Api, token: &str, key: &str, body: &str) -> Reply {
    let headers = vec![
        ("authorization".to_owned(), format!("Bearer {token}")),
        ("idempotency-key".to_owned(), key.to_owned()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    app.send_raw("POST", "/api/campus/topups", body.as_bytes().to_vec(), &headers).await
}

/// A top-up request: by one of the bank's cards (`bin`) or by something else.
pub(crate) fn topup_body(card_id: &str, amount_fen: i64, bin: Option<&str>) -> Value {
    match bin {
        Some(bin) => json!({"card_id": card_id, "amount_fen": amount_fen, "pay_with": "bank_card", "card_bin": bin}),
        None => json!({"card_id": card_id, "amount_fen": amount_fen, "pay_with": "other"}),
    }
}

pub(crate) fn line_amounts(order: &Value) -> Vec<i64> {
    order["lines"].as_array().expect("lines").iter().filter_map(|l| l["amount_fen"].as_i64()).collect()
}

/// A gateway notification: paid by a bank card with `bin`, or by a wallet.
pub(crate) fn paid_event(event_id: &str, order_id: &str, paid_fen: i64, at: Timestamp, bin: Option<&str>) -> Value {
    let instrument = match bin {
        Some(bin) => json!({"type": "bank_card", "bin": bin, "card_fingerprint": "fp_campus"}),
        None => json!({"type": "wallet"}),
    };
    json!({"event_id": event_id, "order_id": order_id, "status": "succeeded", "paid_fen": paid_fen,
           "paid_at": at.to_rfc3339(), "instrument": instrument})
}

pub(crate) async fn notify(app: &Api, event: &Value) -> Reply {
    app.notify("/api/campus/payments/notify", event).await
}

/// Places a top-up paid by wallet (no bonus); returns the order id.
async fn place_topup(app: &Api, token: &str, card_id: &str, amount_fen: i64, key: &str) -> String {
    let placed = topup(app, token, key, &topup_body(card_id, amount_fen, None)).await;
    assert_eq!(
        (placed.status, placed.body["order"]["total_fen"].as_i64()),
        (201, Some(amount_fen)),
        "{:?}",
        placed.body
    );
    str_of(&placed.body["order"], "order_id")
}

/// Tops a card up by wallet and has the gateway report it paid; returns the order id.
pub(crate) async fn top_up(app: &Api, token: &str, card_id: &str, amount_fen: i64, key: &str) -> String {
    let order_id = place_topup(app, token, card_id, amount_fen, key).await;
    let paid = notify(app, &paid_event(&format!("evt_{key}"), &order_id, amount_fen, app.now, None)).await;
    assert_eq!((paid.status, paid.body["state"].as_str()), (200, Some("paid")), "{:?}", paid.body);
    order_id
}

// ---------------------------------------------------------------------------------------------------------------
// Spending

pub(crate) fn by_card(pos_txn_id: &str, card_id: &str, amount_fen: i64) -> Value {
    json!({"pos_txn_id": pos_txn_id, "card_id": card_id, "amount_fen": amount_fen})
}

fn by_code(pos_txn_id: &str, pay_code: &str, amount_fen: i64) -> Value {
    json!({"pos_txn_id": pos_txn_id, "pay_code": pay_code, "amount_fen": amount_fen})
}

pub(crate) async fn spend(app: &Api, pos: &Partner, body: &Value) -> Reply {
    app.partner(&pos.id, &pos.secret, "POST", "/api/campus/spend", Some(body)).await
}

/// A spend that must go through, leaving `balance_after` on the card; returns the spend id.
async fn spent(app: &TestApp, pos: &Partner, body: &Value, card_id: &str, balance_after: i64) -> String {
    let r = spend(app, pos, body).await;
    assert_eq!(r.status, 201, "{body}: {:?}", r.body);
    assert_eq!(
        (&r.body["pos_txn_id"], &r.body["amount_fen"], r.body["card_id"].as_str(), r.body["balance_fen"].as_i64()),
        (&body["pos_txn_id"], &body["amount_fen"], Some(card_id), Some(balance_after)),
        "{:?}",
        r.body
    );
    assert_ne!(r.body["state"], "reversed");
    str_of(&r.body, "spend_id")
}

async fn reverse(app: &TestApp, pos: &Partner, spend_id: &str) -> Reply {
    app.partner(&pos.id, &pos.secret, "POST", &format!("/api/campus/spend/{spend_id}/reverse"), None).await
}

/// A merchant's statement for a day, asked by `who` (the merchant or its school); it must reconcile.
async fn settlement(app: &TestApp, who: &Partner, merchant_id: &str, day: &str) -> Value {
    let path = format!("/api/campus/merchants/{merchant_id}/settlement?date={day}");
    let r = app.partner(&who.id, &who.secret, "GET", &path, None).await;
    assert_eq!((r.status, r.body["reconciled"].as_bool()), (200, Some(true)), "{:?}", r.body);
    assert_eq!(r.body["total_fen"], r.body["ledger_total_fen"], "{:?}", r.body);
    r.body
}

// ---------------------------------------------------------------------------------------------------------------
// The ledger and the store

/// What a card holds, by the ledger (its account is credit-normal).
pub(crate) fn held(report: &Value, card_id: &str) -> i64 {
    -ledger_account(report, &format!("campus:card:{card_id}:stored_value"))
}

/// What a merchant is owed, by the ledger.
pub(crate) fn owed(report: &Value, merchant_id: &str) -> i64 {
    -ledger_account(report, &format!("campus:merchant:{merchant_id}:settlement"))
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_school_issues_cards_in_batches_and_binding_locks_after_five_wrong_codes() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;

    // The operator onboards the school; its id is taken from then on.
    let pku = onboard_school(&app, "pku", None).await;
    let taken = app
        .send("POST", "/api/campus/schools", Some(&json!({"id": "pku", "name": "Peking"})), Some(OPERATOR_TOKEN))
        .await;
    refused(&taken, 409, "school_exists");
    let canteen = add_merchant(&app, &pku, "pku", "pku_canteen", "canteen").await;
    let again = app
        .partner(
            &pku.id,
            &pku.secret,
            "POST",
            "/api/campus/schools/pku/merchants",
            Some(&json!({"merchant_id": "pku_canteen", "name": "Canteen 2", "kind": "canteen"})),
        )
        .await;
    refused(&again, 409, "merchant_exists");

    // A full batch of 1,000 members: one distinct card each.
    let batch: Vec<Value> = (0..1000)
        .map(|i| {
            let kind = if i % 10 == 0 { "staff" } else { "student" };
            member(&format!("2026{i:04}"), kind, &format!("学生{i}"), "2030-07-31", &format!("{}", 100_000 + i))
        })
        .collect();
    let first = issue(&app, &pku, "pku", &batch).await;
    assert_eq!((first.body["issued"].as_u64(), first.body["updated"].as_u64()), (Some(1000), Some(0)));
    let mut card_ids: Vec<&str> =
        first.body["cards"].as_array().expect("cards").iter().filter_map(|c| c["card_id"].as_str()).collect();
    card_ids.sort_unstable();
    card_ids.dedup();
    assert_eq!(card_ids.len(), 1000, "one distinct card per member");

    // 1,001 rows are refused whole.
    let too_many: Vec<Value> =
        (0..1001).map(|i| member(&format!("2027{i:04}"), "student", "学生", "2030-07-31", "246810")).collect();
    let r = upload(&app, &pku, "pku", &too_many).await;
    refused(&r, 400, "validation_failed");
    assert_eq!(stats(&app, "pku").await["cards_issued"], 1000, "nothing of a refused batch is issued");

    // Re-uploading is idempotent by member number: known members keep their cards (name and validity updated),
    // a new member gets a card, bad rows are rejected one by one.
    let second = upload(
        &app,
        &pku,
        "pku",
        &[
            member("20260001", "student", "学生一", "2031-07-31", "100001"),
            member("20260002", "student", "学生2", "2031-07-31", "100002"),
            member("20260003", "student", "学生3", "2030-07-31", "100003"),
            member("X-BADKIND", "alumni", "校友", "2030-07-31", "100004"),
            member("X-BADDATE", "student", "学生", "2027-02-30", "100005"),
            member("20261000", "student", "张三丰", "2030-07-31", "135790"),
        ],
    )
    .await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    assert_eq!(
        (second.body["issued"].as_u64(), second.body["updated"].as_u64()),
        (Some(1), Some(2)),
        "20260003 is unchanged: {:?}",
        second.body
    );
    let rejected: Vec<&str> =
        second.body["rejected"].as_array().expect("rejected").iter().filter_map(|r| r[0].as_str()).collect();
    assert_eq!(rejected, ["X-BADKIND", "X-BADDATE"], "{:?}", second.body);
    assert_eq!(second.body["rejected"][0][1], "invalid_kind");
    assert_eq!(second.body["rejected"][1][1], "invalid_valid_until");
    for no in ["20260001", "20260002", "20260003"] {
        assert_eq!(issued_card(&second, no), issued_card(&first, no), "{no} keeps its card");
    }
    let card = issued_card(&second, "20261000");
    assert!(!card_ids.contains(&card.as_str()));

    // Statistics: for the operator and the school itself; not for its merchant nor for another school.
    let s = stats(&app, "pku").await;
    assert_eq!((s["cards_issued"].as_i64(), s["cards_bound"].as_i64()), (Some(1001), Some(0)), "{s:?}");
    let by_school = app.partner(&pku.id, &pku.secret, "GET", "/api/campus/schools/pku/stats", None).await;
    assert_eq!((by_school.status, by_school.body["cards_issued"].as_i64()), (200, Some(1001)), "{:?}", by_school.body);
    let by_merchant = app.partner(&canteen.id, &canteen.secret, "GET", "/api/campus/schools/pku/stats", None).await;
    refused(&by_merchant, 403, "forbidden");
    let thu = onboard_school(&app, "thu", None).await;
    refused(&app.partner(&thu.id, &thu.secret, "GET", "/api/campus/schools/pku/stats", None).await, 403, "forbidden");
    let foreign = upload(&app, &thu, "pku", &[member("X1", "student", "某人", "2030-07-31", "111111")]).await;
    refused(&foreign, 403, "forbidden");

    // Five wrong codes lock the member for 15 minutes, the right code included; the code never leaks.
    let student = customer(&app, "wx_pku_student").await;
    for attempt in 1..=5 {
        let r = bind(&app, &student, "pku", "20261000", "999999").await;
        if attempt < 5 {
            refused(&r, 422, "invalid_activation_code");
        } else {
            refused(&r, 429, "bind_locked");
        }
        assert!(!r.body.to_string().contains("135790"), "{:?}", r.body);
    }
    refused(&bind(&app, &student, "pku", "20261000", "135790").await, 429, "bind_locked");
    app.now = t0.plus_secs(15 * 60 - 1);
    refused(&bind(&app, &student, "pku", "20261000", "135790").await, 429, "bind_locked");
    assert!(my_cards(&app, &student).await.is_empty());
    app.now = t0.plus_secs(15 * 60 + 1);
    let bound = bind(&app, &student, "pku", "20261000", "135790").await;
    assert_eq!(bound.status, 201, "{:?}", bound.body);
    let c = &bound.body;
    assert_eq!(
        (c["card_id"].as_str(), c["school_id"].as_str(), c["member_no"].as_str(), c["kind"].as_str()),
        (Some(card.as_str()), Some("pku"), Some("20261000"), Some("student"))
    );
    assert_eq!((c["status"].as_str(), c["holder_masked"].as_str()), (Some("active"), Some("张*丰")));
    assert_eq!(
        (c["balance_fen"].as_i64(), c["daily_limit_fen"].as_i64(), c["spent_today_fen"].as_i64()),
        (Some(0), Some(50_000), Some(0))
    );
    assert_eq!(c["valid_until"], "2030-07-31");
    assert_eq!(Timestamp::parse_rfc3339(&str_of(c, "bound_at")).ok(), Some(app.now));
    // Binding again is a no-op for the holder.
    let rebind = bind(&app, &student, "pku", "20261000", "135790").await;
    assert_eq!((rebind.status, rebind.body["card_id"].as_str()), (200, Some(card.as_str())), "{:?}", rebind.body);
    assert_eq!(my_cards(&app, &student).await.len(), 1);
    let me = app.send("GET", "/api/me", None, Some(&student)).await;
    assert!(me.body["tags"].as_array().expect("tags").iter().any(|t| t == "campus_student"), "{:?}", me.body);

    // Someone else: the bound card is refused even with the right code; unknown members look like wrong codes;
    // the card is invisible to them.
    let stranger = customer(&app, "wx_pku_stranger").await;
    refused(&bind(&app, &stranger, "pku", "20261000", "135790").await, 409, "card_already_bound");
    refused(&bind(&app, &stranger, "pku", "NO-SUCH-MEMBER", "135790").await, 422, "invalid_activation_code");
    refused(&bind(&app, &stranger, "nowhere", "20261000", "135790").await, 404, "school_not_found");
    assert!(my_cards(&app, &stranger).await.is_empty());
    let tx = app.send("GET", &format!("/api/campus/cards/{card}/transactions"), None, Some(&stranger)).await;
    refused(&tx, 404, "card_not_found");
    refused(&set_daily_limit(&app, &stranger, &card, 100).await, 404, "card_not_found");
    for action in ["report-lost", "unfreeze", "reissue", "pay-code"] {
        refused(&card_action(&app, &stranger, &card, action).await, 404, "card_not_found");
    }
    refused(&topup(&app, &stranger, "stranger_tu", &topup_body(&card, 1000, None)).await, 404, "card_not_found");
    assert_eq!(my_card(&app, &student, &card).await["status"], "active", "nothing the stranger did stuck");

    // A staff member binds too.
    let staff = customer(&app, "wx_pku_staff").await;
    bind_card(&app, &staff, "pku", "20260000", "100000").await;
    let me = app.send("GET", "/api/me", None, Some(&staff)).await;
    assert!(me.body["tags"].as_array().expect("tags").iter().any(|t| t == "campus_staff"), "{:?}", me.body);
    let s = stats(&app, "pku").await;
    assert_eq!((s["cards_issued"].as_i64(), s["cards_bound"].as_i64()), (Some(1001), Some(2)), "{s:?}");
    app.ledger_check().await;
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customer_guessing_codes_across_a_roster_is_throttled_per_customer() {
    let mut app = TestApp::spawn().await.expect("app");
    let ruc = onboard_school(&app, "ruc", None).await;
    let code = |i: usize| format!("{:06}", 300_000 + i);
    let roster: Vec<Value> =
        (0..20).map(|i| member(&format!("R{i:03}"), "student", "学生", "2030-07-31", &code(i))).collect();
    issue(&app, &ruc, "ruc", &roster).await;

    // One wrong code per member never reaches a member's lockout, but ten in an hour (unknown member numbers
    // included) throttle the customer: every bind is refused, the right code of a fresh member too.
    let guesser = customer(&app, "wx_ruc_guesser").await;
    for i in 0..9 {
        refused(&bind(&app, &guesser, "ruc", &format!("R{i:03}"), "000000").await, 422, "invalid_activation_code");
    }
    refused(&bind(&app, &guesser, "ruc", "NO-SUCH-MEMBER", "000000").await, 422, "invalid_activation_code");
    for i in 10..13 {
        let r = bind(&app, &guesser, "ruc", &format!("R{i:03}"), &code(i)).await;
        refused(&r, 429, "bind_throttled");
        assert!(!r.body.to_string().contains(&code(i)), "{:?}", r.body);
    }
    assert!(my_cards(&app, &guesser).await.is_empty());

    // The members guessed at are not locked, and other customers are not throttled.
    let honest = customer(&app, "wx_ruc_honest").await;
    bind_card(&app, &honest, "ruc", "R000", &code(0)).await;
    bind_card(&app, &honest, "ruc", "R010", &code(10)).await;

    // The throttle lasts the hour; the per-member lockout still applies on its own.
    app.now = app.now.plus_secs(60 * 60);
    bind_card(&app, &guesser, "ruc", "R011", &code(11)).await;
    for attempt in 1..=5 {
        let r = bind(&app, &guesser, "ruc", "R012", "000000").await;
        refused(
            &r,
            if attempt < 5 { 422 } else { 429 },
            if attempt < 5 { "invalid_activation_code" } else { "bind_locked" },
        );
    }
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_up_sent_again_as_reformatted_json_is_a_replay_and_a_changed_one_is_refused() {
    let app = TestApp::spawn().await.expect("app");
    let bnu = onboard_school(&app, "bnu", None).await;
    issue(&app, &bnu, "bnu", &[member("B1", "student", "韩梅梅", "2030-07-31", "515151")]).await;
    let token = customer(&app, "wx_bnu_b1").await;
    let card = bind_card(&app, &token, "bnu", "B1", "515151").await;

    let compact = format!(r#"{{"card_id":"{card}","amount_fen":1000,"pay_with":"other"}}"#);
    let placed = topup_text(&app, &token, "bnu_tu_1", &compact).await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    // The same request, re-serialised by another client library: other whitespace, other key order.
    let reformatted =
        format!("{{\n  \"pay_with\" : \"other\",\n  \"amount_fen\": 1000,\n  \"card_id\": \"{card}\"\n}}\n");
    let replay = topup_text(&app, &token, "bnu_tu_1", &reformatted).await;
    assert_eq!((replay.status, &replay.body), (201, &placed.body), "a replay of the first order");
    // Another value under the same key is still another request.
    let changed = format!(r#"{{"pay_with":"other","amount_fen":2000,"card_id":"{card}"}}"#);
    refused(&topup_text(&app, &token, "bnu_tu_1", &changed).await, 409, "idempotency_key_reused");
    let orders = app.send("GET", "/api/campus/orders", None, Some(&token)).await;
    assert_eq!(orders.body["items"].as_array().map(Vec::len), Some(1), "{:?}", orders.body);
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_up_by_the_banks_card_earns_the_bonus_and_is_credited_once_however_often_the_gateway_calls() {
    let app = TestApp::spawn().await.expect("app");
    // 2% back, at most 5 yuan a top-up, from a 10-yuan budget.
    let bonus = json!({"percent_bp": 200, "cap_fen": 500, "budget_id": "sjtu_topup_2026", "budget_fen": 1000});
    let sjtu = onboard_school(&app, "sjtu", Some(bonus)).await;
    issue(&app, &sjtu, "sjtu", &[member("S1", "student", "李雷", "2030-07-31", "112233")]).await;
    let token = customer(&app, "wx_sjtu_s1").await;
    let card = bind_card(&app, &token, "sjtu", "S1", "112233").await;

    // 2% of 300 yuan is 6 yuan, capped at 5: the card is credited 305 yuan for 300 paid.
    let body = topup_body(&card, 30_000, Some(BANK_CARD_BIN));
    let placed = topup(&app, &token, "sjtu_tu_1", &body).await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let order = &placed.body["order"];
    assert_eq!(line_amounts(order), [30_500, -500], "{order:?}");
    assert_eq!((order["total_fen"].as_i64(), order["state"].as_str()), (Some(30_000), Some("pending_payment")));
    let payment = &placed.body["payment"];
    assert_eq!((payment["amount_fen"].as_i64(), payment["bank_card_only"].as_bool()), (Some(30_000), Some(true)));
    let order_id = str_of(order, "order_id");
    // The same key replays the same order; it cannot be used for another top-up.
    let replay = topup(&app, &token, "sjtu_tu_1", &body).await;
    assert_eq!((replay.status, &replay.body), (201, &placed.body));
    let reused = topup(&app, &token, "sjtu_tu_1", &topup_body(&card, 20_000, Some(BANK_CARD_BIN))).await;
    refused(&reused, 409, "idempotency_key_reused");

    // The second bonus takes the rest of the budget; then there is none, rather than an error. Neither other
    // instruments nor other banks' cards earn one.
    let second = topup(&app, &token, "sjtu_tu_2", &topup_body(&card, 30_000, Some(BANK_CARD_BIN))).await;
    assert_eq!((second.status, line_amounts(&second.body["order"])), (201, vec![30_500, -500]), "{:?}", second.body);
    let third = topup(&app, &token, "sjtu_tu_3", &topup_body(&card, 30_000, Some(BANK_CARD_BIN))).await;
    assert_eq!((third.status, line_amounts(&third.body["order"])), (201, vec![30_000]), "{:?}", third.body);
    assert_eq!(third.body["payment"]["bank_card_only"], false);
    let foreign = topup(&app, &token, "sjtu_tu_4", &topup_body(&card, 100, Some("40000000"))).await;
    assert_eq!((foreign.status, line_amounts(&foreign.body["order"])), (201, vec![100]), "{:?}", foreign.body);
    let wallet = topup(&app, &token, "sjtu_tu_5", &topup_body(&card, 100_000, None)).await;
    assert_eq!((wallet.status, line_amounts(&wallet.body["order"])), (201, vec![100_000]), "{:?}", wallet.body);

    // A bonus order paid with a wallet is refused and credits nothing.
    let second_id = str_of(&second.body["order"], "order_id");
    let mismatch = notify(&app, &paid_event("sjtu_evt_2", &second_id, 30_000, app.now, None)).await;
    refused(&mismatch, 422, "instrument_mismatch");
    assert_eq!(balance(&app, &token, &card).await, 0);

    // Paid: credited amount plus bonus. The same notification three more times at once credits nothing more.
    let event = paid_event("sjtu_evt_1", &order_id, 30_000, app.now, Some("6225880012"));
    let first = notify(&app, &event).await;
    assert_eq!((first.status, first.body["state"].as_str()), (200, Some("paid")), "{:?}", first.body);
    let (a, b, c) = tokio::join!(notify(&app, &event), notify(&app, &event), notify(&app, &event));
    for r in [a, b, c] {
        assert_eq!((r.status, r.body["state"].as_str()), (200, Some("paid")), "{:?}", r.body);
    }
    let shown = my_card(&app, &token, &card).await;
    assert_eq!((shown["balance_fen"].as_i64(), shown["spent_today_fen"].as_i64()), (Some(30_500), Some(0)));
    let txns = transactions(&app, &token, &card).await;
    assert_eq!(kinds(&txns), ["top_up"], "{txns:?}");
    assert_eq!((effect(&txns[0]), txns[0]["amount_fen"].as_i64()), (30_500, Some(30_500)), "{txns:?}");

    // Orders: the customer's own, newest first; a receipt once paid; nobody else's.
    let orders = app.send("GET", "/api/campus/orders", None, Some(&token)).await;
    let listed: Vec<&str> =
        orders.body["items"].as_array().expect("items").iter().filter_map(|o| o["order_id"].as_str()).collect();
    assert_eq!((listed.len(), listed.last().copied()), (5, Some(order_id.as_str())), "{:?}", orders.body);
    let receipt = app.send("GET", &format!("/api/campus/orders/{order_id}"), None, Some(&token)).await;
    assert_eq!(
        (receipt.body["state"].as_str(), receipt.body["receipt_no"].as_str()),
        (Some("paid"), Some("sjtu_evt_1")),
        "{:?}",
        receipt.body
    );
    let stranger = customer(&app, "wx_sjtu_stranger").await;
    refused(
        &app.send("GET", &format!("/api/campus/orders/{order_id}"), None, Some(&stranger)).await,
        404,
        "order_not_found",
    );

    // Statistics count the paid top-up once.
    let s = stats(&app, "sjtu").await;
    assert_eq!(
        (s["topups"].as_i64(), s["topup_fen"].as_i64(), s["topups_bank_card"].as_i64(), s["bonus_fen"].as_i64()),
        (Some(1), Some(30_000), Some(1), Some(500)),
        "{s:?}"
    );
    assert_eq!((s["cards_bound"].as_i64(), s["cards_active"].as_i64()), (Some(1), Some(1)), "{s:?}");

    // Top-ups a card cannot take, and bad requests.
    refused(&topup(&app, &token, "sjtu_bad_1", &topup_body(&card, 99, None)).await, 400, "validation_failed");
    refused(&topup(&app, &token, "sjtu_bad_2", &topup_body(&card, 100_001, None)).await, 400, "validation_failed");
    let no_bin = json!({"card_id": card, "amount_fen": 1000, "pay_with": "bank_card"});
    let r = topup(&app, &token, "sjtu_bad_3", &no_bin).await;
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("card_bin")), "{:?}", r.body);
    let r = app.send("POST", "/api/campus/topups", Some(&topup_body(&card, 1000, None)), Some(&token)).await;
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("Idempotency-Key")), "{:?}", r.body);
    let frozen = school_action(&app, &sjtu, "sjtu", &card, "freeze").await;
    assert_eq!((frozen.status, frozen.body["status"].as_str()), (200, Some("frozen")), "{:?}", frozen.body);
    refused(&topup(&app, &token, "sjtu_frozen", &topup_body(&card, 1000, None)).await, 422, "card_frozen");
    let thawed = school_action(&app, &sjtu, "sjtu", &card, "unfreeze").await;
    assert_eq!((thawed.status, thawed.body["status"].as_str()), (200, Some("active")), "{:?}", thawed.body);
    assert_eq!(topup(&app, &token, "sjtu_thawed", &topup_body(&card, 1000, None)).await.status, 201);

    // The books: the gateway holds what was paid, the bank funded the bonus, the card holds both.
    let report = app.ledger_check().await;
    assert_eq!(held(&report, &card), 30_500);
    assert_eq!((ledger_account(&report, "gateway:clearing"), ledger_account(&report, "bank:marketing")), (30_000, 500));
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_debit_cards_by_id_and_pay_code_within_limits_and_settle_to_the_ledger() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    let (d0, d1) = (date(t0), date(t0.plus_days(1)));
    let thu = onboard_school(&app, "thu", None).await;
    let canteen = add_merchant(&app, &thu, "thu", "thu_canteen", "canteen").await;
    let shop = add_merchant(&app, &thu, "thu", "thu_shop", "shop").await;
    let print = add_merchant(&app, &thu, "thu", "thu_print", "print").await;
    let fudan = onboard_school(&app, "fudan", None).await;
    let elsewhere = add_merchant(&app, &fudan, "fudan", "fd_canteen", "canteen").await;
    let up = issue(
        &app,
        &thu,
        "thu",
        &[
            member("T1", "student", "王小明", "2030-07-31", "111111"),
            member("T2", "student", "赵二", "2030-07-31", "222222"),
            member("T3", "staff", "钱三", &d0, "333333"),
        ],
    )
    .await;
    let unbound = issued_card(&up, "T2");
    let alice = customer(&app, "wx_thu_alice").await;
    let card = bind_card(&app, &alice, "thu", "T1", "111111").await;
    top_up(&app, &alice, &card, 20_000, "thu_tu_1").await;
    let bob = customer(&app, "wx_thu_bob").await;
    let last_day = bind_card(&app, &bob, "thu", "T3", "333333").await;
    top_up(&app, &bob, &last_day, 1_000, "thu_tu_2").await;

    // By card id; a replay of the same pos_txn_id is the same spend, debited once; another card or amount under
    // it is a conflict.
    let c1 = spent(&app, &canteen, &by_card("c-1", &card, 1_250), &card, 18_750).await;
    let replay = spend(&app, &canteen, &by_card("c-1", &card, 1_250)).await;
    assert_eq!(
        (replay.body["spend_id"].as_str(), replay.body["balance_fen"].as_i64()),
        (Some(c1.as_str()), Some(18_750))
    );
    assert_eq!(balance(&app, &alice, &card).await, 18_750);
    refused(&spend(&app, &canteen, &by_card("c-1", &card, 1_300)).await, 409, "pos_txn_conflict");
    refused(&spend(&app, &canteen, &by_card("c-1", &last_day, 1_250)).await, 409, "pos_txn_conflict");
    // The same pos_txn_id at another merchant is another spend.
    let shop_c1 = spent(&app, &shop, &by_card("c-1", &card, 100), &card, 18_650).await;
    assert_ne!(shop_c1, c1);

    // By pay code: once. A retry of the spend that used it still works.
    let code = pay_code(&app, &alice, &card).await;
    let s1 = spent(&app, &shop, &by_code("s-1", &code, 800), &card, 17_850).await;
    refused(&spend(&app, &shop, &by_code("s-2", &code, 100)).await, 422, "pay_code_used");
    refused(&spend(&app, &canteen, &by_code("c-2", &code, 100)).await, 422, "pay_code_used");
    let retried = spend(&app, &shop, &by_code("s-1", &code, 800)).await;
    assert_eq!(retried.body["spend_id"].as_str(), Some(s1.as_str()), "{:?}", retried.body);
    refused(&spend(&app, &shop, &by_code("s-3", "280000000000000000", 100)).await, 422, "pay_code_invalid");
    // A code is good for 60 seconds.
    let late = pay_code(&app, &alice, &card).await;
    let on_time = pay_code(&app, &alice, &card).await;
    app.now = t0.plus_secs(59);
    spent(&app, &shop, &by_code("s-4", &on_time, 50), &card, 17_800).await;
    app.now = t0.plus_secs(61);
    refused(&spend(&app, &shop, &by_code("s-5", &late, 50)).await, 422, "pay_code_expired");
    refused(&spend(&app, &shop, &by_code("s-5", &late, 50)).await, 422, "pay_code_expired");
    app.now = t0;

    // More than the card holds: refused, and the daily limit taken for it is given back.
    refused(&spend(&app, &canteen, &by_card("c-3", &card, 30_000)).await, 422, "insufficient_balance");
    refused(&spend(&app, &canteen, &by_card("c-3", &card, 30_000)).await, 422, "insufficient_balance");
    let shown = my_card(&app, &alice, &card).await;
    assert_eq!((shown["balance_fen"].as_i64(), shown["spent_today_fen"].as_i64()), (Some(17_800), Some(2_200)));

    // Daily limit: 30 yuan. 2,200 spent, 800 more fit, then nothing.
    refused(&set_daily_limit(&app, &alice, &card, 0).await, 400, "validation_failed");
    refused(&set_daily_limit(&app, &alice, &card, 1_000_001).await, 400, "validation_failed");
    let limited = set_daily_limit(&app, &alice, &card, 3_000).await;
    assert_eq!((limited.status, limited.body["daily_limit_fen"].as_i64()), (200, Some(3_000)), "{:?}", limited.body);
    spent(&app, &canteen, &by_card("c-4", &card, 800), &card, 17_000).await;
    refused(&spend(&app, &canteen, &by_card("c-5", &card, 1)).await, 422, "daily_limit_exceeded");
    let shown = my_card(&app, &alice, &card).await;
    assert_eq!((shown["balance_fen"].as_i64(), shown["spent_today_fen"].as_i64()), (Some(17_000), Some(3_000)));
    set_daily_limit(&app, &alice, &card, 5_000).await;

    // Cards merchants cannot debit: another school's, an unbound one, a lost one, a frozen one.
    refused(&spend(&app, &elsewhere, &by_card("f-1", &card, 100)).await, 404, "card_not_found");
    let code = pay_code(&app, &alice, &card).await;
    refused(&spend(&app, &elsewhere, &by_code("f-2", &code, 100)).await, 404, "card_not_found");
    refused(&spend(&app, &canteen, &by_card("c-6", &unbound, 100)).await, 422, "card_not_active");
    let lost = card_action(&app, &alice, &card, "report-lost").await;
    assert_eq!((lost.status, lost.body["status"].as_str()), (200, Some("lost")), "{:?}", lost.body);
    refused(&spend(&app, &shop, &by_code("s-6", &code, 100)).await, 422, "card_lost");
    refused(&spend(&app, &shop, &by_card("s-7", &card, 100)).await, 422, "card_lost");
    let found = card_action(&app, &alice, &card, "unfreeze").await;
    assert_eq!((found.status, found.body["status"].as_str()), (200, Some("active")), "{:?}", found.body);
    refused(&spend(&app, &shop, &by_card("s-7", &card, 100)).await, 422, "card_lost");
    spent(&app, &shop, &by_card("s-8", &card, 100), &card, 16_900).await;
    let frozen = school_action(&app, &thu, "thu", &card, "freeze").await;
    assert_eq!((frozen.status, frozen.body["status"].as_str()), (200, Some("frozen")), "{:?}", frozen.body);
    refused(&school_action(&app, &fudan, "thu", &card, "unfreeze").await, 403, "forbidden");
    refused(&spend(&app, &print, &by_card("p-1", &card, 100)).await, 422, "card_frozen");
    let r = card_action(&app, &alice, &card, "unfreeze").await;
    assert!(r.status >= 400, "the holder cannot lift the school's freeze: {:?}", r.body);
    assert_eq!(my_card(&app, &alice, &card).await["status"], "frozen");
    school_action(&app, &thu, "thu", &card, "unfreeze").await;
    spent(&app, &print, &by_card("p-2", &card, 100), &card, 16_800).await;

    // The last valid day still pays.
    spent(&app, &canteen, &by_card("c-7", &last_day, 100), &last_day, 900).await;

    // Reversal: by the same merchant, once; another merchant does not see the spend.
    refused(&reverse(&app, &shop, &c1).await, 404, "spend_not_found");
    let reversed = reverse(&app, &canteen, &c1).await;
    assert_eq!((reversed.status, reversed.body["state"].as_str()), (200, Some("reversed")), "{:?}", reversed.body);
    let again = reverse(&app, &canteen, &c1).await;
    assert_eq!((again.status, again.body["state"].as_str()), (200, Some("reversed")), "{:?}", again.body);
    assert_eq!(balance(&app, &alice, &card).await, 18_050);
    let replay = spend(&app, &canteen, &by_card("c-1", &card, 1_250)).await;
    assert_eq!(replay.body["state"], "reversed", "a replay shows the spend as it stands: {:?}", replay.body);
    assert_eq!(balance(&app, &alice, &card).await, 18_050);

    // The holder's list, newest first: every move of the balance, adding up to it.
    let txns = transactions(&app, &alice, &card).await;
    assert_eq!(
        kinds(&txns),
        ["reversal", "spend", "spend", "spend", "spend", "spend", "spend", "spend", "top_up"],
        "{txns:?}"
    );
    assert_eq!(txns.iter().map(effect).sum::<i64>(), 18_050, "{txns:?}");
    assert_eq!((effect(&txns[0]), txns[0]["merchant_id"].as_str()), (1_250, Some("thu_canteen")));
    assert_eq!((effect(&txns[1]), txns[1]["reference"].as_str()), (-100, Some("p-2")));

    // The next Shanghai day: no reversal of yesterday's spends, a fresh daily limit, an expired card.
    app.now = t0.plus_days(1);
    refused(&reverse(&app, &shop, &s1).await, 422, "reversal_window_closed");
    spent(&app, &canteen, &by_card("c-8", &card, 5_000), &card, 13_050).await;
    refused(&spend(&app, &canteen, &by_card("c-9", &card, 1)).await, 422, "daily_limit_exceeded");
    refused(&spend(&app, &canteen, &by_card("c-10", &last_day, 100)).await, 422, "card_expired");
    assert_eq!(my_card(&app, &bob, &last_day).await["status"], "expired");

    // Settlement per merchant and day, for the merchant and its school, equals the spends less the reversals and
    // what the ledger owes each merchant.
    let day0 = settlement(&app, &canteen, "thu_canteen", &d0).await;
    assert_eq!(
        (day0["total_fen"].as_i64(), day0["spends"].as_i64(), day0["reversals"].as_i64()),
        (Some(1_250 + 800 + 100 - 1_250), Some(3), Some(1)),
        "{day0:?}"
    );
    let day1 = settlement(&app, &thu, "thu_canteen", &d1).await;
    assert_eq!(day1["total_fen"], 5_000, "{day1:?}");
    let shop0 = settlement(&app, &shop, "thu_shop", &d0).await;
    assert_eq!(shop0["total_fen"], 100 + 800 + 50 + 100, "{shop0:?}");
    let print0 = settlement(&app, &print, "thu_print", &d0).await;
    assert_eq!(print0["total_fen"], 100, "{print0:?}");
    let r = app
        .partner(
            &shop.id,
            &shop.secret,
            "GET",
            &format!("/api/campus/merchants/thu_canteen/settlement?date={d0}"),
            None,
        )
        .await;
    refused(&r, 403, "forbidden");
    let r = app
        .partner(
            &fudan.id,
            &fudan.secret,
            "GET",
            &format!("/api/campus/merchants/thu_canteen/settlement?date={d0}"),
            None,
        )
        .await;
    refused(&r, 403, "forbidden");
    let by_operator = app
        .send("GET", &format!("/api/campus/merchants/thu_shop/settlement?date={d0}"), None, Some(OPERATOR_TOKEN))
        .await;
    assert_eq!((by_operator.status, &by_operator.body["total_fen"]), (200, &shop0["total_fen"]));

    let report = app.ledger_check().await;
    assert_eq!((held(&report, &card), held(&report, &last_day), held(&report, &unbound)), (13_050, 900, 0));
    assert_eq!(
        (
            owed(&report, "thu_canteen"),
            owed(&report, "thu_shop"),
            owed(&report, "thu_print"),
            owed(&report, "fd_canteen")
        ),
        (900 + 5_000, 1_050, 100, 0)
    );
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_card_takes_the_balance_exactly_once_and_whatever_reaches_the_old_card_later() {
    let app = TestApp::spawn().await.expect("app");
    let zju = onboard_school(&app, "zju", None).await;
    let canteen = add_merchant(&app, &zju, "zju", "zju_canteen", "canteen").await;
    issue(&app, &zju, "zju", &[member("Z1", "student", "孙悟空", "2030-07-31", "515151")]).await;
    let token = customer(&app, "wx_zju_z1").await;
    let old = bind_card(&app, &token, "zju", "Z1", "515151").await;
    top_up(&app, &token, &old, 5_000, "zju_tu_1").await;
    let z1 = spent(&app, &canteen, &by_card("z-1", &old, 1_200), &old, 3_800).await;
    // A top-up ordered for the old card, paid only after the reissue.
    let pending = place_topup(&app, &token, &old, 2_000, "zju_tu_2").await;

    let lost = card_action(&app, &token, &old, "report-lost").await;
    assert_eq!(lost.status, 200, "{:?}", lost.body);
    let r = card_action(&app, &token, &old, "reissue").await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!((r.body["replaced_card_id"].as_str(), r.body["moved_fen"].as_i64()), (Some(old.as_str()), Some(3_800)));
    let new = str_of(&r.body["card"], "card_id");
    assert_ne!(new, old);
    assert_eq!(
        (
            r.body["card"]["status"].as_str(),
            r.body["card"]["balance_fen"].as_i64(),
            r.body["card"]["member_no"].as_str()
        ),
        (Some("active"), Some(3_800), Some("Z1")),
        "{:?}",
        r.body
    );
    // Current cards: the new one only.
    let cards = my_cards(&app, &token).await;
    let listed: Vec<&str> = cards.iter().filter_map(|c| c["card_id"].as_str()).collect();
    assert_eq!(listed, [new.as_str()], "{cards:?}");

    // A retry is the same new card and moves nothing more.
    let again = card_action(&app, &token, &old, "reissue").await;
    assert!(matches!(again.status, 200 | 201), "{:?}", again.body);
    assert_eq!(again.body["card"]["card_id"].as_str(), Some(new.as_str()), "{:?}", again.body);
    assert_eq!(balance(&app, &token, &new).await, 3_800);
    let report = app.ledger_check().await;
    assert_eq!((held(&report, &old), held(&report, &new)), (0, 3_800));

    // The old card is dead.
    refused(&spend(&app, &canteen, &by_card("z-2", &old, 100)).await, 422, "card_not_active");

    // The late payment lands on the new card, once.
    let event = paid_event("zju_evt_2", &pending, 2_000, app.now, None);
    let paid = notify(&app, &event).await;
    assert_eq!((paid.status, paid.body["state"].as_str()), (200, Some("paid")), "{:?}", paid.body);
    assert_eq!(notify(&app, &event).await.status, 200);
    assert_eq!(balance(&app, &token, &new).await, 5_800);
    // So does a reversal of a spend made with the old card.
    let reversed = reverse(&app, &canteen, &z1).await;
    assert_eq!((reversed.status, reversed.body["state"].as_str()), (200, Some("reversed")), "{:?}", reversed.body);
    assert_eq!(balance(&app, &token, &new).await, 7_000);
    let report = app.ledger_check().await;
    assert_eq!((held(&report, &old), held(&report, &new), owed(&report, "zju_canteen")), (0, 7_000, 0));
    let txns = transactions(&app, &token, &new).await;
    assert!(kinds(&txns).contains(&"transfer_in"), "{txns:?}");
    assert_eq!(txns.iter().map(effect).sum::<i64>(), 7_000, "{txns:?}");
    spent(&app, &canteen, &by_card("z-3", &new, 500), &new, 6_500).await;

    // Three reissues of the new card at once: one newer card, the balance moved once.
    card_action(&app, &token, &new, "report-lost").await;
    let (a, b, c) = tokio::join!(
        card_action(&app, &token, &new, "reissue"),
        card_action(&app, &token, &new, "reissue"),
        card_action(&app, &token, &new, "reissue")
    );
    let newest: Vec<Option<&str>> = [&a, &b, &c].iter().map(|r| r.body["card"]["card_id"].as_str()).collect();
    assert!([&a, &b, &c].iter().all(|r| matches!(r.status, 200 | 201)), "{a:?} {b:?} {c:?}");
    assert!(newest.iter().all(|id| *id == newest[0] && id.is_some()), "{newest:?}");
    let newest = newest[0].unwrap_or_default().to_owned();
    assert_eq!(balance(&app, &token, &newest).await, 6_500);
    let report = app.ledger_check().await;
    assert_eq!((held(&report, &old), held(&report, &new), held(&report, &newest)), (0, 0, 6_500));
    refused(&card_action(&app, &customer(&app, "wx_zju_other").await, &newest, "reissue").await, 404, "card_not_found");
    app.host.shutdown().await;
}

/// How often a POS retries a spend that met store contention (`503`) or timed out.
const MAX_ATTEMPTS: usize = 50;

/// A POS's spend with its retry: on `503` or a timeout it sends the same `pos_txn_id` again, freshly signed.
async fn spend_with_retry(app: &TestApp, pos: &Partner, body: &Value) -> Reply {
    for attempt in 0..MAX_ATTEMPTS {
        let r = spend(app, pos, body).await;
        if !retryable(&r) {
            return r;
        }
        eprintln!("retryable answer {} {} {}: retrying", r.status, r.body["code"], r.body["detail"]);
        tokio::time::sleep(Duration::from_millis(5 + 5 * attempt as u64)).await;
    }
    panic!("{body}: still not through after {MAX_ATTEMPTS} attempts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_one_yuan_spends_on_a_500_yuan_card_let_exactly_500_through() {
    rush(TestApp::spawn().await.expect("app")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_rush_on_the_sqlite_store_lets_exactly_500_through() {
    scenefin_e2e::host_only!("the host's SQLite store (spawn_on)");
    rush(TestApp::spawn_on(KvKind::Sqlite).await.expect("app")).await;
}

/// 1,000 concurrent 100-fen spends from four merchants on a card holding 50,000 fen.
async fn rush(app: TestApp) {
    let app = Arc::new(app);
    let ustc = onboard_school(&app, "ustc", None).await;
    let mut merchants = Vec::new();
    for (id, kind) in
        [("ustc_canteen1", "canteen"), ("ustc_canteen2", "canteen"), ("ustc_shop", "shop"), ("ustc_print", "print")]
    {
        merchants.push((id.to_owned(), add_merchant(&app, &ustc, "ustc", id, kind).await));
    }
    issue(&app, &ustc, "ustc", &[member("U1", "student", "周杰", "2030-07-31", "818181")]).await;
    let token = customer(&app, "wx_ustc_u1").await;
    let card = bind_card(&app, &token, "ustc", "U1", "818181").await;
    top_up(&app, &token, &card, 50_000, "ustc_tu_1").await;
    let raised = set_daily_limit(&app, &token, &card, 1_000_000).await;
    assert_eq!(raised.status, 200, "{:?}", raised.body);
    assert_eq!(balance(&app, &token, &card).await, 50_000);

    // All 1,000 at once, each its own connection (no client-side limit: the host copes), spread over the merchants.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let (app, card) = (app.clone(), card.clone());
        let (merchant_id, pos) = merchants[i % merchants.len()].clone();
        tasks.spawn(async move {
            let r = spend_with_retry(&app, &pos, &by_card(&format!("rush-{i}"), &card, 100)).await;
            (merchant_id, r)
        });
    }
    // Meanwhile the holder keeps looking at the balance until the rush is over: never negative.
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (app, token, card, over) = (app.clone(), token.clone(), card.clone(), over.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !over.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(balance(&app, &token, &card).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };

    let mut ok_by_merchant: BTreeMap<String, i64> = BTreeMap::new();
    let mut refused_count = 0;
    while let Some(done) = tasks.join_next().await {
        let (merchant_id, r) = done.expect("task");
        match r.status {
            201 => {
                let left = r.body["balance_fen"].as_i64().expect("balance_fen");
                assert!((0..50_000).contains(&left), "{:?}", r.body);
                *ok_by_merchant.entry(merchant_id).or_default() += 1;
            }
            _ => {
                refused(&r, 422, "insufficient_balance");
                refused_count += 1;
            }
        }
    }
    over.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.await.expect("watcher");
    assert!(!seen.is_empty() && seen.iter().all(|b| (0..=50_000).contains(b)), "{seen:?}");
    let ok: i64 = ok_by_merchant.values().sum();
    assert_eq!((ok, refused_count), (500, 500), "{ok_by_merchant:?}");
    let shown = my_card(&app, &token, &card).await;
    assert_eq!((shown["balance_fen"].as_i64(), shown["spent_today_fen"].as_i64()), (Some(0), Some(50_000)));

    // Each merchant's statement shows exactly its accepted spends, and together they are the 500 yuan.
    let day = date(app.now);
    let mut settled = 0;
    for (merchant_id, pos) in &merchants {
        let statement = settlement(&app, pos, merchant_id, &day).await;
        let count = ok_by_merchant.get(merchant_id).copied().unwrap_or(0);
        assert_eq!(
            (statement["total_fen"].as_i64(), statement["spends"].as_i64()),
            (Some(count * 100), Some(count)),
            "{statement:?}"
        );
        settled += int_of(&statement, "total_fen");
    }
    assert_eq!(settled, 50_000);
    let unbalanced =
        app.send("GET", "/api/ops/ledger/check", None, Some(OPERATOR_TOKEN)).await.body["balanced"] != true;
    if let (true, Ok(dir)) = (unbalanced, std::env::var("SCENEFIN_DEBUG_DUMP")) {
        let snap = app.snapshot().await;
        let dump: BTreeMap<String, String> =
            snap.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect();
        std::fs::write(format!("{dir}/dump.json"), serde_json::to_string(&dump).expect("json")).expect("dump");
    }
    let report = app.ledger_check().await;
    assert_eq!(held(&report, &card), 0);
    let owed_total: i64 = merchants.iter().map(|(id, _)| owed(&report, id)).sum();
    assert_eq!(owed_total, 50_000);
    if let Ok(app) = Arc::try_unwrap(app) {
        app.host.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_stable_problems_and_write_nothing() {
    let app = TestApp::spawn().await.expect("app");
    let nju = onboard_school(&app, "nju", None).await;
    let pos = add_merchant(&app, &nju, "nju", "nju_shop", "shop").await;
    issue(&app, &nju, "nju", &[member("N1", "student", "吴用", "2030-07-31", "424242")]).await;
    let token = customer(&app, "wx_nju_n1").await;
    let card = bind_card(&app, &token, "nju", "N1", "424242").await;
    top_up(&app, &token, &card, 1_000, "nju_tu_1").await;
    let before = app.snapshot().await;
    assert!(before.contains_key(&format!("campus:card:{card}")), "the snapshot sees the store");
    let customer_json = |token: &str| {
        vec![
            ("authorization".to_owned(), format!("Bearer {token}")),
            ("content-type".to_owned(), "application/json".to_owned()),
        ]
    };

    // Customers: malformed JSON, unknown and missing fields, out-of-range amounts, no session.
    let r = app.send_raw("POST", "/api/campus/cards/bind", b"{\"school_id\": ".to_vec(), &customer_json(&token)).await;
    refused(&r, 400, "malformed_json");
    let extra = json!({"school_id": "nju", "member_no": "N1", "activation_code": "424242", "admin": true});
    let r = app.send("POST", "/api/campus/cards/bind", Some(&extra), Some(&token)).await;
    refused(&r, 400, "validation_failed");
    assert_eq!(r.body["field"], "admin");
    let r = app.send("POST", "/api/campus/cards/bind", Some(&json!({"school_id": "nju"})), Some(&token)).await;
    refused(&r, 400, "validation_failed");
    refused(&set_daily_limit(&app, &token, &card, -5).await, 400, "validation_failed");
    let r = app
        .send(
            "PUT",
            &format!("/api/campus/cards/{card}/limits"),
            Some(&json!({"daily_limit_fen": "lots"})),
            Some(&token),
        )
        .await;
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("daily_limit_fen")), "{:?}", r.body);
    refused(&topup(&app, &token, "nju_bad_1", &topup_body(&card, 0, None)).await, 400, "validation_failed");
    refused(&topup(&app, &token, "nju_bad_2", &topup_body(&card, 10_000_000, None)).await, 400, "validation_failed");
    let r = topup(&app, &token, "nju_bad_3", &json!({"card_id": card, "amount_fen": 1000, "pay_with": "cash"})).await;
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("pay_with")), "{:?}", r.body);
    refused(&app.send("GET", "/api/campus/cards/me", None, None).await, 401, "missing_credentials");
    refused(&app.send("GET", "/api/campus/cards/me", None, Some("forged.token")).await, 401, "invalid_token");
    refused(
        &app.send("POST", "/api/campus/topups", Some(&topup_body(&card, 1000, None)), None).await,
        401,
        "missing_credentials",
    );
    refused(&card_action(&app, "", &card, "report-lost").await, 401, "missing_credentials");

    // Operator routes without the operator's token.
    let school = json!({"id": "nju2", "name": "NJU 2"});
    refused(&app.send("POST", "/api/campus/schools", Some(&school), None).await, 401, "missing_credentials");
    refused(&app.send("POST", "/api/campus/schools", Some(&school), Some(&token)).await, 401, "invalid_operator_token");
    refused(&app.send("GET", "/api/campus/schools/nju/stats", None, None).await, 401, "missing_credentials");
    let r = app
        .send("POST", "/api/campus/schools", Some(&json!({"id": "a:b", "name": "Colon"})), Some(OPERATOR_TOKEN))
        .await;
    refused(&r, 400, "validation_failed");

    // POS: bad amounts, neither or both of card and code, a tampered signature, a replayed nonce, unsigned.
    refused(&spend(&app, &pos, &by_card("b-1", &card, 0)).await, 400, "validation_failed");
    refused(&spend(&app, &pos, &by_card("b-2", &card, 100_001)).await, 400, "validation_failed");
    refused(&spend(&app, &pos, &json!({"pos_txn_id": "b-3", "amount_fen": 100})).await, 400, "validation_failed");
    let both = json!({"pos_txn_id": "b-4", "card_id": card, "pay_code": "280000000000000000", "amount_fen": 100});
    refused(&spend(&app, &pos, &both).await, 400, "validation_failed");
    let r = spend(&app, &pos, &json!({"pos_txn_id": "b-5", "card_id": card, "amount_fen": 100, "tip_fen": 5})).await;
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("tip_fen")), "{:?}", r.body);
    let signed = serde_json::to_vec(&by_card("b-6", &card, 100)).expect("json");
    let headers = app.partner_headers(&pos.id, &pos.secret, "POST", "/api/campus/spend", &signed);
    let tampered = serde_json::to_vec(&by_card("b-6", &card, 900)).expect("json");
    refused(&app.send_raw("POST", "/api/campus/spend", tampered, &headers).await, 401, "invalid_signature");
    let wrong_secret = Partner { id: pos.id.clone(), secret: nju.secret.clone() };
    refused(&spend(&app, &wrong_secret, &by_card("b-6", &card, 100)).await, 401, "invalid_signature");
    refused(
        &app.send("POST", "/api/campus/spend", Some(&by_card("b-6", &card, 100)), None).await,
        401,
        "missing_credentials",
    );
    // The school's own credentials are not a POS.
    refused(&spend(&app, &nju, &by_card("b-7", &card, 100)).await, 403, "forbidden");
    let bad_date = app
        .partner(&pos.id, &pos.secret, "GET", "/api/campus/merchants/nju_shop/settlement?date=2026-13-01", None)
        .await;
    refused(&bad_date, 400, "validation_failed");

    // None of it was written.
    assert_eq!(app.snapshot().await, before, "refused requests left no trace");
    assert_eq!(balance(&app, &token, &card).await, 1_000);

    // The honest request goes through, once, even replayed with the same nonce.
    let honest = app.send_raw("POST", "/api/campus/spend", signed.clone(), &headers).await;
    assert_eq!((honest.status, honest.body["balance_fen"].as_i64()), (201, Some(900)), "{:?}", honest.body);
    refused(&app.send_raw("POST", "/api/campus/spend", signed, &headers).await, 401, "nonce_replayed");
    assert_eq!(balance(&app, &token, &card).await, 900);
    app.ledger_check().await;
    app.host.shutdown().await;
}

/// The public directories a customer picks from: every school and community, in the order registered, with id,
/// name and city only (no partner id, settlement account or company); no session needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schools_and_communities_are_listed_publicly_without_private_fields() {
    let app = TestApp::spawn().await.expect("app");
    let empty = app.send("GET", "/api/campus/schools", None, None).await;
    assert_eq!((empty.status, empty.body.clone()), (200, json!({ "items": [], "next": null })));
    onboard_school(&app, "pku", None).await;
    onboard_school(&app, "thu", None).await;
    let community = json!({ "id": "garden", "name": "示范花园", "city": "深圳", "property_company": "示范物业",
        "settlement_account": "6222000099990001" });
    let r = app.send("POST", "/api/property/communities", Some(&community), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let schools = app.send("GET", "/api/campus/schools", None, None).await;
    assert_eq!(schools.status, 200, "{:?}", schools.body);
    assert_eq!(
        schools.body["items"],
        json!([
            { "id": "pku", "name": "pku University", "city": "beijing" },
            { "id": "thu", "name": "thu University", "city": "beijing" }
        ])
    );
    let communities = app.send("GET", "/api/property/communities", None, None).await;
    assert_eq!(communities.body["items"], json!([{ "id": "garden", "name": "示范花园", "city": "深圳" }]));
    app.host.shutdown().await;
}
