//! `cargo xtask bench`: load-tests the host binary with `wrk` and writes docs/BENCHMARKS.md.
//!
//! The host (`target/debug/scenefin-host`, the dev profile: wasmtime, cranelift, hyper, tokio and rusqlite are
//! compiled at opt-level 3 there) runs as a child process twice, on loopback:
//! 1. `tests/fixtures/spin.toml`: the fixture's echo at `/` is the "hello" floor;
//! 2. `spin.toml` on SQLite with a fresh state dir under `target/bench`, started cold (empty module cache) and then
//!    warm (same cache); the warm instance is seeded through the HTTP APIs and each route driven with
//!    `wrk -t2 -c32 -d10s --latency` (`SCENEFIN_BENCH_SECONDS` sets `-d`, 10 by default).
//!
//! Campus spends are signed POS calls (a fresh nonce and HMAC each): the requests are signed just before that route
//! runs, one per line of `target/bench/spend.tsv`, which the route's Lua script loads and walks, each wrk thread its
//! own share, never reusing one (a replay would be refused).
//!
//! Every number in the generated document comes from this run.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use scenefin_core::auth::{
    IdentityAssertion, Provider, SIGNATURE_WINDOW_SECS, partner_canonical, sign_assertion, sign_partner, sign_webhook,
};
use scenefin_core::clock::Timestamp;
use serde_json::{Value, json};

use crate::{cargo, run};

const OPERATOR_TOKEN: &str = "bench-operator-token";
const IDENTITY_SECRET: &str = "bench-identity-secret";
const SESSION_SECRET: &str = "bench-session-secret";
const GATEWAY_SECRET: &str = "whsec_YmVuY2gtZ2F0ZXdheS1rZXk=";
const BANK_BIN: &str = "622588";
const FIXTURE_ADDR: &str = "127.0.0.1:39871";
const APP_ADDR: &str = "127.0.0.1:39872";
/// wrk threads and connections.
const THREADS: usize = 2;
const CONNECTIONS: usize = 32;
/// How long wrk drives each route unless `SCENEFIN_BENCH_SECONDS` says otherwise.
const DEFAULT_SECONDS: u64 = 10;

/// Targets.
const MAX_WASM_BYTES: u64 = 1 << 20;
const READ_RATIO: f64 = 0.60;
const WRITE_RATIO: f64 = 0.25;
const MAX_P99_MS: f64 = 20.0;
const MAX_WARM_START_MS: f64 = 1000.0;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Floor,
    Read,
    Write,
}

struct Outcome {
    route: String,
    kind: Kind,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
    peak_rss_kib: u64,
    /// CPU time (user + system) the host process used while wrk ran, in milliseconds.
    host_cpu_ms: f64,
    /// How long wrk ran, in seconds.
    seconds: f64,
    /// Pre-signed requests used and prepared (campus spends).
    signed: Option<(u64, u64)>,
}

/// A host child process, killed (SIGTERM, then SIGKILL) when dropped.
struct Host {
    child: Child,
}

impl Host {
    fn start(root: &Path, manifest: &Path, listen: &str, state_dir: &Path, env: &[(&str, &str)]) -> Result<Self> {
        let bin = root.join("target/debug/scenefin-host");
        let log = std::fs::File::create(state_dir.join("host.log"))?;
        let mut cmd = Command::new(&bin);
        cmd.current_dir(root)
            .args(["up", "--from"])
            .arg(manifest)
            .args(["--listen", listen, "--kv", "sqlite", "--quiet", "--state-dir"])
            .arg(state_dir)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.terminate();
    }
}

pub fn bench(root: &Path) -> Result<()> {
    let seconds = bench_seconds()?;
    let args = wrk_args(seconds);
    ensure_wrk()?;
    run(Command::new(cargo()).current_dir(root).args(["build", "-p", "scenefin-host"]))?;
    let bench_dir = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&bench_dir);
    std::fs::create_dir_all(&bench_dir)?;
    let mut results = Vec::new();

    // 1. The floor: the fixture's echo.
    let fixture_state = bench_dir.join("fixture-state");
    std::fs::create_dir_all(&fixture_state)?;
    let fixture = Host::start(
        root,
        &root.join("tests/fixtures/spin.toml"),
        FIXTURE_ADDR,
        &fixture_state,
        &[("SPIN_VARIABLE_TOKEN", "bench")],
    )?;
    wait_ready(FIXTURE_ADDR, "/", None, Duration::from_secs(300))?;
    let hello = bench_dir.join("hello.lua");
    std::fs::write(&hello, "wrk.method = \"GET\"\n")?;
    let floor = drive(&fixture, &args, "GET /", Kind::Floor, FIXTURE_ADDR, "/", &hello)?;
    // No app route outruns the echo: signed spends for the floor's rate (and a margin) last the whole run.
    let spends = ((floor.rps * 1.25 * seconds as f64).ceil() as usize).clamp(MIN_SPENDS, MAX_SPENDS);
    results.push(floor);
    fixture.stop();

    // 2. The app: cold start, then warm start, seed, drive.
    let app_state = bench_dir.join("app-state");
    std::fs::create_dir_all(&app_state)?;
    let env = [
        ("SPIN_VARIABLE_OPERATOR_TOKEN", OPERATOR_TOKEN),
        ("SPIN_VARIABLE_IDENTITY_SECRET", IDENTITY_SECRET),
        ("SPIN_VARIABLE_SESSION_SECRET", SESSION_SECRET),
        ("SPIN_VARIABLE_GATEWAY_SECRET", GATEWAY_SECRET),
        ("SPIN_VARIABLE_BANK_CARD_BINS", BANK_BIN),
    ];
    let manifest = root.join("spin.toml");
    let started = Instant::now();
    let cold = Host::start(root, &manifest, APP_ADDR, &app_state, &env)?;
    wait_ready(APP_ADDR, "/api/ops/funnel", Some(OPERATOR_TOKEN), Duration::from_secs(300))?;
    let cold_ms = ms(started.elapsed());
    cold.stop();
    let started = Instant::now();
    let app = Host::start(root, &manifest, APP_ADDR, &app_state, &env)?;
    wait_ready(APP_ADDR, "/api/ops/funnel", Some(OPERATOR_TOKEN), Duration::from_secs(300))?;
    let warm_ms = ms(started.elapsed());
    let idle_rss_kib = rss_kib(app.pid()).unwrap_or(0);
    println!("bench: startup cold {cold_ms:.0} ms, warm {warm_ms:.0} ms; idle RSS {idle_rss_kib} KiB");

    let seeded = seed(spends)?;
    let routes = route_scripts(&bench_dir, &seeded)?;
    for (route, kind, path, script) in routes {
        let script = match script {
            Script::File(file) => file,
            // Signed now, so every timestamp is within the partner window for the whole run.
            Script::Spend => spend_script(&bench_dir, &seeded.campus)?,
        };
        results.push(drive(&app, &args, &route, kind, APP_ADDR, &path, &script)?);
    }
    app.stop();

    let sizes = wasm_sizes(root)?;
    let kv_ops = kv_ops_table(root);
    let mut doc = report(&results, &args, &sizes, cold_ms, warm_ms, idle_rss_kib)?;
    doc.push_str("\n## KV operations per route\n\n");
    doc.push_str(
        "Counted by the host in a steady state by the e2e test `kv_ops` (one request after a warm-up, nothing else \
         running); each route has a budget that test enforces. Partner authentication, idempotency records, ledger \
         postings and customer events are included.\n\n",
    );
    doc.push_str(&kv_ops);
    print!("{doc}");
    std::fs::write(root.join("docs/BENCHMARKS.md"), &doc)?;
    println!("bench: wrote docs/BENCHMARKS.md");
    Ok(())
}

/// `SCENEFIN_BENCH_SECONDS` (wrk's `-d`), 10 by default.
fn bench_seconds() -> Result<u64> {
    let Ok(text) = std::env::var("SCENEFIN_BENCH_SECONDS") else {
        return Ok(DEFAULT_SECONDS);
    };
    let seconds: u64 = text.trim().parse().with_context(|| format!("SCENEFIN_BENCH_SECONDS={text:?}"))?;
    // The signed spends carry the time they were signed at; the whole run must stay within the partner window.
    let limit = SIGNATURE_WINDOW_SECS.unsigned_abs() - 60;
    if !(1..=limit).contains(&seconds) {
        bail!("SCENEFIN_BENCH_SECONDS must be 1 to {limit} (pre-signed spends expire after {SIGNATURE_WINDOW_SECS} s)");
    }
    Ok(seconds)
}

fn wrk_args(seconds: u64) -> Vec<String> {
    vec![
        format!("-t{THREADS}"),
        format!("-c{CONNECTIONS}"),
        format!("-d{seconds}s"),
        "--latency".into(),
        "--timeout=5s".into(),
    ]
}

fn ensure_wrk() -> Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: installing wrk");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get").args(["install", "-y", "wrk"]))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

/// Polls `GET path` until it answers 200.
fn wait_ready(addr: &str, path: &str, bearer: Option<&str>, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if status_of(addr, path, bearer) == Some(200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the host on {addr} did not answer GET {path} with 200 (see target/bench/*/host.log)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The status of a `GET` over a fresh connection, if any.
fn status_of(addr: &str, path: &str, bearer: Option<&str>) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// An HTTP call through curl: status and JSON body (or `Null`).
fn call(method: &str, path: &str, body: Option<&Value>, headers: &[(&str, String)]) -> Result<(u16, Value)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, &format!("http://{APP_ADDR}{path}")]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    if let Some(body) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary", &body.to_string()]);
    }
    let out = cmd.output().context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status: u16 = code.trim().parse().with_context(|| format!("{method} {path}: no status ({text})"))?;
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn expect(what: &str, reply: (u16, Value)) -> Result<Value> {
    match reply {
        (200 | 201, body) => Ok(body),
        (status, body) => bail!("seeding {what}: {status} {body}"),
    }
}

fn operator(method: &str, path: &str, body: &Value) -> Result<Value> {
    expect(path, call(method, path, Some(body), &[("authorization", format!("Bearer {OPERATOR_TOKEN}"))])?)
}

static NONCE: AtomicU64 = AtomicU64::new(1);

fn partner(partner_id: &str, secret: &str, method: &str, path: &str, body: &Value) -> Result<Value> {
    let bytes = body.to_string();
    let ts = now_secs().to_string();
    let nonce = format!("bench{:016x}", NONCE.fetch_add(1, Ordering::Relaxed));
    let signature = sign_partner(secret, &partner_canonical(method, path, &ts, &nonce, bytes.as_bytes()));
    let headers =
        [("x-partner-id", partner_id.to_owned()), ("x-timestamp", ts), ("x-nonce", nonce), ("x-signature", signature)];
    expect(path, call(method, path, Some(body), &headers)?)
}

struct Seeded {
    token: String,
    /// Sessions of many customers: claims spread over them, as a campaign launch's crowd would.
    crowd: Vec<String>,
    quote_body: Value,
    campaign: String,
    campus: Campus,
}

/// A school's merchant POS, the cards it debits and the spends planned for them.
struct Campus {
    pos_id: String,
    pos_secret: String,
    cards: Vec<String>,
    /// One spend per pre-signed request: the card (an index into `cards`) and the amount.
    plan: Vec<(usize, i64)>,
}

const CAMPUS_PATH: &str = "/api/campus/spend";
/// How many cards (each bound by its own customer) the spends rotate over.
const CAMPUS_CARDS: usize = 50;
/// Bounds on the pre-signed spends: at most 10,000 per card, each at most 1 yuan, stays within the highest daily
/// limit a card takes (10,000 yuan).
const MIN_SPENDS: usize = 2_000;
const MAX_SPENDS: usize = 10_000 * CAMPUS_CARDS;
const MAX_DAILY_LIMIT_FEN: i64 = 1_000_000;
/// The largest top-up the API takes.
const MAX_TOPUP_FEN: i64 = 100_000;

/// How many customers the claim load is spread over.
const CROWD: usize = 200;

/// A session for customer `subject` (registering it).
fn login(subject: &str) -> Result<String> {
    let assertion = IdentityAssertion {
        provider: Provider::Wechat,
        subject: subject.into(),
        phone: None,
        card_fingerprint: None,
        iat: now_secs(),
    };
    let body = json!({"assertion": sign_assertion(IDENTITY_SECRET.as_bytes(), &assertion)});
    let session = expect("session", call("POST", "/api/sessions", Some(&body), &[])?)?;
    Ok(session["token"].as_str().context("session token")?.to_owned())
}

/// A customer session, a water biller with a bill bound to the customer, a coupon campaign that will not run out,
/// and a crowd of customers to claim it.
fn seed(spends: usize) -> Result<Seeded> {
    let token = login("bench_customer")?;
    let crowd = (0..CROWD).map(|i| login(&format!("bench_crowd_{i}"))).collect::<Result<Vec<_>>>()?;
    let auth = [("authorization", format!("Bearer {token}"))];

    let biller = operator(
        "POST",
        "/api/utility/billers",
        &json!({
            "id": "bench_water", "name": "Bench Water", "category": "water", "city": "shenzhen",
            "account_rule": {"min_len": 10, "max_len": 10, "charset": "digits"}, "exactness": "exact",
            "settlement_account": "6222000012345678",
            "discount": {"percent_bp": 500, "cap_fen": 1000, "budget_id": "bench_water_card", "budget_fen": 1_000_000_000}
        }),
    )?;
    let pid = biller["partner_id"].as_str().context("partner_id")?;
    let secret = biller["partner_secret"].as_str().context("partner_secret")?;
    let bills = json!({"bills": [{"bill_id": "BW-2026-11-0", "account_no": "8800112233", "period": "2026-11",
        "amount_fen": 12500, "due_date": "2027-01-31", "holder_name": "张三丰"}]});
    partner(pid, secret, "PUT", "/api/utility/billers/bench_water/bills", &bills)?;
    let bind = json!({"biller_id": "bench_water", "account_no": "8800112233", "alias": "home"});
    expect("account", call("POST", "/api/utility/accounts", Some(&bind), &auth)?)?;
    let quote_body = json!({"biller_id": "bench_water", "account_no": "8800112233", "bill_ids": ["BW-2026-11-0"],
        "pay_with": "bank_card", "card_bin": BANK_BIN});
    expect("quote", call("POST", "/api/utility/quotes", Some(&quote_body), &auth)?)?;

    operator(
        "POST",
        "/api/coupons/merchants",
        &json!({"merchant_id": "bench_cafe", "name": "Bench Cafe", "district": "nanshan",
            "stores": [{"store_id": "s1", "name": "Main"}]}),
    )?;
    operator(
        "POST",
        "/api/coupons/campaigns",
        &json!({
            "id": "bench_coffee", "title": "bench", "kind": "daily", "merchant_ids": ["bench_cafe"],
            "coupon": {"type": "fixed_off", "amount_fen": 500, "min_spend_fen": 1500}, "validity": {"days_after_claim": 7},
            "schedule": {"starts_at": "2026-01-01T00:00:00+08:00", "ends_at": "2028-01-01T00:00:00+08:00"},
            "stock_total": 10_000_000, "per_customer_limit": 10_000_000, "budget_fen": 10_000_000_000_i64,
            "applies_to": ["merchant"]
        }),
    )?;
    let campus = seed_campus(spends)?;
    Ok(Seeded { token, crowd, quote_body, campaign: "bench_coffee".into(), campus })
}

/// The `i`th planned spend: its card (in turn) and an amount from 1 fen to 1 yuan.
fn planned_spend(i: usize) -> (usize, i64) {
    let amount = 1 + (i as u64).wrapping_mul(2_654_435_761) % 100;
    (i % CAMPUS_CARDS, amount as i64)
}

/// A school, a canteen with POS credentials, and [`CAMPUS_CARDS`] cards issued in one batch, each bound by its own
/// customer, with the highest daily limit and topped up (by wallet, through the gateway's signed notification) with
/// at least what the planned spends will take from it.
fn seed_campus(spends: usize) -> Result<Campus> {
    let school = operator("POST", "/api/campus/schools", &json!({"id": "bench_uni", "name": "Bench University"}))?;
    let school_id = school["partner_id"].as_str().context("partner_id")?;
    let school_secret = school["partner_secret"].as_str().context("partner_secret")?;
    let merchant = json!({"merchant_id": "bench_canteen", "name": "Bench Canteen", "kind": "canteen"});
    let pos = partner(school_id, school_secret, "POST", "/api/campus/schools/bench_uni/merchants", &merchant)?;
    let members: Vec<Value> = (0..CAMPUS_CARDS)
        .map(|i| {
            json!({"member_no": format!("B{i:04}"), "kind": "student", "name": format!("Student {i}"),
                "valid_until": "2099-12-31", "activation_code": format!("code{i:04}")})
        })
        .collect();
    let issued = partner(
        school_id,
        school_secret,
        "PUT",
        "/api/campus/schools/bench_uni/members",
        &json!({ "members": members }),
    )?;
    if issued["rejected"] != json!([]) {
        bail!("seeding members: {issued}");
    }

    let plan: Vec<(usize, i64)> = (0..spends).map(planned_spend).collect();
    let mut need = [0i64; CAMPUS_CARDS];
    for &(card, amount) in &plan {
        need[card] += amount;
    }
    let mut cards = Vec::with_capacity(CAMPUS_CARDS);
    for (i, need) in need.iter().enumerate() {
        let auth = [("authorization", format!("Bearer {}", login(&format!("bench_student_{i}"))?))];
        let (member_no, code) = (format!("B{i:04}"), format!("code{i:04}"));
        let bind = json!({"school_id": "bench_uni", "member_no": member_no, "activation_code": code});
        let card = expect("bind", call("POST", "/api/campus/cards/bind", Some(&bind), &auth)?)?;
        let card_id = card["card_id"].as_str().context("card_id")?.to_owned();
        if *need > MAX_DAILY_LIMIT_FEN {
            bail!("card {card_id} would spend {need} fen, over the highest daily limit");
        }
        let limits = format!("/api/campus/cards/{card_id}/limits");
        let limit = json!({"daily_limit_fen": MAX_DAILY_LIMIT_FEN});
        expect("limits", call("PUT", &limits, Some(&limit), &auth)?)?;
        for n in 0..(need + MAX_TOPUP_FEN - 1) / MAX_TOPUP_FEN {
            top_up(&auth, &card_id, MAX_TOPUP_FEN, &format!("bench-topup-{i}-{n}"))?;
        }
        cards.push(card_id);
    }
    Ok(Campus {
        pos_id: pos["partner_id"].as_str().context("pos partner_id")?.to_owned(),
        pos_secret: pos["partner_secret"].as_str().context("pos partner_secret")?.to_owned(),
        cards,
        plan,
    })
}

/// A wallet top-up of a card: the order, then the gateway's signed notification that it was paid.
fn top_up(auth: &[(&str, String)], card_id: &str, amount_fen: i64, key: &str) -> Result<()> {
    let mut headers = auth.to_vec();
    headers.push(("idempotency-key", key.to_owned()));
    let body = json!({"card_id": card_id, "amount_fen": amount_fen, "pay_with": "other"});
    let placed = expect("top-up", call("POST", "/api/campus/topups", Some(&body), &headers)?)?;
    let order_id = placed["order"]["order_id"].as_str().context("top-up order_id")?;
    let now = now_secs();
    let paid_at = Timestamp::from_unix_secs(now).to_rfc3339();
    let event = json!({"event_id": format!("evt_{key}"), "order_id": order_id, "status": "succeeded",
        "paid_fen": amount_fen, "paid_at": paid_at, "instrument": {"type": "wallet"}});
    let id = format!("msg_evt_{key}");
    let signature = sign_webhook(GATEWAY_SECRET, &id, now, event.to_string().as_bytes())?;
    let headers = [("webhook-id", id), ("webhook-timestamp", now.to_string()), ("webhook-signature", signature)];
    let paid = expect("top-up payment", call("POST", "/api/campus/payments/notify", Some(&event), &headers)?)?;
    if paid["state"] != "paid" {
        bail!("seeding top-up {key}: {paid}");
    }
    Ok(())
}

/// A route's wrk script: written up front, or (the campus spends) signed just before the route runs.
enum Script {
    File(PathBuf),
    Spend,
}

type RouteScript = (String, Kind, String, Script);

/// One wrk Lua script per route.
fn route_scripts(dir: &Path, s: &Seeded) -> Result<Vec<RouteScript>> {
    let lua_str = |v: &str| format!("{v:?}");
    let bearer = |t: &str| format!("wrk.headers[\"Authorization\"] = {}\n", lua_str(&format!("Bearer {t}")));
    let me = format!("wrk.method = \"GET\"\n{}", bearer(&s.token));
    let quotes = format!(
        "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\n{}",
        lua_str(&s.quote_body.to_string()),
        bearer(&s.token)
    );
    // A unique Idempotency-Key per request (thread number, start time and a counter), and the crowd's sessions in
    // turn, so claims spread over many customers.
    let tokens: Vec<String> = s.crowd.iter().map(|t| lua_str(&format!("Bearer {t}"))).collect();
    let claim = format!(
        "local tokens = {{{}}}\nlocal n = 0\nlocal threads = 0\n\
         function setup(thread) threads = threads + 1; thread:set(\"tid\", threads) end\n\
         function init(args) prefix = string.format(\"bench-%d-%d-\", tid or 0, os.time()) end\n\
         function request()\n  n = n + 1\n  wrk.headers[\"Idempotency-Key\"] = prefix .. n\n  \
         wrk.headers[\"Authorization\"] = tokens[(n + (tid or 0) * 7) % #tokens + 1]\n  \
         return wrk.format(\"POST\", nil, nil, \"\")\nend\n",
        tokens.join(", ")
    );
    let funnel = format!("wrk.method = \"GET\"\n{}", bearer(OPERATOR_TOKEN));
    let mut out = Vec::new();
    for (name, route, kind, path, text) in [
        ("me", "GET /api/me".to_owned(), Kind::Read, "/api/me".to_owned(), me),
        ("quotes", "POST /api/utility/quotes".to_owned(), Kind::Write, "/api/utility/quotes".to_owned(), quotes),
        (
            "claim",
            format!("POST /api/coupons/campaigns/{}/claim", s.campaign),
            Kind::Write,
            format!("/api/coupons/campaigns/{}/claim", s.campaign),
            claim,
        ),
        ("funnel", "GET /api/ops/funnel".to_owned(), Kind::Read, "/api/ops/funnel".to_owned(), funnel),
    ] {
        let file = dir.join(format!("{name}.lua"));
        std::fs::write(&file, text)?;
        out.push((route, kind, path, Script::File(file)));
    }
    // The last write route, before the funnel.
    out.insert(3, (format!("POST {CAMPUS_PATH}"), Kind::Write, CAMPUS_PATH.to_owned(), Script::Spend));
    Ok(out)
}

/// Signs every planned spend now (its own `pos_txn_id` and nonce) into `spend.tsv` (timestamp, nonce, signature,
/// body: one request a line) and writes the Lua script that walks them: wrk thread `t` of `THREADS` takes the lines
/// `t, t + THREADS, …`, formats them once in `init`, and sends each once. If a thread runs out it stops (an entry
/// sent twice would be a refused replay); `done` prints how many were used.
fn spend_script(dir: &Path, c: &Campus) -> Result<PathBuf> {
    let started = Instant::now();
    let ts = now_secs().to_string();
    let mut tsv = String::with_capacity(c.plan.len() * 200);
    for (i, &(card, amount)) in c.plan.iter().enumerate() {
        let body =
            json!({"pos_txn_id": format!("bench-{i}"), "card_id": c.cards[card], "amount_fen": amount}).to_string();
        let nonce = format!("spend-{i:010}");
        let signature =
            sign_partner(&c.pos_secret, &partner_canonical("POST", CAMPUS_PATH, &ts, &nonce, body.as_bytes()));
        writeln!(tsv, "{ts}\t{nonce}\t{signature}\t{body}")?;
    }
    let data = dir.join("spend.tsv");
    std::fs::write(&data, tsv)?;
    println!("bench: signed {} spends in {:.0} ms", c.plan.len(), ms(started.elapsed()));
    let lua = format!(
        r#"local data = {data:?}
local total = {total}
local nthreads = {THREADS}
local pos = {pos:?}
local path = {path:?}
local threads = {{}}
local reqs = {{}}
local stopped = false
used = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  local mine = (tid or 1) - 1
  local n = 0
  for line in io.lines(data) do
    if n % nthreads == mine then
      local ts, nonce, sig, body = line:match("^(%d+)\t([%w_-]+)\t(%x+)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", path, {{
        ["Host"] = wrk.headers["Host"], ["Content-Type"] = "application/json", ["X-Partner-Id"] = pos,
        ["X-Timestamp"] = ts, ["X-Nonce"] = nonce, ["X-Signature"] = sig }}, body)
    end
    n = n + 1
  end
end

function request()
  if used < #reqs then
    used = used + 1
    return reqs[used]
  end
  -- Out of signed requests: stop this thread; what is returned here is never counted.
  if not stopped then
    stopped = true
    wrk.thread:stop()
  end
  return reqs[#reqs]
end

function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do
    n = n + t:get("used")
  end
  io.write(string.format("signed requests used: %d of %d\n", n, total))
end
"#,
        data = data.display().to_string(),
        total = c.plan.len(),
        pos = c.pos_id,
        path = CAMPUS_PATH,
    );
    let file = dir.join("spend.lua");
    std::fs::write(&file, lua)?;
    Ok(file)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) process `pid` has used, in milliseconds (`/proc/<pid>/stat`, USER_HZ = 100).
fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (user, system): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((user + system) as f64 * 10.0)
}

impl Outcome {
    /// Host CPU per completed request, in microseconds.
    fn cpu_us_per_request(&self) -> f64 {
        self.host_cpu_ms * 1000.0 / self.requests.max(1) as f64
    }

    /// Cores the host kept busy while wrk ran.
    fn host_cores(&self) -> f64 {
        self.host_cpu_ms / 1000.0 / self.seconds
    }
}

/// Runs wrk against one route while sampling the host's RSS.
fn drive(
    host: &Host,
    args: &[String],
    route: &str,
    kind: Kind,
    addr: &str,
    path: &str,
    script: &Path,
) -> Result<Outcome> {
    println!("bench: {route} ...");
    let pid = host.pid();
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let (cpu_before, started) = (cpu_ms(pid), Instant::now());
    let out = Command::new("wrk").args(args).arg("-s").arg(script).arg(format!("http://{addr}{path}")).output();
    let (cpu_after, seconds) = (cpu_ms(pid), started.elapsed().as_secs_f64());
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let out = out.context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed on {route}: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut o = parse_wrk(&text, route, kind, peak.load(Ordering::Relaxed))
        .with_context(|| format!("parsing wrk output for {route}:\n{text}"))?;
    o.host_cpu_ms = cpu_after.zip(cpu_before).map_or(f64::NAN, |(after, before)| after - before);
    o.seconds = seconds;
    println!(
        "bench: {route}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, non-2xx {}, socket errors {}, peak RSS {} KiB, \
         host CPU {:.0} us/request",
        o.rps,
        o.p50_ms,
        o.p99_ms,
        o.non_2xx,
        o.socket_errors,
        o.peak_rss_kib,
        o.cpu_us_per_request()
    );
    if let Some((used, total)) = o.signed {
        println!("bench: {route}: {used} of {total} signed requests used");
        if used >= total {
            eprintln!("bench: {route}: WARNING: the signed requests ran out; wrk's threads stopped early");
        }
    }
    Ok(o)
}

/// `635.91us`, `3.45ms`, `1.02s`, `2.00m` in milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return None,
    })
}

fn parse_wrk(text: &str, route: &str, kind: Kind, peak_rss_kib: u64) -> Option<Outcome> {
    let mut rps = None;
    let (mut p50, mut p99, mut requests) = (None, None, None);
    let (mut non_2xx, mut socket_errors) = (0, 0);
    let mut signed = None;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => rps = n.parse().ok(),
            ["50%", d] => p50 = duration_ms(d),
            ["99%", d] => p99 = duration_ms(d),
            [n, "requests", "in", ..] => requests = n.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse().ok()?,
            ["signed", "requests", "used:", used, "of", total] => {
                signed = Some((used.parse().ok()?, total.parse().ok()?))
            }
            ["Socket", "errors:", rest @ ..] => {
                socket_errors = rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum();
            }
            _ => {}
        }
    }
    Some(Outcome {
        route: route.to_owned(),
        kind,
        rps: rps?,
        p50_ms: p50?,
        p99_ms: p99?,
        requests: requests?,
        non_2xx,
        socket_errors,
        peak_rss_kib,
        host_cpu_ms: f64::NAN,
        seconds: f64::NAN,
        signed,
    })
}

/// Each spin.toml component's `.wasm` and its size in bytes.
fn wasm_sizes(root: &Path) -> Result<Vec<(String, u64)>> {
    let text = std::fs::read_to_string(root.join("spin.toml"))?;
    let doc: toml::Table = toml::from_str(&text)?;
    let mut out = Vec::new();
    if let Some(components) = doc.get("component").and_then(|c| c.as_table()) {
        for (id, c) in components {
            let source = c.get("source").and_then(|s| s.as_str()).context("component source")?;
            let size = std::fs::metadata(root.join(source)).with_context(|| source.to_owned())?.len();
            out.push((id.clone(), size));
        }
    }
    Ok(out)
}

fn machine() -> (String, String) {
    let cores = std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_else(|_| "?".into());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
    (cores, model)
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn mark(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// Runs the e2e test that counts KV operations per route and returns its table (or why there is none).
fn kv_ops_table(root: &Path) -> String {
    println!("bench: counting KV operations per route (cargo test ... kv_ops)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["test", "-q", "-p", "scenefin-e2e", "--test", "e2e", "kv_ops"])
        .status();
    match (status, std::fs::read_to_string(root.join("target/kv-ops.md"))) {
        (Ok(s), Ok(table)) if s.success() => table,
        (status, _) => format!("Not available: the `kv_ops` test did not pass ({status:?}).\n"),
    }
}

fn report(
    results: &[Outcome],
    args: &[String],
    sizes: &[(String, u64)],
    cold_ms: f64,
    warm_ms: f64,
    idle_rss_kib: u64,
) -> Result<String> {
    let floor = results.iter().find(|r| r.kind == Kind::Floor).map(|r| r.rps).unwrap_or(f64::NAN);
    let (cores, model) = machine();
    let mut d = String::new();
    writeln!(d, "# Benchmarks")?;
    writeln!(d)?;
    writeln!(d, "Generated by `cargo xtask bench` (xtask/src/bench.rs); do not edit by hand, run it again.")?;
    writeln!(d)?;
    writeln!(d, "- Date: {}", today())?;
    writeln!(d, "- Machine: {cores} cores (`nproc`), {model}")?;
    writeln!(
        d,
        "- Host: `target/debug/scenefin-host` (dev profile; its dependencies wasmtime, cranelift, hyper, tokio and \
         rusqlite are compiled at opt-level 3 in this workspace), components from `target/wasm32-wasip2/release`, \
         SQLite store, loopback."
    )?;
    writeln!(
        d,
        "- Load: `wrk {}` from a second process on the same machine (wrk and the host share the cores).",
        args.join(" ")
    )?;
    writeln!(
        d,
        "- Floor: the host's test fixture (`tests/fixtures/spin.toml`, `GET /`: the echo), served by the same binary \
         just before the app."
    )?;
    writeln!(
        d,
        "- Customers: `/api/me` and quotes from one customer; coupon claims rotate over {CROWD} customers, each request \
         with its own `Idempotency-Key` (a campaign launch's crowd, not one customer claiming thousands)."
    )?;
    for r in results {
        if let Some((used, total)) = r.signed {
            let ran_out = if used >= total { " (**ran out**: wrk's threads stopped early)" } else { "" };
            writeln!(
                d,
                "- Campus spends (`{}`): one canteen POS debiting {CAMPUS_CARDS} cards in turn (each bound by its own \
                 customer, topped up through a gateway-notified payment), 1 fen to 1 yuan each; every request signed \
                 just before the run with its own `pos_txn_id` and nonce, {total} prepared, {used} sent (completed or \
                 in flight when wrk stopped){ran_out}.",
                r.route
            )?;
        }
    }
    writeln!(d)?;
    writeln!(d, "## Routes")?;
    writeln!(d)?;
    writeln!(
        d,
        "| route | kind | requests | req/s | vs floor | p50 | p99 | non-2xx | socket errors | peak RSS | host CPU per \
         request | host cores busy |"
    )?;
    writeln!(d, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in results {
        let kind = match r.kind {
            Kind::Floor => "floor",
            Kind::Read => "read",
            Kind::Write => "write",
        };
        writeln!(
            d,
            "| `{}` | {kind} | {} | {:.0} | {:.0}% | {:.2} ms | {:.2} ms | {} | {} | {:.1} MiB | {:.0} µs | {:.2} |",
            r.route,
            r.requests,
            r.rps,
            100.0 * r.rps / floor,
            r.p50_ms,
            r.p99_ms,
            r.non_2xx,
            r.socket_errors,
            r.peak_rss_kib as f64 / 1024.0,
            r.cpu_us_per_request(),
            r.host_cores()
        )?;
    }
    writeln!(d)?;
    writeln!(d, "## Startup, memory, size")?;
    writeln!(d)?;
    writeln!(
        d,
        "- Startup to the first `200` (`GET /api/ops/funnel`), spin.toml: cold (empty module cache) {cold_ms:.0} ms, warm (second start, cached) {warm_ms:.0} ms."
    )?;
    writeln!(
        d,
        "- Host RSS: {:.1} MiB idle after the warm start; peak under load per route in the table (VmRSS sampled every 100 ms).",
        idle_rss_kib as f64 / 1024.0
    )?;
    writeln!(d)?;
    writeln!(d, "| component | .wasm size |")?;
    writeln!(d, "|---|---:|")?;
    for (id, size) in sizes {
        writeln!(d, "| {id} | {:.1} KiB |", *size as f64 / 1024.0)?;
    }
    writeln!(d)?;
    writeln!(d, "## Targets")?;
    writeln!(d)?;
    writeln!(d, "| target | measured | status |")?;
    writeln!(d, "|---|---|---|")?;
    let largest = sizes.iter().max_by_key(|(_, s)| *s);
    if let Some((id, size)) = largest {
        writeln!(
            d,
            "| every component ≤ 1 MiB | largest: {id}, {:.1} KiB | {} |",
            *size as f64 / 1024.0,
            mark(*size <= MAX_WASM_BYTES)
        )?;
    }
    for r in results.iter().filter(|r| r.kind != Kind::Floor) {
        let (want, what) = match r.kind {
            Kind::Read => (READ_RATIO, "read"),
            _ => (WRITE_RATIO, "write"),
        };
        let ratio = r.rps / floor;
        writeln!(
            d,
            "| `{}` ({what}) ≥ {:.0}% of the floor's req/s at c=32 | {:.0}% ({:.0} / {:.0}) | {} |",
            r.route,
            want * 100.0,
            ratio * 100.0,
            r.rps,
            floor,
            mark(ratio >= want)
        )?;
    }
    for r in results {
        writeln!(
            d,
            "| `{}` p99 ≤ {MAX_P99_MS:.0} ms | {:.2} ms | {} |",
            r.route,
            r.p99_ms,
            mark(r.p99_ms <= MAX_P99_MS)
        )?;
    }
    for r in results {
        let errors = r.non_2xx + r.socket_errors;
        writeln!(
            d,
            "| `{}` zero errors | {} non-2xx, {} socket | {} |",
            r.route,
            r.non_2xx,
            r.socket_errors,
            mark(errors == 0)
        )?;
    }
    writeln!(d, "| startup with cache ≤ 1 s | {warm_ms:.0} ms | {} |", mark(warm_ms <= MAX_WARM_START_MS))?;
    why_not_met(&mut d, results, largest)?;
    Ok(d)
}

/// For each target missed, the measured reason: host CPU per request against the floor's (throughput), Little's law
/// (latency), bytes over the limit (size). The profile behind the CPU figures is in docs/PERFORMANCE.md.
fn why_not_met(d: &mut String, results: &[Outcome], largest: Option<&(String, u64)>) -> Result<()> {
    let Some(floor) = results.iter().find(|r| r.kind == Kind::Floor) else { return Ok(()) };
    let floor_cpu = floor.cpu_us_per_request();
    let mut lines = Vec::new();
    for r in results.iter().filter(|r| r.kind != Kind::Floor) {
        let want = if r.kind == Kind::Read { READ_RATIO } else { WRITE_RATIO };
        let ratio = r.rps / floor.rps;
        if ratio < want {
            lines.push(format!(
                "- `{}` reaches {:.0}% of the floor, not {:.0}%: the floor's echo costs the host {floor_cpu:.0} µs of CPU \
                 per request and this route {:.0} µs ({:.1}×), with the host keeping {:.2} cores busy (the floor {:.2}): \
                 the run is CPU-bound, so the ratio is about the inverse of the CPU ratio. {:.0}% needs at most {:.0} µs \
                 per request.",
                r.route,
                ratio * 100.0,
                want * 100.0,
                r.cpu_us_per_request(),
                r.cpu_us_per_request() / floor_cpu,
                r.host_cores(),
                floor.host_cores(),
                want * 100.0,
                floor_cpu / want
            ));
        }
        if r.p99_ms > MAX_P99_MS {
            lines.push(format!(
                "- `{}` p99 is {:.1} ms, not ≤ {MAX_P99_MS:.0} ms: wrk keeps {CONNECTIONS} requests in flight, so by \
                 Little's law the mean latency is {CONNECTIONS} / {:.0} req/s = {:.1} ms; queueing behind a CPU-bound host, \
                 not any one slow step, sets the tail (p50 {:.1} ms).",
                r.route,
                r.p99_ms,
                r.rps,
                CONNECTIONS as f64 * 1000.0 / r.rps,
                r.p50_ms
            ));
        }
    }
    if let Some((id, size)) = largest.filter(|(_, size)| *size > MAX_WASM_BYTES) {
        lines.push(format!(
            "- `{id}` is {:.1} KiB over 1 MiB, already built with `opt-level = \"z\"`, LTO, one codegen unit and \
             stripped; the rest is its code (serde and the domain).",
            (*size - MAX_WASM_BYTES) as f64 / 1024.0
        ));
    }
    if lines.is_empty() {
        return Ok(());
    }
    writeln!(d)?;
    writeln!(d, "## Why the missed targets are missed")?;
    writeln!(d)?;
    writeln!(d, "From this run's numbers; where the CPU goes inside a request is profiled in docs/PERFORMANCE.md.")?;
    writeln!(d)?;
    for line in lines {
        writeln!(d, "{line}")?;
    }
    Ok(())
}
