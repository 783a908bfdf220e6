//! Scale and crash safety with real `scenefin-host` processes: a host killed with SIGKILL in the middle of a mixed
//! load and restarted on the same SQLite file loses no acknowledged write and applies nothing twice once the clients
//! have retried what went unanswered; two hosts on one Redis behave as one app under concurrent contention.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use scenefin_e2e::{
    Api, BANK_BIN, HostProcess, OPERATOR_TOKEN, ReliabilityRow, Reply, ledger_account, record_reliability, retryable,
    workspace,
};
use scenefin_host::testing::RedisServer;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::campus_card::{
    Partner, add_merchant, bind_card, by_card, customer, held, issue, member, my_card, onboard_school, owed,
    set_daily_limit, spend, top_up, transactions,
};
use crate::merchant_coupons::{Customer, campaign, claim, create_campaign, login_many, onboard_merchant, wallet, with};
use crate::utility_payments::{event, order, register, water};

/// How often a client sends a request again after store contention, a timeout or an in-flight duplicate.
const MAX_RETRIES: usize = 100;

/// A state directory for a host process, sharing the compiled-module cache of the in-process tests
/// (`target/scenefin-test-cache`): a process then starts in seconds instead of compiling every component.
fn state_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("state dir");
    let shared = workspace().join("target/scenefin-test-cache");
    std::fs::create_dir_all(&shared).expect("module cache");
    std::os::unix::fs::symlink(&shared, dir.path().join("cache")).expect("linking the module cache");
    dir
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// A request as a client would send it again: the same idempotency key, `pos_txn_id` or event id (partner calls are
/// signed afresh, with a new nonce, on every attempt).
#[derive(Clone)]
enum Req {
    Spend { pos: Partner, body: Value },
    Claim { token: String, campaign_id: String, key: String },
    Quote { token: String, body: Value },
    Order { token: String, quote_id: String, key: String },
    Notify { event: Value },
}

impl Req {
    async fn send(self, api: Api) -> Reply {
        match self {
            Req::Spend { pos, body } => spend(&api, &pos, &body).await,
            Req::Claim { token, campaign_id, key } => claim(&api, &token, &campaign_id, &key).await,
            Req::Quote { token, body } => api.send("POST", "/api/utility/quotes", Some(&body), Some(&token)).await,
            Req::Order { token, quote_id, key } => order(&api, &token, &quote_id, &key).await,
            Req::Notify { event } => api.notify("/api/utility/payments/notify", &event).await,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Req::Spend { .. } => "spend",
            Req::Claim { .. } => "claim",
            Req::Quote { .. } => "quote",
            Req::Order { .. } => "order",
            Req::Notify { .. } => "notify",
        }
    }
}

/// The host clients talk to, and its generation: 0 for a host that is going to be killed (a request it leaves
/// unanswered waits for the next generation), 1 for one that must stay up (the restarted host, the Redis hosts).
type Hosts = watch::Receiver<(u32, Api)>;

/// A final answer a client got, and from which host generation.
struct Answer {
    req: Req,
    reply: Reply,
    generation: u32,
    /// The host died under an earlier attempt of this request.
    interrupted: bool,
}

/// Acknowledgements (2xx) so far, by request kind, across clients.
type Progress = Arc<std::sync::Mutex<BTreeMap<&'static str, usize>>>;

/// Everything one client saw.
#[derive(Default)]
struct Log {
    progress: Progress,
    answers: Vec<Answer>,
    /// Requests that went unanswered at least once (the host died under them) and were sent again.
    interrupted: usize,
    /// Attempts answered with a retryable status (`503`, timeout, in-flight duplicate).
    retried: usize,
}

impl Log {
    /// Sends `req` until it gets a final answer, waiting for the restarted host when the current one is gone.
    async fn send(&mut self, hosts: &mut Hosts, req: Req) -> Reply {
        let mut interrupted = false;
        for attempt in 0..MAX_RETRIES {
            let (generation, api) = hosts.borrow().clone();
            // `Api` panics when a connection fails, as it does when the host is killed under it: the request runs
            // in its own task, so a dead host reads as no answer.
            match tokio::spawn(req.clone().send(api)).await {
                Ok(reply) if retryable(&reply) || reply.body["code"] == "idempotency_request_in_flight" => {
                    self.retried += 1;
                    tokio::time::sleep(Duration::from_millis(5 + 5 * attempt as u64)).await;
                }
                Ok(reply) => {
                    if reply.status < 300 {
                        *self.progress.lock().expect("progress").entry(req.kind()).or_default() += 1;
                    }
                    self.interrupted += usize::from(interrupted);
                    self.answers.push(Answer { req, reply: clone_reply(&reply), generation, interrupted });
                    return reply;
                }
                Err(e) if e.is_panic() && generation == 0 => {
                    interrupted = true;
                    let restarted = hosts.wait_for(|(g, _)| *g > generation);
                    tokio::time::timeout(Duration::from_secs(180), restarted)
                        .await
                        .expect("the host restarted")
                        .expect("hosts channel");
                }
                Err(e) => panic!("{} on host {generation}: {e}", req.kind()),
            }
        }
        panic!("{}: no final answer after {MAX_RETRIES} attempts", req.kind())
    }
}

fn clone_reply(r: &Reply) -> Reply {
    Reply { status: r.status, content_type: r.content_type.clone(), body: r.body.clone() }
}

/// What a client does until told to stop (finishing the payment it is in the middle of).
enum Script {
    /// A campus POS debiting the card, `pos_txn_id` `ld{client}-{n}`, 1 to 3 yuan.
    Pos { client: usize, pos: Partner, card: String },
    /// Customers claiming a coupon each, one after the other.
    Claims { customers: Vec<Customer>, campaign_id: String },
    /// A household paying its bills: quote, order, the gateway's notification.
    Bills { client: usize, token: String, bills: Vec<(String, String)>, bank_card: bool },
}

fn spend_amount(client: usize, n: usize) -> i64 {
    100 + ((client * 37 + n * 53) % 200) as i64
}

async fn run(script: Script, mut hosts: Hosts, stop: Arc<AtomicBool>, progress: Progress) -> Log {
    let mut log = Log { progress, ..Log::default() };
    match script {
        Script::Pos { client, pos, card } => {
            for n in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let body = by_card(&format!("ld{client}-{n}"), &card, spend_amount(client, n));
                log.send(&mut hosts, Req::Spend { pos: pos.clone(), body }).await;
            }
        }
        Script::Claims { customers, campaign_id } => {
            for c in customers {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let key = format!("ld-claim-{}", c.subject);
                log.send(&mut hosts, Req::Claim { token: c.token, campaign_id: campaign_id.clone(), key }).await;
            }
        }
        Script::Bills { client, token, bills, bank_card } => {
            for (bill_id, account_no) in bills {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let mut body = json!({"biller_id": "sz_water", "account_no": account_no, "bill_ids": [bill_id],
                                      "pay_with": "other"});
                if bank_card {
                    body["pay_with"] = "bank_card".into();
                    body["card_bin"] = BANK_BIN.into();
                }
                let q = log.send(&mut hosts, Req::Quote { token: token.clone(), body }).await;
                assert_eq!(q.status, 201, "quote {bill_id}: {:?}", q.body);
                let quote_id = q.body["quote_id"].as_str().expect("quote_id").to_owned();
                let key = format!("ld-order-{bill_id}");
                let placed = log.send(&mut hosts, Req::Order { token: token.clone(), quote_id, key }).await;
                assert_eq!(placed.status, 201, "order {bill_id}: {:?}", placed.body);
                let order_id = placed.body["order"]["order_id"].as_str().expect("order_id");
                let total = placed.body["order"]["total_fen"].as_i64().expect("total_fen");
                let at = hosts.borrow().1.now.to_rfc3339();
                let bin = bank_card.then_some("62258801");
                let paid = event(&format!("ld-evt-{client}-{bill_id}"), order_id, "succeeded", total, bin, &at);
                let n = log.send(&mut hosts, Req::Notify { event: paid }).await;
                assert_eq!((n.status, n.body["state"].as_str()), (200, Some("paid")), "{bill_id}: {:?}", n.body);
            }
        }
    }
    log
}

/// Counts of final answers by request kind and status, e.g. `spend 201`.
fn tally(answers: &[&Answer]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        *counts.entry(format!("{} {}", a.req.kind(), a.reply.status)).or_default() += 1;
    }
    counts
}

fn describe(counts: &BTreeMap<String, usize>) -> String {
    counts.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------------------------------------------------------
// kill -9 in the middle of a load

/// Campus POS clients, coupon-claiming clients and bill-paying clients.
const POS_CLIENTS: usize = 8;
const CLAIM_CLIENTS: usize = 8;
const BILL_CLIENTS: usize = 8;
const CUSTOMERS_PER_CLAIM_CLIENT: usize = 25;
const BILLS_PER_CLIENT: usize = 12;
/// The card's balance before the load, and the campaign's stock.
const CARD_FEN: i64 = 100_000;
const STOCK: i64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_load_loses_no_acknowledged_write() {
    scenefin_e2e::host_only!("scenefin-host processes (HostProcess)");
    let started = Instant::now();
    let state = state_dir();
    let sqlite = ["--state-dir", arg(state.path())];
    let mut host = HostProcess::start(&[&sqlite[..], &["--fault-delay", "2ms"]].concat()).await.expect("host");
    let app: &Api = &host;

    // A card holding 1,000 yuan, four campus merchants.
    let school = onboard_school(app, "scale_u", None).await;
    let mut merchants = Vec::new();
    for (id, kind) in [("scale_c1", "canteen"), ("scale_c2", "canteen"), ("scale_shop", "shop"), ("scale_pr", "print")]
    {
        merchants.push((id.to_owned(), add_merchant(app, &school, "scale_u", id, kind).await));
    }
    issue(app, &school, "scale_u", &[member("S1", "student", "李雷", "2030-07-31", "424242")]).await;
    let holder = customer(app, "wx_scale_holder").await;
    let card = bind_card(app, &holder, "scale_u", "S1", "424242").await;
    top_up(app, &holder, &card, CARD_FEN, "scale_topup").await;
    let raised = set_daily_limit(app, &holder, &card, 1_000_000).await;
    assert_eq!(raised.status, 200, "{:?}", raised.body);

    // A campaign with a stock of 100 for 200 customers, one each.
    onboard_merchant(app, "scale_cafe", "futian", &["sc_1"]).await;
    create_campaign(app, &with(campaign("scale100", &["scale_cafe"]), json!({"stock_total": STOCK}))).await;
    let claimers = login_many(app, "wx_scale_claim", CLAIM_CLIENTS * CUSTOMERS_PER_CLAIM_CLIENT).await;

    // 96 water bills on 96 accounts, twelve per household.
    let biller = register(app, water(1_000_000)).await;
    let mut bills = Vec::new();
    let mut amounts = BTreeMap::new();
    for i in 0..BILL_CLIENTS * BILLS_PER_CLIENT {
        let (bill_id, account_no, amount) = (format!("LD-{i:03}"), format!("{:08}", 31_000_000 + i), 5_000 + 37 * i);
        bills.push(json!({"bill_id": bill_id, "account_no": account_no, "period": "2026-10", "amount_fen": amount,
                          "due_date": "2026-11-30", "holder_name": "韩梅梅"}));
        amounts.insert(bill_id, (account_no, amount as i64));
    }
    let path = format!("/api/utility/billers/{}/bills", biller.id);
    let up = app.partner(&biller.partner_id, &biller.secret, "PUT", &path, Some(&json!({ "bills": bills }))).await;
    assert_eq!((up.status, up.body["created"].as_u64()), (200, Some(amounts.len() as u64)), "{:?}", up.body);
    let mut households = Vec::new();
    for client in 0..BILL_CLIENTS {
        households.push(customer(app, &format!("wx_scale_house_{client}")).await);
    }
    let set_up = started.elapsed();

    // The load: 24 clients at once.
    let mut scripts = Vec::new();
    for (client, (_, pos)) in merchants.iter().cycle().take(POS_CLIENTS).enumerate() {
        scripts.push(Script::Pos { client, pos: pos.clone(), card: card.clone() });
    }
    for customers in claimers.chunks(CUSTOMERS_PER_CLAIM_CLIENT) {
        scripts.push(Script::Claims { customers: customers.to_vec(), campaign_id: "scale100".into() });
    }
    let bill_list: Vec<(String, String)> = amounts.iter().map(|(id, (acc, _))| (id.clone(), acc.clone())).collect();
    for (client, (token, mine)) in households.iter().zip(bill_list.chunks(BILLS_PER_CLIENT)).enumerate() {
        scripts.push(Script::Bills { client, token: token.clone(), bills: mine.to_vec(), bank_card: client % 2 == 0 });
    }
    let (tx, hosts) = watch::channel((0, host.api.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Progress::default();
    let load_started = Instant::now();
    let mut clients = JoinSet::new();
    for script in scripts {
        clients.spawn(run(script, hosts.clone(), stop.clone(), progress.clone()));
    }

    // SIGKILL in the middle of it, then a restart on the same file, with the clients' clock two minutes on (an
    // outage takes time: an in-flight idempotency record the crash left is abandoned after 60 s).
    // (At least 1.5 s in, once every kind of request has been acknowledged at least once.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while progress.lock().expect("progress").len() < 5 {
        assert!(load_started.elapsed() < Duration::from_secs(60), "{:?}", progress.lock().expect("progress"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.kill9();
    let killed_after = load_started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let restarting = Instant::now();
    let restarted = HostProcess::start(&sqlite).await.expect("restarted host");
    let restart_time = restarting.elapsed();
    let mut after = restarted.api.clone();
    after.now = after.now.plus_secs(120);
    tx.send((1, after.clone())).expect("clients listening");

    let mut logs = Vec::new();
    while let Some(log) = clients.join_next().await {
        logs.push(log.expect("client"));
    }
    let answers: Vec<&Answer> = logs.iter().flat_map(|l| &l.answers).collect();
    let interrupted: usize = logs.iter().map(|l| l.interrupted).sum();
    let retried: usize = logs.iter().map(|l| l.retried).sum();
    let before: Vec<&Answer> = answers.iter().copied().filter(|a| a.generation == 0).collect();
    let acked_before = before.iter().filter(|a| (200..300).contains(&a.reply.status)).count();
    let (tally_before, tally_all) = (tally(&before), tally(&answers));
    eprintln!(
        "scale: set-up {set_up:?}, killed after {killed_after:?} of load, restart {restart_time:?}; before the \
         crash: {}; interrupted {interrupted}, retried {retried}; in all: {}",
        describe(&tally_before),
        describe(&tally_all)
    );
    assert!(interrupted > 0, "the kill caught requests in flight");
    for kind in ["spend", "claim", "quote", "order", "notify"] {
        assert!(before.iter().any(|a| a.req.kind() == kind && a.reply.status < 300), "no {kind} before the crash");
    }

    // Every request acknowledged before the crash, sent again to the restarted host, gets the same answer.
    let (_restarted, replay_to) = watch::channel((1, after.clone()));
    let mut replays = Log::default();
    for a in before.iter().filter(|a| a.reply.status < 300 && a.req.kind() != "quote") {
        let again = replays.send(&mut replay_to.clone(), a.req.clone()).await;
        let id = |r: &Reply| match a.req.kind() {
            "spend" => r.body["spend_id"].clone(),
            "claim" => r.body["coupon_id"].clone(),
            "order" => r.body["order"]["order_id"].clone(),
            _ => r.body["state"].clone(),
        };
        assert_eq!((again.status, id(&again)), (a.reply.status, id(&a.reply)), "{}: {:?}", a.req.kind(), again.body);
    }

    // Spends: every acknowledged one is on the card, once; nothing else is; the balance is exact.
    let mut spent: BTreeMap<String, i64> = BTreeMap::new();
    for a in answers.iter().filter(|a| a.req.kind() == "spend") {
        match a.reply.status {
            201 => {
                let id = a.reply.body["spend_id"].as_str().expect("spend_id").to_owned();
                let amount = a.reply.body["amount_fen"].as_i64().expect("amount_fen");
                assert!(spent.insert(id, amount).is_none(), "one spend per pos_txn_id: {:?}", a.reply.body);
            }
            _ => assert_eq!(a.reply.body["code"], "insufficient_balance", "{:?}", a.reply.body),
        }
    }
    let total_spent: i64 = spent.values().sum();
    let listed: BTreeSet<String> = transactions(&after, &holder, &card)
        .await
        .iter()
        .filter(|t| t["kind"] == "spend")
        .map(|t| t["txn_id"].as_str().expect("txn_id").to_owned())
        .collect();
    let expected: BTreeSet<String> = spent.keys().map(|id| format!("spend:{id}")).collect();
    assert_eq!(listed, expected, "the card's spends are exactly the acknowledged ones");
    let shown = my_card(&after, &holder, &card).await;
    assert_eq!(shown["balance_fen"].as_i64(), Some(CARD_FEN - total_spent), "{shown}");

    // Claims: every acknowledged coupon is in its wallet; issued = acknowledged ≤ stock; a claim is refused only for
    // want of stock (each customer claims once, with one key, however often it is sent).
    let by_token: BTreeMap<&str, &Customer> = claimers.iter().map(|c| (c.token.as_str(), c)).collect();
    let mut coupons = 0;
    let mut sold_out = 0;
    // A claim the kill interrupted after it took the customer's limit and before it activated the coupon leaves the
    // limit taken (merchant-coupons' documented imprecision: under-issuing, never twice): its retry is refused.
    let mut lost_to_crash = 0;
    let mut wrongly_refused = Vec::new();
    for a in answers.iter().filter(|a| a.req.kind() == "claim") {
        let Req::Claim { token, .. } = &a.req else { unreachable!() };
        let customer = by_token[token.as_str()];
        let mine = wallet(&after, customer, None).await;
        match (a.reply.status, a.reply.body["code"].as_str()) {
            (201, _) => {
                coupons += 1;
                assert!(mine.iter().any(|c| c["coupon_id"] == a.reply.body["coupon_id"]), "{mine:?}");
                assert_eq!(mine.len(), 1, "one coupon per customer: {mine:?}");
            }
            (422, Some("out_of_stock")) => {
                sold_out += 1;
                assert!(mine.is_empty(), "{mine:?}");
            }
            (422, Some("limit_reached")) if a.interrupted && mine.is_empty() => lost_to_crash += 1,
            _ => wrongly_refused.push(format!(
                "{} (host {}, {}): {} {:?}, wallet {mine:?}",
                customer.subject,
                a.generation,
                if a.generation == 0 { "before the crash" } else { "retried after the crash" },
                a.reply.status,
                a.reply.body["code"]
            )),
        }
    }
    let campaign_stats = crate::merchant_coupons::stats(&after, "scale100").await;
    assert!(
        wrongly_refused.is_empty(),
        "claims refused for another reason than stock: {wrongly_refused:#?}; coupons issued {coupons}, campaign \
         stats {campaign_stats}"
    );
    // The stock counter counts every coupon, plus at most the units the crash's lost claims took.
    let stock_taken = campaign_stats["issued"].as_i64().expect("issued");
    assert!(
        (coupons..=coupons + lost_to_crash).contains(&stock_taken),
        "{coupons} coupons, {lost_to_crash} lost: {campaign_stats}"
    );
    // Stock a crashed claim took stays taken: at most one unit per claim the crash lost.
    assert!(
        coupons <= STOCK && (sold_out == 0 || coupons + lost_to_crash >= STOCK),
        "{coupons} issued, {sold_out} sold out, {lost_to_crash} lost to the crash"
    );

    // Bills: each acknowledged order is paid, once; nothing else was ordered; every paid bill is settled once.
    let mut paid_orders: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for a in answers.iter().filter(|a| a.req.kind() == "order") {
        let Req::Order { key, .. } = &a.req else { unreachable!() };
        let order = &a.reply.body["order"];
        let id = order["order_id"].as_str().expect("order_id").to_owned();
        let bill_id = key.trim_start_matches("ld-order-").to_owned();
        assert!(paid_orders.insert(id, (bill_id, order["total_fen"].as_i64().expect("total"))).is_none());
    }
    let notified = answers.iter().filter(|a| a.req.kind() == "notify").count();
    assert_eq!(notified, paid_orders.len(), "every chain the crash interrupted was completed");
    let household_of =
        |bill_id: &str| bill_list.iter().position(|(b, _)| b == bill_id).expect("a bill") / BILLS_PER_CLIENT;
    for (client, token) in households.iter().enumerate() {
        let history = after.send("GET", "/api/utility/orders?limit=100", None, Some(token)).await;
        assert_eq!((history.status, &history.body["next"]), (200, &Value::Null), "{:?}", history.body);
        let items = history.body["items"].as_array().expect("items");
        for o in items {
            let id = o["order_id"].as_str().expect("order_id");
            assert!(paid_orders.contains_key(id), "household {client}: order {id} was never acknowledged: {o}");
            assert_eq!(o["state"], "paid", "{o}");
        }
        let acked = paid_orders.values().filter(|(bill, _)| household_of(bill) == client).count();
        assert_eq!(items.len(), acked, "household {client}: {items:?}");
    }
    let mut settled_fen = 0;
    for (bill_id, _) in paid_orders.values() {
        let (account_no, amount) = &amounts[bill_id];
        settled_fen += amount;
        let path = format!("/api/utility/bills?biller_id=sz_water&account_no={account_no}");
        let due = after.send("GET", &path, None, Some(&households[household_of(bill_id)])).await;
        assert_eq!(due.status, 200, "{:?}", due.body);
        let still_due = due.body["items"].as_array().expect("items").iter().any(|b| b["bill_id"] == bill_id.as_str());
        assert!(!still_due, "{bill_id} was paid: {:?}", due.body);
    }
    let bills_paid: BTreeSet<&String> = paid_orders.values().map(|(b, _)| b).collect();
    assert_eq!(bills_paid.len(), paid_orders.len(), "one paid order per bill");
    let utility_stats = after.send("GET", "/api/utility/billers/sz_water/stats", None, Some(OPERATOR_TOKEN)).await;
    // (Statistics count at most once: `kv::count_once` loses a count when the crash falls between its marker and its
    // increment, and never counts twice.)
    let stat = |name: &str| utility_stats.body[name].as_u64().unwrap_or_else(|| panic!("{name}")) as usize;
    let (orders_stat, bills_stat) = (stat("orders_paid"), stat("bills_paid"));
    for n in [orders_stat, bills_stat] {
        assert!(n <= paid_orders.len() && n + interrupted >= paid_orders.len(), "{:?}", utility_stats.body);
    }

    // The books: balanced, and each account says what the clients were told.
    let report = after.ledger_check().await;
    assert_eq!(held(&report, &card), CARD_FEN - total_spent);
    assert_eq!(merchants.iter().map(|(id, _)| owed(&report, id)).sum::<i64>(), total_spent);
    assert_eq!(-ledger_account(&report, "biller:sz_water:settlement"), settled_fen);
    let elapsed = started.elapsed();
    eprintln!("scale: crash test in {elapsed:?}");

    record_reliability(ReliabilityRow {
        test: "scale::kill_9_during_load_loses_no_acknowledged_write",
        load: &format!(
            "1 host process on SQLite (--fault-delay 2ms), {} concurrent clients ({POS_CLIENTS} campus POS on one \
             card, {CLAIM_CLIENTS} claiming for {} customers from a stock of {STOCK}, {BILL_CLIENTS} households \
             paying {} bills by quote/order/notify); final answers: {}",
            POS_CLIENTS + CLAIM_CLIENTS + BILL_CLIENTS,
            claimers.len(),
            amounts.len(),
            describe(&tally_all)
        ),
        faults: &format!(
            "kill -9 after {} ms of load, restart on the same state dir ({} ms)",
            killed_after.as_millis(),
            restart_time.as_millis()
        ),
        result: &format!(
            "acknowledged before the crash {acked_before} ({}), all present after the restart ({} of them \
             sent again: the same answer); {interrupted} requests unanswered at the crash, each retried to a final answer; card balance exact ({} - {} = {}), \
             {} spends listed once each; coupons issued {coupons} = acknowledged claims <= stock {STOCK} ({lost_to_crash} claims cut by the kill refused on retry with limit_reached and no coupon: under-issued, never doubled); {} bills \
             paid once each (biller stats: orders_paid {orders_stat}, bills_paid {bills_stat}); ledger balanced; {:.1} s in all",
            describe(&tally_before),
            replays.answers.len(),
            CARD_FEN,
            total_spent,
            CARD_FEN - total_spent,
            spent.len(),
            paid_orders.len(),
            elapsed.as_secs_f64()
        ),
    });
}

// ---------------------------------------------------------------------------------------------------------------
// Two processes, one Redis

/// The campaign's stock, the card's balance and what each spend takes.
const DUO_STOCK: usize = 50;
const DUO_CUSTOMERS: usize = 150;
/// Customers who also try a second claim, on the other host, with another key.
const DUO_GREEDY: usize = 30;
const DUO_CARD_FEN: i64 = 20_000;
const DUO_SPENDS: usize = 300;
const DUO_SPEND_FEN: i64 = 100;

async fn redis_host(config: &Path, state: &Path) -> HostProcess {
    HostProcess::start(&["--runtime-config-file", arg(config), "--state-dir", arg(state)]).await.expect("host")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_one_redis_behave_as_one_app() {
    scenefin_e2e::host_only!("scenefin-host processes (HostProcess)");
    let started = Instant::now();
    let redis = RedisServer::start().expect("redis-server");
    let config_dir = tempfile::tempdir().expect("config dir");
    let config = config_dir.path().join("runtime-config.toml");
    let toml = format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n", redis.url());
    std::fs::write(&config, toml).expect("runtime config");
    let (state_a, state_b) = (state_dir(), state_dir());
    let (a, b) = tokio::join!(redis_host(&config, state_a.path()), redis_host(&config, state_b.path()));
    let hosts = [a.api.clone(), b.api.clone()];

    // Set up through both: each step on whichever host, the next one on the other.
    let school = onboard_school(&a, "duo_u", None).await;
    let pos = [
        add_merchant(&a, &school, "duo_u", "duo_canteen", "canteen").await,
        add_merchant(&b, &school, "duo_u", "duo_shop", "shop").await,
    ];
    issue(&b, &school, "duo_u", &[member("D1", "student", "王芳", "2030-07-31", "135790")]).await;
    let holder = customer(&a, "wx_duo_holder").await;
    let card = bind_card(&b, &holder, "duo_u", "D1", "135790").await;
    top_up(&a, &holder, &card, DUO_CARD_FEN, "duo_topup").await;
    assert_eq!(my_card(&b, &holder, &card).await["balance_fen"].as_i64(), Some(DUO_CARD_FEN));
    onboard_merchant(&a, "duo_cafe", "nanshan", &["duo_1"]).await;
    let stock = json!({"stock_total": DUO_STOCK, "per_customer_limit": 1});
    create_campaign(&b, &with(campaign("duo50", &["duo_cafe"]), stock)).await;
    let customers = login_many(&a, "wx_duo", DUO_CUSTOMERS).await;
    let set_up = started.elapsed();

    // All at once: 180 claims and 300 spends, alternating between the hosts.
    let load_started = Instant::now();
    let mut tasks = JoinSet::new();
    let send = |tasks: &mut JoinSet<Log>, host: usize, req: Req| {
        let (_tx, mut rx) = watch::channel((1, hosts[host].clone()));
        tasks.spawn(async move {
            let mut log = Log::default();
            log.send(&mut rx, req).await;
            log
        });
    };
    for (i, c) in customers.iter().enumerate() {
        let req = |key: String| Req::Claim { token: c.token.clone(), campaign_id: "duo50".into(), key };
        send(&mut tasks, i % 2, req(format!("duo-{i}")));
        if i < DUO_GREEDY {
            send(&mut tasks, (i + 1) % 2, req(format!("duo-again-{i}")));
        }
    }
    for i in 0..DUO_SPENDS {
        let body = by_card(&format!("duo-{i}"), &card, DUO_SPEND_FEN);
        send(&mut tasks, i % 2, Req::Spend { pos: pos[i % 2].clone(), body });
    }
    // Meanwhile the holder watches the balance, on one host then the other: never negative.
    let over = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (hosts, holder, card, over) = (hosts.clone(), holder.clone(), card.clone(), over.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0.. {
                if over.load(Ordering::Relaxed) {
                    break;
                }
                seen.push(my_card(&hosts[i % 2], &holder, &card).await["balance_fen"].as_i64().expect("balance"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
    let mut answers = Vec::new();
    let mut retried = 0;
    while let Some(log) = tasks.join_next().await {
        let log = log.expect("client");
        retried += log.retried;
        answers.extend(log.answers);
    }
    let load_time = load_started.elapsed();
    over.store(true, Ordering::Relaxed);
    let seen = watcher.await.expect("watcher");
    assert!(!seen.is_empty() && seen.iter().all(|b| (0..=DUO_CARD_FEN).contains(b)), "{seen:?}");
    let answered: Vec<&Answer> = answers.iter().collect();
    let counts = tally(&answered);

    // Exactly the stock is claimed, one coupon per customer at most; the rest are refused for the right reason.
    let mut winners = BTreeSet::new();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for a in answers.iter().filter(|a| a.req.kind() == "claim") {
        let Req::Claim { token, .. } = &a.req else { unreachable!() };
        if a.reply.status == 201 {
            assert!(winners.insert(token.clone()), "a second coupon for one customer: {:?}", a.reply.body);
        } else {
            let code = a.reply.body["code"].as_str().unwrap_or_default().to_owned();
            assert!(
                a.reply.status == 422 && matches!(code.as_str(), "out_of_stock" | "limit_reached"),
                "{:?}",
                a.reply
            );
            *refusals.entry(code).or_default() += 1;
        }
    }
    assert_eq!(winners.len(), DUO_STOCK, "{counts:?}");
    // Exactly what the balance covers is spent.
    let mut spent = 0;
    for a in answers.iter().filter(|a| a.req.kind() == "spend") {
        match a.reply.status {
            201 => spent += 1,
            _ => assert_eq!((a.reply.status, a.reply.body["code"].as_str()), (422, Some("insufficient_balance"))),
        }
    }
    assert_eq!(spent, DUO_CARD_FEN / DUO_SPEND_FEN, "{counts:?}");

    // Both hosts read the same: card, transactions, campaign, wallets, books.
    let shown = [my_card(&a, &holder, &card).await, my_card(&b, &holder, &card).await];
    assert_eq!(shown[0], shown[1]);
    assert_eq!(shown[0]["balance_fen"].as_i64(), Some(0), "{}", shown[0]);
    let txns = [transactions(&a, &holder, &card).await, transactions(&b, &holder, &card).await];
    assert_eq!(txns[0], txns[1]);
    assert_eq!(txns[0].iter().filter(|t| t["kind"] == "spend").count() as i64, spent);
    let stats = [crate::merchant_coupons::stats(&a, "duo50").await, crate::merchant_coupons::stats(&b, "duo50").await];
    assert_eq!(stats[0], stats[1]);
    assert_eq!((stats[0]["issued"].as_u64(), stats[0]["remaining_stock"].as_u64()), (Some(DUO_STOCK as u64), Some(0)));
    for c in customers.iter().filter(|c| winners.contains(&c.token)) {
        let wallets = [wallet(&a, c, None).await, wallet(&b, c, None).await];
        assert_eq!((wallets[0].len(), &wallets[0]), (1, &wallets[1]), "{}", c.subject);
    }
    let books = [a.ledger_check().await, b.ledger_check().await];
    assert_eq!(books[0]["accounts"], books[1]["accounts"]);
    assert_eq!(held(&books[0], &card), 0);
    assert_eq!(owed(&books[0], "duo_canteen") + owed(&books[0], "duo_shop"), DUO_CARD_FEN);
    let elapsed = started.elapsed();
    eprintln!(
        "scale: two hosts: set-up {set_up:?}, load {load_time:?} ({}; {retried} retried), all in {elapsed:?}",
        describe(&counts)
    );

    record_reliability(ReliabilityRow {
        test: "scale::two_hosts_on_one_redis_behave_as_one_app",
        load: &format!(
            "2 host processes on one redis-server; at once, alternating between them: {} coupon claims by \
             {DUO_CUSTOMERS} customers ({DUO_GREEDY} of them claiming twice, once on each host) on a stock of \
             {DUO_STOCK}, limit 1 per customer, and {DUO_SPENDS} POS spends of {DUO_SPEND_FEN} fen from 2 merchants \
             on a card holding {DUO_CARD_FEN} fen",
            DUO_CUSTOMERS + DUO_GREEDY
        ),
        faults: "none",
        result: &format!(
            "{} claims issued (= stock), refused: {}; {spent} spends through, {} refused insufficient_balance; \
             balance never negative ({} reads across both hosts), final 0; {retried} attempts retried after \
             contention; card, transactions, campaign stats, wallets and ledger identical on both hosts; ledger \
             balanced; load {} ms, {:.1} s in all",
            winners.len(),
            describe(&refusals),
            DUO_SPENDS as i64 - spent,
            seen.len(),
            load_time.as_millis(),
            elapsed.as_secs_f64()
        ),
    });
}
