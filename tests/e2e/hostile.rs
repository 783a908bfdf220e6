//! Hostile input end to end: a sweep of every operation in docs/openapi.yaml with generated malformed requests under
//! four kinds of credentials (none, a bad bearer, a customer session, the operator token), and targeted security
//! tests (forged, stale and replayed partner signatures, partners and customers reaching for others' resources,
//! operator routes without the token, oversized, deeply nested and non-UTF-8 bodies, separators in path keys).
//!
//! Every refusal must be a 4xx `application/problem+json` with a string `code`, nothing may answer 5xx, and a refused
//! request must write nothing (compared with [`TestApp::snapshot`]).

use std::collections::BTreeMap;
use std::time::Instant;

use reqwest::header::HeaderValue;
use scenefin_core::auth::{Provider, partner_canonical, sign_partner};
use scenefin_e2e::{OPERATOR_TOKEN, ReliabilityRow, Reply, TestApp, record_reliability};
use serde_json::{Value, json};

use crate::openapi::{Operation, document, operations, resolve, template_names};

/// Path parameter values a client should never send.
fn hostile_segments() -> Vec<String> {
    vec![
        "a:b".into(),
        "util:order:x".into(),
        "a%2Fb".into(),
        "..".into(),
        "%2E%2E".into(),
        "%2e%2e%2Fetc%2Fpasswd".into(),
        "名字".into(),
        "%F0%9F%92%A9".into(),
        "%FF%FE".into(),
        "%00".into(),
        "a%20b".into(),
        "x".repeat(4096),
        "-1".into(),
        "'%22%3Cscript%3E".into(),
    ]
}

/// Query values a client should never send.
fn hostile_query_values() -> Vec<String> {
    vec![
        "-1".into(),
        "0".into(),
        "99999999999999999999999".into(),
        "1e9".into(),
        "abc".into(),
        String::new(),
        "%FF".into(),
        "a:b".into(),
        "..%2F..%2Fx".into(),
        "z".repeat(3000),
    ]
}

/// A plausible value of a schema's type (not necessarily valid for the route): the base of the body variants.
fn sample(doc: &Value, schema: &Value, depth: usize) -> Value {
    let schema = resolve(doc, schema);
    if depth > 6 {
        return Value::Null;
    }
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(first) = schema[key].as_array().and_then(|b| b.first()) {
            return sample(doc, first, depth + 1);
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        let mut merged = serde_json::Map::new();
        for branch in all {
            if let Value::Object(m) = sample(doc, branch, depth + 1) {
                merged.extend(m);
            }
        }
        return Value::Object(merged);
    }
    let ty = match &schema["type"] {
        Value::String(t) => t.as_str(),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("null"),
        _ if schema["properties"].is_object() => "object",
        _ => "null",
    };
    match ty {
        "object" => Value::Object(
            schema["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), sample(doc, v, depth + 1)))
                .collect(),
        ),
        "array" => json!([sample(doc, &schema["items"], depth + 1)]),
        "string" => match schema["format"].as_str() {
            Some("date-time") => json!("2026-11-23T10:00:00+08:00"),
            Some("date") => json!("2026-11-23"),
            _ => json!("hostile1"),
        },
        "integer" | "number" => json!(1),
        "boolean" => json!(true),
        _ => Value::Null,
    }
}

/// A value of another JSON type than `schema` allows.
fn wrong_types(doc: &Value, schema: &Value) -> Vec<Value> {
    let schema = resolve(doc, schema);
    match schema["type"].as_str() {
        Some("string") => vec![json!(12345), json!(["hostile"])],
        Some("integer") => vec![json!("12"), json!(1.5), json!(99_999_999_999_999_999_999_999.0), json!(-1)],
        Some("number") => vec![json!("x"), json!({})],
        Some("boolean") => vec![json!("true"), json!(1)],
        Some("array") => vec![json!({"a": 1}), json!("[]"), json!([[[]], {"x": null}, 7])],
        Some("object") => vec![json!([1]), json!("{}")],
        _ => vec![json!([[{}]]), json!(true)],
    }
}

/// `depth` nested arrays.
fn nested(depth: usize) -> Vec<u8> {
    let mut body = "[".repeat(depth).into_bytes();
    body.extend(std::iter::repeat_n(b']', depth));
    body
}

/// A generated hostile request: its path (and query), extra headers and body.
struct Attempt {
    what: &'static str,
    path: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    idempotency_key: Option<String>,
}

/// The hostile requests for one operation, in a fixed order.
fn attempts(doc: &Value, op: &Operation) -> Vec<Attempt> {
    let params = op.parameters(doc);
    let names = template_names(op.path);
    let fill = |hostile: Option<(&str, &str)>| {
        let mut path = op.path.to_owned();
        for name in &names {
            let value = match hostile {
                Some((n, v)) if n == *name => v.to_owned(),
                _ => "hostile1".to_owned(),
            };
            path = path.replace(&format!("{{{name}}}"), &value);
        }
        path
    };
    let plain = fill(None);
    let with_body = matches!(op.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE");
    let attempt = |what, path: String, body: Vec<u8>| Attempt {
        what,
        path,
        body,
        content_type: Some("application/json"),
        idempotency_key: None,
    };
    let mut out = vec![attempt("plain", plain.clone(), Vec::new())];

    for name in &names {
        for value in hostile_segments() {
            out.push(attempt("path parameter", fill(Some((name, &value))), Vec::new()));
        }
    }

    let query: Vec<&str> = params.iter().filter(|p| p["in"] == "query").filter_map(|p| p["name"].as_str()).collect();
    for name in &query {
        for value in hostile_query_values() {
            out.push(attempt("query value", format!("{plain}?{name}={value}"), Vec::new()));
        }
        out.push(attempt("repeated query", format!("{plain}?{name}=1&{name}=2"), Vec::new()));
    }
    if op.method == "GET" {
        for q in ["limit=-5&cursor=%00garbage", "limit=1000000000000&cursor=..%2F..", "cursor=a:b:c&limit=abc", "&&=&"]
        {
            out.push(attempt("pagination", format!("{plain}?{q}"), Vec::new()));
        }
    }

    if with_body {
        let schema = op.op["requestBody"]["content"]["application/json"]["schema"].clone();
        let raw: Vec<(&'static str, Vec<u8>)> = vec![
            ("empty body", Vec::new()),
            ("non-JSON body", b"hostile=1&not=json".to_vec()),
            ("invalid UTF-8 body", vec![0xff, 0xfe, 0x80, b'{', 0xc3, 0x28]),
            ("invalid UTF-8 in a string", b"{\"id\":\"\xc3\x28\xff\"}".to_vec()),
            ("nested arrays", nested(10_000)),
            ("nested objects", format!("{}1{}", r#"{"a":"#.repeat(5_000), "}".repeat(5_000)).into_bytes()),
            ("trailing data", b"{} {}".to_vec()),
            ("null", b"null".to_vec()),
            ("array", b"[]".to_vec()),
            ("string", b"\"hostile\"".to_vec()),
            ("number", b"1e400".to_vec()),
            ("empty object", b"{}".to_vec()),
            ("unknown fields", br#"{"__proto__": {"admin": true}, "constructor": 1}"#.to_vec()),
            ("huge string", serde_json::to_vec(&json!({ "id": "x".repeat(200_000) })).expect("json")),
        ];
        for (what, body) in raw {
            let mut a = attempt(what, plain.clone(), body);
            if what == "non-JSON body" {
                a.content_type = Some("text/plain");
            }
            out.push(a);
        }
        let base = if schema.is_null() { json!({}) } else { sample(doc, &schema, 0) };
        let resolved = resolve(doc, &schema);
        let props: Vec<(String, Value)> =
            resolved["properties"].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
        let body_of = |v: &Value| serde_json::to_vec(v).expect("json");
        for (name, prop_schema) in &props {
            for wrong in wrong_types(doc, prop_schema).into_iter().chain([Value::Null]) {
                let mut b = base.clone();
                b[name.as_str()] = wrong;
                out.push(attempt("wrong type", plain.clone(), body_of(&b)));
            }
            if resolve(doc, prop_schema)["type"] == "string" {
                let mut b = base.clone();
                b[name.as_str()] = json!("長".repeat(5_000));
                out.push(attempt("long string", plain.clone(), body_of(&b)));
                let mut b = base.clone();
                b[name.as_str()] = json!("a:b\u{0}\u{202e}/..");
                out.push(attempt("separators and controls", plain.clone(), body_of(&b)));
            }
        }
        for required in resolved["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            let mut b = base.clone();
            if let Some(m) = b.as_object_mut() {
                m.remove(required);
            }
            out.push(attempt("missing required", plain.clone(), body_of(&b)));
        }
        let idempotent = params.iter().any(|p| p["in"] == "header" && p["name"] == "Idempotency-Key");
        if idempotent {
            for key in ["a:b:c".to_owned(), "k".repeat(1000), " ".to_owned(), "名字".to_owned()] {
                out.push(Attempt {
                    idempotency_key: Some(key),
                    ..attempt("idempotency key", plain.clone(), body_of(&base))
                });
            }
        }
    }
    out
}

/// Sends a request with raw header bytes (which may be non-ASCII).
async fn send(app: &TestApp, method: &str, path: &str, headers: &[(&str, Vec<u8>)], body: Vec<u8>) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req =
        app.client.request(method, format!("{}{path}", app.base)).header("x-scenefin-now", app.now.to_rfc3339());
    for (name, value) in headers {
        req = req.header(*name, HeaderValue::from_bytes(value).expect("header bytes"));
    }
    let res = req.body(body).send().await.unwrap_or_else(|e| panic!("{path}: request failed: {e}"));
    let status = res.status().as_u16();
    let content_type = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let bytes = res.bytes().await.expect("body");
    Reply { status, content_type, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
}

/// Words of parsers and Rust types that a problem's `detail` must never show a client.
const PARSER_WORDS: [&str; 14] = [
    "i64",
    "u32",
    "u64",
    "usize",
    "i32",
    "invalid type:",
    "invalid value:",
    "expected struct",
    " at line ",
    "serde",
    "invalid digit",
    "number too large",
    "ParseIntError",
    "EOF while",
];

/// What is wrong with a reply, if anything: a 5xx, a 4xx that is not problem+json with a string `code`, or a
/// `detail` in a parser's words instead of plain ones.
fn misbehaviour(r: &Reply) -> Option<String> {
    if r.status >= 500 {
        return Some(format!("{} {}", r.status, r.body));
    }
    let problem = r.content_type.starts_with("application/problem+json") && r.body["code"].is_string();
    if (400..500).contains(&r.status) && !problem {
        return Some(format!("{} {:?} {}", r.status, r.content_type, r.body));
    }
    let detail = r.body["detail"].as_str().unwrap_or_default();
    if (400..500).contains(&r.status) && PARSER_WORDS.iter().any(|w| detail.contains(w)) {
        return Some(format!("{}: detail not in plain words: {detail}", r.status));
    }
    None
}

/// Counts of one pass of the sweep.
#[derive(Default)]
struct Tally {
    requests: usize,
    by_class: BTreeMap<u16, usize>,
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_survives_hostile_input() {
    let doc = document();
    let ops = operations(&doc);
    let app = TestApp::spawn().await.expect("app starts");
    let login = app.login(Provider::Wechat, "wx_hostile_sweeper", None, None).await;
    let session = login.body["token"].as_str().expect("session token").to_owned();
    let plan: Vec<(String, Vec<Attempt>)> = ops.iter().map(|op| (op.method.clone(), attempts(&doc, op))).collect();
    let per_pass: usize = plan.iter().map(|(_, a)| a.len()).sum();

    let passes: [(&str, Option<String>, bool); 4] = [
        ("anonymous", None, true),
        ("bad bearer", Some("Bearer not-a-real-token".to_owned()), true),
        ("customer session", Some(format!("Bearer {session}")), false),
        ("operator token", Some(format!("Bearer {OPERATOR_TOKEN}")), false),
    ];
    let started = Instant::now();
    let mut tallies = Vec::new();
    let mut unchanged_passes = 0;
    let mut key = 0u64;
    for (pass, authorization, must_not_write) in &passes {
        let before = app.snapshot().await;
        let mut tally = Tally::default();
        for (method, attempts) in &plan {
            for a in attempts {
                key += 1;
                let mut headers: Vec<(&str, Vec<u8>)> = Vec::new();
                if let Some(auth) = authorization {
                    headers.push(("authorization", auth.clone().into_bytes()));
                }
                if let Some(ct) = a.content_type {
                    headers.push(("content-type", ct.as_bytes().to_vec()));
                }
                let idem = a.idempotency_key.clone().unwrap_or_else(|| format!("hostile-{key}"));
                headers.push(("idempotency-key", idem.into_bytes()));
                let r = send(&app, method, &a.path, &headers, a.body.clone()).await;
                tally.requests += 1;
                *tally.by_class.entry(r.status / 100 * 100).or_default() += 1;
                if let Some(bad) = misbehaviour(&r) {
                    let shown: String = a.path.chars().take(120).collect();
                    tally.failures.push(format!("[{pass}] {method} {shown} ({}): {bad}", a.what));
                }
            }
        }
        if *must_not_write {
            let after = app.snapshot().await;
            let changed: Vec<&String> = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .chain(before.keys().filter(|k| !after.contains_key(*k)))
                .collect();
            assert!(changed.is_empty(), "the {pass} pass wrote to the store: {changed:?}");
            unchanged_passes += 1;
        }
        tallies.push((*pass, tally));
    }
    let elapsed = started.elapsed();
    app.ledger_check().await;
    app.host.shutdown().await;

    let failures: Vec<&String> = tallies.iter().flat_map(|(_, t)| &t.failures).collect();
    assert!(
        failures.is_empty(),
        "{} hostile requests misbehaved (first 40):\n  {}",
        failures.len(),
        failures.iter().take(40).map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
    );
    let total: usize = tallies.iter().map(|(_, t)| t.requests).sum();
    let count = |class: u16| tallies.iter().map(|(_, t)| t.by_class.get(&class).copied().unwrap_or(0)).sum::<usize>();
    let (ok, refused, errors) = (count(200), count(400), count(500));
    assert_eq!(errors, 0);
    eprintln!("hostile sweep: {total} requests in {elapsed:?}: {ok} 2xx, {refused} 4xx, {errors} 5xx");
    let load = format!(
        "{} operations of docs/openapi.yaml × {per_pass} generated requests in all × {} credentials (none, bad bearer, \
         customer session, operator token), sequential",
        ops.len(),
        passes.len()
    );
    let result = format!(
        "{total} requests: 0 5xx, {refused} 4xx (all application/problem+json with a code), {ok} 2xx; store unchanged \
         by the {unchanged_passes} unauthenticated passes; ledger balanced"
    );
    record_reliability(ReliabilityRow {
        test: "hostile::every_documented_operation_survives_hostile_input",
        load: &load,
        faults: "wrong JSON types and null per body property, missing required properties, empty, non-JSON, \
                 invalid UTF-8, 10,000-deep arrays, 5,000-deep objects, 200 KB strings, path parameters with `:`, \
                 %2F, `..`, unicode, NUL, 4 KB values, bad limits and cursors, hostile Idempotency-Keys",
        result: &result,
    });
}

// ---------------------------------------------------------------------------------------------------------------
// Security: targeted refusals, each proven to write nothing

/// Partner credentials.
struct Partner {
    id: String,
    secret: String,
}

fn partner_of(r: &Reply) -> Partner {
    let field = |f: &str| r.body[f].as_str().unwrap_or_else(|| panic!("no {f} in {:?}", r.body)).to_owned();
    Partner { id: field("partner_id"), secret: field("partner_secret") }
}

/// Signed partner headers for a request, with the timestamp and nonce given.
fn signed(p: &Partner, method: &str, path: &str, body: &[u8], ts: i64, nonce: &str) -> Vec<(&'static str, Vec<u8>)> {
    let ts = ts.to_string();
    let signature = sign_partner(&p.secret, &partner_canonical(method, path, &ts, nonce, body));
    vec![
        ("x-partner-id", p.id.clone().into_bytes()),
        ("x-timestamp", ts.into_bytes()),
        ("x-nonce", nonce.as_bytes().to_vec()),
        ("x-signature", signature.into_bytes()),
        ("content-type", b"application/json".to_vec()),
    ]
}

fn bearer(token: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![("authorization", format!("Bearer {token}").into_bytes()), ("content-type", b"application/json".to_vec())]
}

/// A hostile body: what it is, as sent to an operator route, a partner route and an anonymous route, and the
/// expected status and problem code.
type BodyCase = (&'static str, Vec<u8>, Vec<u8>, Vec<u8>, u16, &'static str);

/// The refusals checked so far, and the ones that were not as expected.
#[derive(Default)]
struct Checks {
    count: usize,
    wrong: Vec<String>,
}

impl Checks {
    /// `r` must be `status` with problem code `code`, and the store must be as it was `before`.
    async fn refused(
        &mut self,
        app: &TestApp,
        before: &BTreeMap<String, Vec<u8>>,
        what: &str,
        r: &Reply,
        status: u16,
        code: &str,
    ) {
        self.count += 1;
        if (r.status, r.body["code"].as_str()) != (status, Some(code)) {
            self.wrong.push(format!("{what}: expected {status} {code}, got {} {}", r.status, r.body));
        } else if !r.content_type.starts_with("application/problem+json") {
            self.wrong.push(format!("{what}: content type {:?}", r.content_type));
        }
        let after = app.snapshot().await;
        if &after != before {
            let changed: Vec<&String> = after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
            self.wrong.push(format!("{what}: wrote {changed:?}"));
        }
    }
}

fn biller(id: &str) -> Value {
    json!({
        "id": id, "name": format!("{id} water"), "category": "water", "city": "shenzhen",
        "account_rule": {"min_len": 8, "max_len": 10, "charset": "digits"},
        "exactness": "exact", "settlement_account": "6222000011112222"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_get_the_right_problem_and_write_nothing() {
    let app = TestApp::spawn().await.expect("app starts");
    let now = app.now.unix_secs();
    let op = |body: &Value| serde_json::to_vec(body).expect("json");

    // Two billers, two schools, two customers; the first customer has a utility order and a campus card.
    let mut billers = Vec::new();
    for id in ["hx_water_a", "hx_water_b"] {
        let r = app.send("POST", "/api/utility/billers", Some(&biller(id)), Some(OPERATOR_TOKEN)).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        billers.push(partner_of(&r));
    }
    let (biller_a, biller_b) = (&billers[0], &billers[1]);
    let bills = json!({"bills": [{"bill_id": "HB-1", "account_no": "1234567890", "period": "2026-10", "amount_fen": 8650, "due_date": "2026-11-30", "holder_name": "张三丰"}]});
    let bills_a = "/api/utility/billers/hx_water_a/bills";
    let bills_b = "/api/utility/billers/hx_water_b/bills";
    for (p, path) in [(biller_a, bills_a), (biller_b, bills_b)] {
        let r = app.partner(&p.id, &p.secret, "PUT", path, Some(&bills)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let c1 = app.login(Provider::Wechat, "wx_hostile_c1", None, None).await;
    let c1_token = c1.body["token"].as_str().expect("token").to_owned();
    let c1_id =
        c1.body["customer"]["customer_id"].as_str().or(c1.body["customer_id"].as_str()).unwrap_or("unknown").to_owned();
    let c2 = app.login(Provider::Wechat, "wx_hostile_c2", None, None).await;
    let c2_token = c2.body["token"].as_str().expect("token").to_owned();
    let bind = json!({"biller_id": "hx_water_a", "account_no": "1234567890"});
    let r = app.send("POST", "/api/utility/accounts", Some(&bind), Some(&c1_token)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let quote =
        json!({"biller_id": "hx_water_a", "account_no": "1234567890", "bill_ids": ["HB-1"], "pay_with": "other"});
    let q = app.send("POST", "/api/utility/quotes", Some(&quote), Some(&c1_token)).await;
    assert_eq!(q.status, 201, "{:?}", q.body);
    let placed =
        app.place_order("/api/utility/orders", &c1_token, q.body["quote_id"].as_str().expect("quote"), "hx-1").await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let order_id = placed.body["order"]["order_id"].as_str().expect("order id").to_owned();

    let mut schools = Vec::new();
    let mut cards = Vec::new();
    for id in ["hx_school_a", "hx_school_b"] {
        let r =
            app.send("POST", "/api/campus/schools", Some(&json!({"id": id, "name": id})), Some(OPERATOR_TOKEN)).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let school = partner_of(&r);
        let members = json!({"members": [{"member_no": "20260001", "kind": "student", "name": "学生一", "valid_until": "2031-07-31", "activation_code": "100001"}]});
        let r = app
            .partner(&school.id, &school.secret, "PUT", &format!("/api/campus/schools/{id}/members"), Some(&members))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        cards.push(r.body["cards"][0]["card_id"].as_str().expect("card").to_owned());
        schools.push(school);
    }
    let (school_a, card_b) = (&schools[0], &cards[1]);
    let bind = json!({"school_id": "hx_school_a", "member_no": "20260001", "activation_code": "100001"});
    let r = app.send("POST", "/api/campus/cards/bind", Some(&bind), Some(&c1_token)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let card_a = r.body["card_id"].as_str().expect("card id").to_owned();

    let mut checks = Checks::default();

    // Partner signatures: tampered, stale, from the future, replayed, with the wrong secret or an unknown partner,
    // and re-aimed at another path or body after signing.
    let body = op(&bills);
    let mut h = signed(biller_a, "PUT", bills_a, &body, now, "hostile-nonce-0001");
    let sig = String::from_utf8(h[3].1.clone()).expect("hex");
    let flipped: String =
        sig.chars().enumerate().map(|(i, c)| if i == 10 { if c == '0' { '1' } else { '0' } } else { c }).collect();
    h[3].1 = flipped.into_bytes();
    let before = app.snapshot().await;
    let r = send(&app, "PUT", bills_a, &h, body.clone()).await;
    checks.refused(&app, &before, "tampered signature", &r, 401, "invalid_signature").await;
    let r = send(
        &app,
        "PUT",
        bills_a,
        &signed(biller_a, "PUT", bills_a, &body, now - 301, "hostile-nonce-0002"),
        body.clone(),
    )
    .await;
    checks.refused(&app, &before, "stale timestamp", &r, 401, "signature_expired").await;
    let r = send(
        &app,
        "PUT",
        bills_a,
        &signed(biller_a, "PUT", bills_a, &body, now + 3600, "hostile-nonce-0003"),
        body.clone(),
    )
    .await;
    checks.refused(&app, &before, "timestamp from the future", &r, 401, "signature_expired").await;
    let wrong_secret = Partner { id: biller_a.id.clone(), secret: biller_b.secret.clone() };
    let r = send(
        &app,
        "PUT",
        bills_a,
        &signed(&wrong_secret, "PUT", bills_a, &body, now, "hostile-nonce-0004"),
        body.clone(),
    )
    .await;
    checks.refused(&app, &before, "signed with another partner's secret", &r, 401, "invalid_signature").await;
    let unknown = Partner { id: "pt_unknown".into(), secret: "whatever".into() };
    let r =
        send(&app, "PUT", bills_a, &signed(&unknown, "PUT", bills_a, &body, now, "hostile-nonce-0005"), body.clone())
            .await;
    checks.refused(&app, &before, "unknown partner", &r, 401, "invalid_signature").await;
    let r =
        send(&app, "PUT", bills_b, &signed(biller_a, "PUT", bills_a, &body, now, "hostile-nonce-0006"), body.clone())
            .await;
    checks.refused(&app, &before, "signature re-aimed at another path", &r, 401, "invalid_signature").await;
    let other_body = op(&json!({"bills": []}));
    let r = send(&app, "PUT", bills_a, &signed(biller_a, "PUT", bills_a, &body, now, "hostile-nonce-0007"), other_body)
        .await;
    checks.refused(&app, &before, "signature over another body", &r, 401, "invalid_signature").await;
    let mut bad_nonce = signed(biller_a, "PUT", bills_a, &body, now, "a:b");
    bad_nonce[2].1 = b"a:b".to_vec();
    let r = send(&app, "PUT", bills_a, &bad_nonce, body.clone()).await;
    checks.refused(&app, &before, "nonce with a separator", &r, 401, "invalid_nonce").await;
    let replayed = signed(biller_a, "PUT", bills_a, &body, now, "hostile-nonce-0008");
    let first = send(&app, "PUT", bills_a, &replayed, body.clone()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let before = app.snapshot().await;
    let r = send(&app, "PUT", bills_a, &replayed, body.clone()).await;
    checks.refused(&app, &before, "replayed nonce", &r, 401, "nonce_replayed").await;

    // A partner on another partner's resources.
    let r = app.partner(&biller_a.id, &biller_a.secret, "PUT", bills_b, Some(&bills)).await;
    checks.refused(&app, &before, "biller A uploads biller B's bills", &r, 403, "forbidden").await;
    for path in ["/api/utility/billers/hx_water_b/settlement?date=2026-11-23", "/api/utility/billers/hx_water_b/stats"]
    {
        let r = app.partner(&biller_a.id, &biller_a.secret, "GET", path, None).await;
        checks.refused(&app, &before, &format!("biller A reads {path}"), &r, 403, "forbidden").await;
    }
    let members = json!({"members": [{"member_no": "20269999", "kind": "student", "name": "冒名", "valid_until": "2031-07-31", "activation_code": "999999"}]});
    let r = app
        .partner(&school_a.id, &school_a.secret, "PUT", "/api/campus/schools/hx_school_b/members", Some(&members))
        .await;
    checks.refused(&app, &before, "school A uploads school B's members", &r, 403, "forbidden").await;
    let merchant = json!({"merchant_id": "hx_canteen", "name": "Canteen", "kind": "canteen"});
    let r = app
        .partner(&school_a.id, &school_a.secret, "POST", "/api/campus/schools/hx_school_b/merchants", Some(&merchant))
        .await;
    checks.refused(&app, &before, "school A adds a merchant to school B", &r, 403, "forbidden").await;
    let path = format!("/api/campus/schools/hx_school_b/cards/{card_b}/freeze");
    let r = app.partner(&school_a.id, &school_a.secret, "POST", &path, None).await;
    checks.refused(&app, &before, "school A freezes school B's card", &r, 403, "forbidden").await;
    let path = format!("/api/campus/schools/hx_school_a/cards/{card_b}/freeze");
    let r = app.partner(&school_a.id, &school_a.secret, "POST", &path, None).await;
    checks
        .refused(&app, &before, "school A freezes school B's card through its own path", &r, 404, "card_not_found")
        .await;
    let r = app.partner(&school_a.id, &school_a.secret, "GET", "/api/campus/schools/hx_school_b/stats", None).await;
    checks.refused(&app, &before, "school A reads school B's stats", &r, 403, "forbidden").await;

    // A customer on another customer's order and card.
    let r = app.send("GET", &format!("/api/utility/orders/{order_id}"), None, Some(&c2_token)).await;
    checks.refused(&app, &before, "customer 2 reads customer 1's order", &r, 404, "order_not_found").await;
    let r = app.send("GET", &format!("/api/campus/cards/{card_a}/transactions"), None, Some(&c2_token)).await;
    checks.refused(&app, &before, "customer 2 reads customer 1's transactions", &r, 404, "card_not_found").await;
    let limits = json!({"daily_limit_fen": 1});
    let r = app.send("PUT", &format!("/api/campus/cards/{card_a}/limits"), Some(&limits), Some(&c2_token)).await;
    checks.refused(&app, &before, "customer 2 sets customer 1's card limit", &r, 404, "card_not_found").await;
    for action in ["report-lost", "unfreeze", "reissue", "pay-code"] {
        let r =
            send(&app, "POST", &format!("/api/campus/cards/{card_a}/{action}"), &bearer(&c2_token), Vec::new()).await;
        checks
            .refused(&app, &before, &format!("customer 2 {action}s customer 1's card"), &r, 404, "card_not_found")
            .await;
    }
    let mut h = bearer(&c2_token);
    h.push(("idempotency-key", b"hx-topup-1".to_vec()));
    let topup = op(&json!({"card_id": card_a, "amount_fen": 1000}));
    let r = send(&app, "POST", "/api/campus/topups", &h, topup).await;
    checks.refused(&app, &before, "customer 2 tops up customer 1's card", &r, 404, "card_not_found").await;
    let r = app.send("POST", &format!("/api/utility/orders/{order_id}/refund"), None, Some(&c2_token)).await;
    // A bearer credential that is no operator's (staff session or break-glass token): refused as an operator call.
    checks.refused(&app, &before, "customer 2 refunds customer 1's order", &r, 401, "invalid_operator_token").await;
    let mine = app.send("GET", "/api/utility/orders", None, Some(&c2_token)).await;
    assert_eq!((mine.status, &mine.body["items"]), (200, &json!([])), "customer 2 lists no order of customer 1");

    // Operator routes without the token, with a wrong one, and with a customer's session.
    let operator_routes = [
        ("POST", "/api/utility/billers".to_owned(), op(&biller("hx_water_c"))),
        ("POST", "/api/campus/schools".to_owned(), op(&json!({"id": "hx_school_c", "name": "c"}))),
        ("POST", format!("/api/ops/customers/{c1_id}/tags"), op(&json!({"tag": "vip"}))),
        ("POST", "/api/channels".to_owned(), op(&json!({"code": "HX1", "channel": "branch"}))),
        ("GET", "/api/ops/ledger/check".to_owned(), Vec::new()),
        ("GET", "/api/ops/funnel".to_owned(), Vec::new()),
        ("GET", format!("/api/ops/customers/{c1_id}"), Vec::new()),
    ];
    for (method, path, body) in &operator_routes {
        let r = send(&app, method, path, &[("content-type", b"application/json".to_vec())], body.clone()).await;
        checks
            .refused(&app, &before, &format!("{method} {path} without a token"), &r, 401, "missing_credentials")
            .await;
        let r = send(&app, method, path, &bearer("not-the-operator-token"), body.clone()).await;
        checks
            .refused(&app, &before, &format!("{method} {path} with a wrong token"), &r, 401, "invalid_operator_token")
            .await;
        let r = send(&app, method, path, &bearer(&c1_token), body.clone()).await;
        checks
            .refused(&app, &before, &format!("{method} {path} with a session"), &r, 401, "invalid_operator_token")
            .await;
        let near = format!("{OPERATOR_TOKEN}x");
        let r = send(&app, method, path, &bearer(&near), body.clone()).await;
        checks
            .refused(
                &app,
                &before,
                &format!("{method} {path} with a near-miss token"),
                &r,
                401,
                "invalid_operator_token",
            )
            .await;
    }

    // Bodies: over the host's 1 MiB, over a route's 64 KiB, deeply nested, not UTF-8; as an operator and as a
    // correctly signed partner.
    let over_host_limit = op(&json!({"name": "x".repeat((1 << 20) + 1)}));
    let over = |limit: usize| op(&json!({"name": "x".repeat(limit + 1)}));
    let deep_arrays = nested(10_000);
    // Nested objects under the route's first field, as deep as fits in 64 KiB: refused at the first level.
    let deep_objects = |field: &str| {
        let open = format!(r#"{{"{field}":"#);
        let depth = 50_000 / open.len();
        format!("{}1{}", open.repeat(depth), "}".repeat(depth)).into_bytes()
    };
    let not_utf8 = b"{\"\xff\xfe\":\"\xc3\x28\"}".to_vec();
    // (what, operator's body, partner's body, anonymous body, status, code)
    let bodies: Vec<BodyCase> = vec![
        (
            "a body over 1 MiB",
            over_host_limit.clone(),
            over_host_limit.clone(),
            over_host_limit,
            413,
            "payload_too_large",
        ),
        ("a body over the route's limit", over(64 * 1024), over(512 * 1024), over(64 * 1024), 413, "payload_too_large"),
        ("10,000 nested arrays", deep_arrays.clone(), deep_arrays.clone(), deep_arrays, 400, "validation_failed"),
        (
            "deeply nested objects",
            deep_objects("id"),
            deep_objects("bills"),
            deep_objects("assertion"),
            400,
            "validation_failed",
        ),
        ("invalid UTF-8", not_utf8.clone(), not_utf8.clone(), not_utf8, 400, "malformed_json"),
    ];
    for (i, (what, operator_body, partner_body, anonymous_body, status, code)) in bodies.into_iter().enumerate() {
        let r = send(&app, "POST", "/api/utility/billers", &bearer(OPERATOR_TOKEN), operator_body).await;
        checks.refused(&app, &before, &format!("operator sends {what}"), &r, status, code).await;
        let h = signed(biller_a, "PUT", bills_a, &partner_body, now, &format!("hostile-body-{i:04}"));
        let r = send(&app, "PUT", bills_a, &h, partner_body).await;
        checks.refused(&app, &before, &format!("partner sends {what}"), &r, status, code).await;
        let json_header = [("content-type", b"application/json".to_vec())];
        let r = send(&app, "POST", "/api/sessions", &json_header, anonymous_body).await;
        checks.refused(&app, &before, &format!("anonymous login with {what}"), &r, status, code).await;
    }

    // Separators in keys: `:` (the key separator), `/` encoded, `..`.
    let mut b = biller("hx:water");
    let r = app.send("POST", "/api/utility/billers", Some(&b), Some(OPERATOR_TOKEN)).await;
    checks.refused(&app, &before, "a biller id with ':'", &r, 400, "validation_failed").await;
    b["id"] = json!("hx%2Fwater");
    let r = app.send("POST", "/api/utility/billers", Some(&b), Some(OPERATOR_TOKEN)).await;
    checks.refused(&app, &before, "a biller id with an encoded '/'", &r, 400, "validation_failed").await;
    let r = app
        .partner(&biller_a.id, &biller_a.secret, "PUT", "/api/utility/billers/hx_water_a:x/bills", Some(&bills))
        .await;
    checks.refused(&app, &before, "bills for a biller id with ':'", &r, 403, "forbidden").await;
    let r = app.send("GET", "/api/utility/orders/util:order:x", None, Some(&c1_token)).await;
    checks.refused(&app, &before, "an order id with ':'", &r, 404, "order_not_found").await;
    let r = app.send("GET", &format!("/api/utility/orders/{order_id}%2F..%2F{order_id}"), None, Some(&c1_token)).await;
    checks.refused(&app, &before, "an order id with an encoded '/'", &r, 404, "order_not_found").await;
    let r = app.send("DELETE", "/api/utility/accounts/hx_water_a/1234:567890", None, Some(&c1_token)).await;
    checks.refused(&app, &before, "an account number with ':'", &r, 404, "account_not_bound").await;
    let r = app.send("GET", &format!("/api/ops/customers/{c1_id}:x"), None, Some(OPERATOR_TOKEN)).await;
    checks.refused(&app, &before, "a customer id with ':'", &r, 404, "customer_not_found").await;
    let r = app
        .send("POST", &format!("/api/ops/customers/{c1_id}:x/tags"), Some(&json!({"tag": "vip"})), Some(OPERATOR_TOKEN))
        .await;
    checks.refused(&app, &before, "tagging a customer id with ':'", &r, 404, "customer_not_found").await;
    let r = app.send("GET", &format!("/api/campus/cards/{card_a}:x/transactions"), None, Some(&c1_token)).await;
    checks.refused(&app, &before, "a card id with ':'", &r, 404, "card_not_found").await;
    let r = app.send("GET", "/api/channels/HX:1", None, None).await;
    checks.refused(&app, &before, "a channel code with ':'", &r, 404, "not_found").await;
    let mut h = bearer(&c1_token);
    h.push(("idempotency-key", b"hx-claim-1".to_vec()));
    let r = send(&app, "POST", "/api/coupons/campaigns/a:b/claim", &h, Vec::new()).await;
    checks.refused(&app, &before, "claiming a campaign id with ':'", &r, 404, "campaign_not_found").await;

    // A forged numeric cursor is answered at once (it used to walk down from i64::MAX a page at a time).
    let path = format!("/api/campus/cards/{card_a}/transactions?cursor=999999999999999999&limit=100");
    let started = Instant::now();
    let r = app.send("GET", &path, None, Some(&c1_token)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(started.elapsed().as_secs() < 5, "a forged cursor took {:?}", started.elapsed());

    app.ledger_check().await;
    app.host.shutdown().await;
    assert!(
        checks.wrong.is_empty(),
        "{} of {} refusals were wrong:\n  {}",
        checks.wrong.len(),
        checks.count,
        checks.wrong.join("\n  ")
    );
    record_reliability(ReliabilityRow {
        test: "hostile::refused_requests_get_the_right_problem_and_write_nothing",
        load: &format!("{} refused requests, sequential, each followed by a full store snapshot", checks.count),
        faults: "tampered, stale, future, replayed, wrong-secret, unknown-partner and re-aimed partner signatures; \
                 partners on other partners' billers and schools; a customer on another's order and card; operator \
                 routes without, with a wrong, a near-miss or a session token; bodies over 1 MiB and 64 KiB, \
                 10,000-deep JSON, invalid UTF-8; `:` and encoded `/` in ids; a forged numeric cursor",
        result: &format!(
            "{} refusals, each with the expected status and problem code, store unchanged after every one; ledger \
             balanced",
            checks.count
        ),
    });
}

/// A query parameter given empty (`?to=`) or a page size outside 1..=100 is refused with `400 validation_failed`
/// naming it, never read as "absent" or clamped; a body number spelled `54.0` is the integer it equals, and a
/// fraction or a type error is answered in plain words (no Rust type names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_query_values_and_page_sizes_are_refused_and_details_are_plain_words() {
    let app = TestApp::spawn().await.expect("app");
    let session = app.login(Provider::Phone, "plain-words", Some("13800000042"), None).await;
    let token = session.body["token"].as_str().expect("token").to_owned();
    let cases: [(&str, Option<&str>, &str); 6] = [
        ("/api/ops/lifecycle?to=", Some(OPERATOR_TOKEN), "to"),
        ("/api/ops/funnel?from=2026-11-01&channel=", Some(OPERATOR_TOKEN), "channel"),
        ("/api/utility/billers?category=", None, "category"),
        ("/api/utility/orders?limit=101", Some(&token), "limit"),
        ("/api/utility/orders?limit=0", Some(&token), "limit"),
        ("/api/property/orders?cursor", Some(&token), "cursor"),
    ];
    let before = app.snapshot().await;
    for (path, bearer, field) in cases {
        let r = app.send("GET", path, None, bearer).await;
        assert_eq!(
            (r.status, r.body["code"].as_str(), r.body["field"].as_str()),
            (400, Some("validation_failed"), Some(field)),
            "{path}: {:?}",
            r.body
        );
    }
    let channel = |kind: Value| json!({ "channel": kind, "branch_id": "b1" });
    let r = app.send("POST", "/api/channels", Some(&channel(json!(12.0))), Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, r.body["detail"].as_str()), (400, Some("channel: must be a string")), "{:?}", r.body);
    assert_eq!(app.snapshot().await, before, "a refused request wrote something");
    let rotate = |secs: Value| json!({ "overlap_secs": secs });
    let biller = app
        .send(
            "POST",
            "/api/utility/billers",
            Some(&json!({
            "id": "plain", "name": "Plain Water", "category": "water", "city": "shenzhen",
            "account_rule": { "min_len": 10, "max_len": 10, "charset": "digits" }, "exactness": "exact",
            "settlement_account": "6222000012345678" })),
            Some(OPERATOR_TOKEN),
        )
        .await;
    let partner = biller.body["partner_id"].as_str().expect("partner id").to_owned();
    let path = format!("/api/utility/partners/{partner}/rotate-secret");
    let r = app.send("POST", &path, Some(&rotate(json!(60.5))), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("overlap_secs: must be a whole number"), "{detail}");
    let r = app.send("POST", &path, Some(&rotate(json!(3600.0))), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 200, "3600.0 is 3600: {:?}", r.body);
}
