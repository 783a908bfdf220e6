//! Partners' webhooks (issue 26): a biller registers an endpoint and its receiver — a real HTTP server on loopback —
//! gets every event of its feed, signed with Standard Webhooks under the biller's own secret (checked with the
//! `standardwebhooks` library), in order; a receiver that fails gets the event again later, on the retry schedule,
//! when a later request or the partner's poll comes; a partner can look at its deliveries and replay one; the
//! operator sees each partner's lag; a host the deployment does not allow is never called.

use std::sync::{Arc, Mutex};

use scenefin_e2e::{Api, OPERATOR_TOKEN, TestApp};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::partner_events::feed;

/// How long a delivery pass's lease lasts.
pub(crate) const LEASE_SECS: i64 = scenefin_core::webhooks::LEASE_SECS;
use crate::utility_payments as utility;

/// One request a receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Vec<u8>,
    /// What the receiver answered.
    pub(crate) status: u16,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Inbox {
    got: Vec<Got>,
    /// Answers to give next (then 200).
    answers: Vec<u16>,
}

/// A webhook receiver on loopback: a minimal HTTP/1.1 server that records each request and answers as told.
pub(crate) struct Receiver {
    pub(crate) url: String,
    inbox: Arc<Mutex<Inbox>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hooks/scenefin", listener.local_addr().expect("addr"));
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let shared = inbox.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let inbox = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, inbox).await;
                });
            }
        });
        Receiver { url, inbox, task }
    }

    /// The next `n` requests are answered with `status`.
    pub(crate) fn fail_next(&self, n: usize, status: u16) {
        self.inbox.lock().expect("inbox").answers.extend(std::iter::repeat_n(status, n));
    }

    pub(crate) fn got(&self) -> Vec<Got> {
        self.inbox.lock().expect("inbox").got.clone()
    }

    /// The ids of the events it accepted (answered 2xx), in the order they came.
    pub(crate) fn delivered_ids(&self) -> Vec<String> {
        self.got()
            .iter()
            .filter(|g| g.status == 200)
            .filter_map(|g| g.json()["id"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: tokio::net::TcpStream, inbox: Arc<Mutex<Inbox>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut headers = http::HeaderMap::new();
    for line in head.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        if let Some((name, value)) = line.split_once(':') {
            headers.append(
                http::HeaderName::from_bytes(name.trim().as_bytes()).expect("header name"),
                http::HeaderValue::from_str(value.trim()).expect("header value"),
            );
        }
    }
    let chunked = headers.get("transfer-encoding").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let length: Option<usize> =
        headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    // Read to the end of the body: its length, or the last chunk.
    while !(match length {
        Some(n) => buf.len() >= head_end + n,
        None => !chunked || buf[head_end..].ends_with(b"0\r\n\r\n"),
    }) {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = if chunked && length.is_none() { dechunk(&buf[head_end..]) } else { buf[head_end..].to_vec() };
    let status = {
        let mut inbox = inbox.lock().expect("inbox");
        let status = if inbox.answers.is_empty() { 200 } else { inbox.answers.remove(0) };
        inbox.got.push(Got { headers, body, status });
        status
    };
    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// The body of a chunked request.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..line_end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        body.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    body
}

/// The Standard Webhooks verifier of a partner: its secret's bytes are the key (`whsec_` + base64 of them).
fn verifier(secret: &str) -> standardwebhooks::Webhook {
    use base64::Engine;
    let whsec = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(secret.as_bytes()));
    standardwebhooks::Webhook::new(&whsec).expect("a Standard Webhooks secret")
}

async fn pay_bills(app: &Api, w: &utility::Biller, n: usize, tag: &str) -> Vec<String> {
    let bills: Vec<Value> = (0..n)
        .map(|i| {
            json!({"bill_id": format!("WH-{tag}-{i}"), "account_no": format!("{}", 50_000_000 + i), "period": "2026-10",
                   "amount_fen": 4000 + i, "due_date": "2026-11-30", "holder_name": "李四"})
        })
        .collect();
    let path = format!("/api/utility/billers/{}/bills", w.id);
    let up = app.partner(&w.partner_id, &w.secret, "PUT", &path, Some(&json!({ "bills": bills }))).await;
    assert_eq!(up.status, 200, "{:?}", up.body);
    let mut payers = tokio::task::JoinSet::new();
    for i in 0..n {
        let app = app.clone();
        let (biller, tag) = (w.id.clone(), tag.to_owned());
        payers.spawn(async move {
            let login = app.login(scenefin_core::auth::Provider::Wechat, &format!("wx_wh_{tag}_{i}"), None, None).await;
            let token = login.body["token"].as_str().expect("token").to_owned();
            let quote = json!({"biller_id": biller, "account_no": format!("{}", 50_000_000 + i),
                               "bill_ids": [format!("WH-{tag}-{i}")], "pay_with": "other"});
            let q = app.send("POST", "/api/utility/quotes", Some(&quote), Some(&token)).await;
            assert_eq!(q.status, 201, "{:?}", q.body);
            let quote_id = q.body["quote_id"].as_str().expect("quote").to_owned();
            let placed = utility::order(&app, &token, &quote_id, &format!("wh-{tag}-{i}")).await;
            assert_eq!(placed.status, 201, "{:?}", placed.body);
            let order_id = placed.body["order"]["order_id"].as_str().expect("order").to_owned();
            let paid_fen = placed.body["payment"]["amount_fen"].as_i64().expect("amount");
            let event = utility::event(
                &format!("evt_wh_{tag}_{i}"),
                &order_id,
                "succeeded",
                paid_fen,
                None,
                &app.now.to_rfc3339(),
            );
            // The gateway's notification arrives twice at once.
            let (a, b) = tokio::join!(
                app.notify("/api/utility/payments/notify", &event),
                app.notify("/api/utility/payments/notify", &event)
            );
            assert_eq!((a.status, b.status), (200, 200), "{:?} {:?}", a.body, b.body);
            order_id
        });
    }
    payers.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_biller_endpoint_gets_each_event_signed_in_order_and_a_failing_one_gets_it_again_later() {
    let app = TestApp::spawn().await.expect("app");
    let w = utility::register(&app, utility::water(10_000_000)).await;
    let receiver = Receiver::start().await;
    let hook = "/api/utility/partners/webhook";

    // Nothing registered yet; a bad URL is refused and writes nothing.
    let none = app.partner(&w.partner_id, &w.secret, "GET", hook, None).await;
    assert_eq!((none.status, none.body["code"].as_str()), (404, Some("webhook_not_registered")), "{:?}", none.body);
    for bad in ["ftp://x.example/", "http://hooks.example.com/plain-http", "https://user@x.example/"] {
        let r = app.partner(&w.partner_id, &w.secret, "PUT", hook, Some(&json!({ "url": bad }))).await;
        assert_eq!((r.status, r.body["code"].as_str()), (422, Some("invalid_webhook_url")), "{bad}: {:?}", r.body);
    }
    let r = app.partner(&w.partner_id, &w.secret, "PUT", hook, Some(&json!({ "url": receiver.url }))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["webhook"]["url"], receiver.url.as_str());

    // The receiver is down for the first event: 503.
    receiver.fail_next(1, 503);
    let orders = pay_bills(&app, &w, 4, "a").await;

    // The first event failed once and waits (5 s); the others wait behind it, in order.
    let got = receiver.got();
    assert_eq!(got.len(), 1, "one attempt, then the retry waits: {got:?}");
    assert_eq!(got[0].status, 503);
    let status = app.partner(&w.partner_id, &w.secret, "GET", hook, None).await;
    assert_eq!(status.body["webhook"]["attempts"], 1, "{:?}", status.body);
    assert!(status.body["webhook"]["failing_since"].is_string(), "{:?}", status.body);
    assert_eq!(status.body["webhook"]["last_error"], "the endpoint answered 503");

    // Later, the partner polls its feed: the retry is due, and everything goes out, in feed order.
    let mut later = app.api.clone();
    later.now = later.now.plus_secs(6);
    let events = feed(&later, &w.partner_id, &w.secret, "utility", 50).await;
    let got = receiver.got();
    let delivered: Vec<&Got> = got.iter().filter(|g| g.status == 200).collect();
    let feed_ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().expect("id")).collect();
    let delivered_ids: Vec<String> =
        delivered.iter().map(|g| g.json()["id"].as_str().expect("id").to_owned()).collect();
    assert_eq!(delivered_ids, feed_ids, "each event once, in feed order");
    assert_eq!(got[0].json()["id"], got[1].json()["id"], "the failed event is the one sent again");
    for order_id in &orders {
        assert!(feed_ids.contains(&format!("bill.paid:{order_id}").as_str()), "{feed_ids:?}");
    }

    // Each request verifies with a Standard Webhooks library under the biller's secret, and says what happened.
    let verify = verifier(&w.secret);
    for g in &got {
        verify.verify(&g.body, &g.headers).expect("a valid Standard Webhooks signature");
        let body = g.json();
        assert_eq!(g.headers["webhook-id"].to_str().expect("id"), body["id"].as_str().expect("id"));
        assert_eq!(body["type"], "bill.paid");
        assert_eq!(body["data"]["biller_id"], "sz_water");
        assert!(body["data"]["paid_fen"].as_i64().expect("paid_fen") > 0);
        assert!(body["occurred_at"].as_str().expect("occurred_at").ends_with("+08:00"));
    }
    assert!(verifier("not-the-secret").verify(&got[0].body, &got[0].headers).is_err(), "another key fails");

    // The partner's view: all delivered, nothing failing, the attempts listed.
    let status = later.partner(&w.partner_id, &w.secret, "GET", hook, None).await;
    let webhook = &status.body["webhook"];
    assert_eq!((webhook["lag"].as_i64(), webhook["attempts"].as_i64()), (Some(0), Some(0)), "{webhook:?}");
    assert!(webhook["failing_since"].is_null());
    let recent = webhook["recent"].as_array().expect("recent");
    assert_eq!(recent.len(), got.len());
    assert_eq!(recent[0]["ok"], false);
    assert_eq!(recent[0]["status"], 503);

    // A replay of one event goes out again, now.
    let replay = later
        .partner(
            &w.partner_id,
            &w.secret,
            "POST",
            "/api/utility/partners/webhook/replay",
            Some(&json!({"event_id": feed_ids[1]})),
        )
        .await;
    assert_eq!((replay.status, replay.body["attempt"]["ok"].as_bool()), (200, Some(true)), "{:?}", replay.body);
    let last = receiver.got().last().cloned().expect("replayed");
    assert_eq!(last.json()["id"], feed_ids[1]);
    verify.verify(&last.body, &last.headers).expect("a valid signature on the replay");
    let unknown = later
        .partner(
            &w.partner_id,
            &w.secret,
            "POST",
            "/api/utility/partners/webhook/replay",
            Some(&json!({"event_id": "bill.paid:nope"})),
        )
        .await;
    assert_eq!((unknown.status, unknown.body["code"].as_str()), (404, Some("event_not_found")), "{:?}", unknown.body);

    // The operator sees the biller's lag: polling on from the last `next` confirms all it read (the feed's places
    // include the void ones concurrent duplicates left, so the cursor is the measure, not the count of events).
    let all = later.partner(&w.partner_id, &w.secret, "GET", "/api/utility/partners/events?limit=200", None).await;
    let next: i64 = all.body["next"].as_str().expect("next").parse().expect("a number");
    let again = later
        .partner(&w.partner_id, &w.secret, "GET", &format!("/api/utility/partners/events?after={next}"), None)
        .await;
    assert_eq!(again.status, 200);
    let feeds = later.send("GET", "/api/utility/partners/feeds", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(feeds.status, 200, "{:?}", feeds.body);
    let row = feeds.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["partner_id"] == w.partner_id.as_str())
        .cloned()
        .expect("the biller is listed");
    assert_eq!(row["appended"].as_i64(), Some(next), "{row:?}");
    assert_eq!(row["lag"], 0, "{row:?}");
    assert_eq!(row["webhook"]["lag"], 0, "{row:?}");
    let partner_token = later.partner(&w.partner_id, &w.secret, "GET", "/api/utility/partners/feeds", None).await;
    assert_eq!(partner_token.status, 401, "a partner may not read the operator's view: {:?}", partner_token.body);

    // Removed: later events are not sent.
    let gone = later.partner(&w.partner_id, &w.secret, "DELETE", hook, None).await;
    assert_eq!((gone.status, gone.body["webhook"]["active"].as_bool()), (200, Some(false)), "{:?}", gone.body);
    let before = receiver.got().len();
    pay_bills(&later, &w, 1, "b").await;
    assert_eq!(receiver.got().len(), before, "nothing goes to a removed endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_keeps_failing_is_given_up_on_after_the_schedule_and_delivery_moves_on() {
    let app = TestApp::spawn().await.expect("app");
    let w = utility::register(&app, utility::water(10_000_000)).await;
    let receiver = Receiver::start().await;
    let hook = "/api/utility/partners/webhook";
    let r = app.partner(&w.partner_id, &w.secret, "PUT", hook, Some(&json!({ "url": receiver.url }))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    receiver.fail_next(scenefin_core::webhooks::MAX_ATTEMPTS as usize, 500);
    pay_bills(&app, &w, 2, "c").await;

    // Each poll after the next retry is due makes one more attempt.
    let mut later = app.api.clone();
    for wait in scenefin_core::webhooks::RETRY_SCHEDULE_SECS {
        later.now = later.now.plus_secs(wait + 1);
        let r = later.partner(&w.partner_id, &w.secret, "GET", hook, None).await;
        assert_eq!(r.status, 200);
    }
    let got = receiver.got();
    let first_id = got[0].json()["id"].clone();
    let tries = got.iter().filter(|g| g.json()["id"] == first_id).count();
    assert_eq!(tries as u32, scenefin_core::webhooks::MAX_ATTEMPTS, "{got:?}");
    let status = later.partner(&w.partner_id, &w.secret, "GET", hook, None).await;
    let failed = status.body["webhook"]["failed"].as_array().expect("failed").clone();
    assert_eq!(failed.len(), 1, "{:?}", status.body);
    assert_eq!(failed[0]["event_id"], first_id);
    // Delivery moved on: the second event went out (on the request that gave up, or this one).
    assert!(receiver.got().iter().any(|g| g.status == 200 && g.json()["id"] != first_id), "{:?}", receiver.got());
    let feeds = later.send("GET", "/api/utility/partners/feeds", None, Some(OPERATOR_TOKEN)).await;
    let row = feeds.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["partner_id"] == w.partner_id.as_str())
        .cloned();
    assert_eq!(row.expect("listed")["webhook"]["failed"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_on_a_host_the_deployment_does_not_allow_is_never_called() {
    let app = TestApp::spawn().await.expect("app");
    let w = utility::register(&app, utility::water(10_000_000)).await;
    // https to a host outside `webhook_allowed_hosts` (the tests allow http://127.0.0.1:* only).
    let url = "https://hooks.partner.example/scenefin";
    let r = app
        .partner(&w.partner_id, &w.secret, "PUT", "/api/utility/partners/webhook", Some(&json!({ "url": url })))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    pay_bills(&app, &w, 1, "d").await;
    let status = app.partner(&w.partner_id, &w.secret, "GET", "/api/utility/partners/webhook", None).await;
    let webhook = &status.body["webhook"];
    assert_eq!(webhook["attempts"], 1, "{webhook:?}");
    let error = webhook["last_error"].as_str().expect("an error");
    assert!(error.contains("allowed_outbound_hosts"), "denied by the outbound rules, not tried: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_s_statement_closes_at_shanghai_midnight_once_by_webhook_and_in_the_feed() {
    let app = TestApp::spawn().await.expect("app");
    let w = utility::register(&app, utility::water(10_000_000)).await;
    let receiver = Receiver::start().await;
    let r = app
        .partner(
            &w.partner_id,
            &w.secret,
            "PUT",
            "/api/utility/partners/webhook",
            Some(&json!({ "url": receiver.url })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let orders = pay_bills(&app, &w, 2, "e").await;
    let statement_of =
        |got: &[Got]| -> Vec<Value> { got.iter().map(Got::json).filter(|b| b["type"] == "statement.closed").collect() };
    assert!(statement_of(&receiver.got()).is_empty(), "the day is not over");

    // The next day, the first request to the scenario (here the gateway's notification of another payment) closes
    // yesterday's statement; the biller's webhook gets it, with the totals it reconciles against, once.
    let mut tomorrow = app.api.clone();
    tomorrow.now = tomorrow.now.plus_days(1);
    let day = app.now.to_rfc3339()[..10].to_owned();
    pay_bills(&tomorrow, &w, 1, "f").await;
    let closed = statement_of(&receiver.got());
    assert_eq!(closed.len(), 1, "{closed:?}");
    let data = &closed[0]["data"];
    assert_eq!(closed[0]["id"], format!("statement.closed:sz_water:{day}"));
    assert_eq!(data["date"], day.as_str());
    assert_eq!(data["biller_id"], "sz_water");
    assert_eq!(data["lines"], orders.len());
    assert_eq!(data["reconciled"], true, "{data:?}");
    assert!(data["total_gross_fen"].as_i64().expect("total") > 0);
    assert_eq!(closed[0]["occurred_at"].as_str().map(|t| t.ends_with("T00:00:00+08:00")), Some(true));
    // The statement it names is the one the biller reads.
    let path = data["statement_path"].as_str().expect("path");
    let statement = tomorrow.partner(&w.partner_id, &w.secret, "GET", path, None).await;
    assert_eq!(statement.status, 200, "{:?}", statement.body);
    assert_eq!(statement.body["total_gross_fen"], data["total_gross_fen"]);

    // Polls and further requests that day close nothing more; the feed holds it once.
    let events = feed(&tomorrow, &w.partner_id, &w.secret, "utility", 50).await;
    let ids: Vec<&str> =
        events.iter().filter(|e| e["type"] == "statement.closed").map(|e| e["id"].as_str().expect("id")).collect();
    assert_eq!(ids, [format!("statement.closed:sz_water:{day}")]);
    assert_eq!(statement_of(&receiver.got()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_partner_without_a_webhook_reads_the_closed_statement_too() {
    let app = TestApp::spawn().await.expect("app");
    let w = utility::register(&app, utility::water(10_000_000)).await;
    pay_bills(&app, &w, 1, "g").await;
    let mut later = app.api.clone();
    later.now = later.now.plus_days(2);
    // Two polls at once: the statement is closed once.
    let (a, b) = tokio::join!(
        feed(&later, &w.partner_id, &w.secret, "utility", 50),
        feed(&later, &w.partner_id, &w.secret, "utility", 50)
    );
    for events in [a, b] {
        let closed: Vec<&Value> = events.iter().filter(|e| e["type"] == "statement.closed").collect();
        assert_eq!(closed.len(), 1, "{events:?}");
        assert_eq!(closed[0]["data"]["lines"], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_cashier_endpoint_gets_each_redemption_and_reversal_once_whatever_the_till_retries() {
    use crate::merchant_coupons as coupons;
    let app = TestApp::spawn().await.expect("app");
    let cafe = coupons::onboard_merchant(&app, "wh_cafe", "futian", &["wh_1"]).await;
    coupons::create_campaign(&app, &coupons::campaign("wh_camp", &["wh_cafe"])).await;
    let receiver = Receiver::start().await;
    let r = app
        .partner(
            &cafe.partner_id,
            &cafe.secret,
            "PUT",
            "/api/coupons/partners/webhook",
            Some(&json!({ "url": receiver.url })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Three customers' coupons redeemed at once, each sent twice at once by the till; one reversed twice.
    let mut tills = tokio::task::JoinSet::new();
    for i in 0..3 {
        let app = app.api.clone();
        let cafe = cafe.clone();
        tills.spawn(async move {
            let customer = coupons::login(&app, &format!("wx_wh_cpn_{i}"), None).await;
            let claimed = coupons::claim(&app, &customer.token, "wh_camp", &format!("wh-claim-{i}")).await;
            assert_eq!(claimed.status, 201, "{:?}", claimed.body);
            let order = coupons::order(&coupons::str_of(&claimed.body, "code"), "wh_1", 3000, &format!("wh-mo-{i}"));
            let (a, b) = tokio::join!(coupons::redeem(&app, &cafe, &order), coupons::redeem(&app, &cafe, &order));
            assert_eq!((a.status, b.status), (201, 201), "{:?} {:?}", a.body, b.body);
            coupons::str_of(&a.body, "redemption_id")
        });
    }
    let redemptions = tills.join_all().await;
    for _ in 0..2 {
        let path = format!("/api/coupons/redemptions/{}/reverse", redemptions[0]);
        let r = app.partner(&cafe.partner_id, &cafe.secret, "POST", &path, None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }

    let got = receiver.got();
    let ids: Vec<String> = got.iter().map(|g| g.json()["id"].as_str().expect("id").to_owned()).collect();
    let events = feed(&app, &cafe.partner_id, &cafe.secret, "coupons", 50).await;
    let feed_ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().expect("id")).collect();
    assert_eq!(ids, feed_ids, "each event once, in feed order");
    for id in &redemptions {
        assert!(ids.contains(&format!("coupon.redeemed:{id}")), "{ids:?}");
    }
    assert!(ids.contains(&format!("coupon.reversed:{}", redemptions[0])), "{ids:?}");
    let verify = verifier(&cafe.secret);
    for g in &got {
        verify.verify(&g.body, &g.headers).expect("a valid Standard Webhooks signature");
    }
}
