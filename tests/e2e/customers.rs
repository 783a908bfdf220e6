//! The customers component end to end: One ID, sessions, channel codes, operator tags, funnel counters.

use scenefin_core::auth::Provider;
use scenefin_core::events::{FunnelStep, keys};
use scenefin_e2e::{OPERATOR_TOKEN, TestApp};
use serde_json::json;

async fn app() -> TestApp {
    TestApp::spawn().await.expect("app starts")
}

async fn counter(app: &TestApp, step: FunnelStep, dim: &str) -> i64 {
    stored_counter(app, &keys::funnel(app.now.shanghai_day(), step.as_str(), dim)).await
}

async fn stored_counter(app: &TestApp, key: &scenefin_core::kv::Key) -> i64 {
    // A decimal string on Redis (`INCRBY`), 8 little-endian bytes on SQLite and in memory.
    let Some(bytes) = app.host.kv.get("default", key.as_str()).await.expect("kv") else { return 0 };
    match std::str::from_utf8(&bytes).ok().and_then(|s| s.parse().ok()) {
        Some(n) => n,
        None => i64::from_le_bytes(bytes.try_into().expect("counter")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_through_a_channel_code_attributes_and_counts_the_funnel() {
    let app = app().await;
    // Arrange: an operator creates a branch code for a campaign.
    let code = json!({"code": "BR001", "channel": "branch", "branch_id": "sz_futian", "campaign_id": "spring26", "scenario": "utility"});
    let created = app.send("POST", "/api/channels", Some(&code), Some(OPERATOR_TOKEN)).await;
    assert_eq!(created.status, 201, "{:?}", created.body);

    // Act: a visitor scans it, then logs in with it.
    let resolved = app.send("GET", "/api/channels/BR001", None, None).await;
    let session = app.login(Provider::Wechat, "wx_union_alice", None, Some("BR001")).await;

    // Assert
    assert_eq!(resolved.status, 200);
    assert_eq!(resolved.body["branch_id"], "sz_futian");
    assert_eq!(session.status, 201, "{:?}", session.body);
    assert_eq!(session.body["is_new"], true);
    let token = session.body["token"].as_str().expect("token");
    let me = app.send("GET", "/api/me", None, Some(token)).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["customer_id"], session.body["customer_id"]);
    assert_eq!(me.body["first_touch"]["code"], "BR001");
    assert_eq!(me.body["first_touch"]["campaign_id"], "spring26");
    assert_eq!(me.body["lifecycle"]["stage"], "new");
    assert_eq!(me.body["identities"][0]["subject_masked"], "w************e");
    assert_eq!(counter(&app, FunnelStep::Visited, "ch:BR001").await, 1);
    assert_eq!(counter(&app, FunnelStep::Registered, "ch:BR001").await, 1);
    assert_eq!(counter(&app, FunnelStep::Registered, "cp:spring26").await, 1);
    assert_eq!(counter(&app, FunnelStep::Registered, "all").await, 1);

    // Logging in again is the same customer and registers nobody.
    let again = app.login(Provider::Wechat, "wx_union_alice", None, None).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["is_new"], false);
    assert_eq!(again.body["customer_id"], session.body["customer_id"]);
    assert_eq!(counter(&app, FunnelStep::Registered, "all").await, 1);
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_phone_links_two_providers_to_one_customer() {
    let app = app().await;
    let wechat = app.login(Provider::Wechat, "wx_bob", Some("13800001111"), None).await;
    let mobile_app = app.login(Provider::App, "app_bob", Some("13800001111"), None).await;
    assert_eq!(wechat.status, 201);
    assert_eq!(mobile_app.status, 200);
    assert_eq!(mobile_app.body["customer_id"], wechat.body["customer_id"]);
    let me = app.send("GET", "/api/me", None, mobile_app.body["token"].as_str()).await;
    assert_eq!(me.body["identities"].as_array().map(Vec::len), Some(2));
    assert_eq!(me.body["phone_masked"], "138****1111");
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_malformed_logins_are_refused() {
    let app = app().await;
    let mut forged = app.assertion(Provider::Wechat, "wx_eve", None);
    forged.replace_range(0..1, if forged.starts_with('e') { "f" } else { "e" });
    let r = app.send("POST", "/api/sessions", Some(&json!({ "assertion": forged })), None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.body["code"], "invalid_assertion");

    let r = app.send("POST", "/api/sessions", Some(&json!({ "assertion": 42 })), None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str(), r.body["field"].as_str()),
        (400, Some("validation_failed"), Some("assertion"))
    );
    let r = app.send("POST", "/api/sessions", Some(&json!({ "assertion": "x", "extra": 1 })), None).await;
    assert_eq!(r.body["field"], "extra");
    let r = app
        .send(
            "POST",
            "/api/sessions",
            Some(&json!({ "assertion": app.assertion(Provider::Wechat, "null", None) })),
            None,
        )
        .await;
    assert_eq!((r.status, r.body["code"].as_str()), (401, Some("blocked_subject")));
    let body = json!({ "assertion": app.assertion(Provider::Wechat, "wx_ok", None), "channel_code": "NO-SUCH" });
    let r = app.send("POST", "/api/sessions", Some(&body), None).await;
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("unknown_channel_code")));

    let huge = json!({ "assertion": "a".repeat(70_000) });
    assert_eq!(app.send("POST", "/api/sessions", Some(&huge), None).await.status, 413);
    assert_eq!(app.send("GET", "/api/me", None, Some("not-a-token")).await.status, 401);
    assert_eq!(app.send("GET", "/api/me", None, None).await.body["code"], "missing_credentials");
    // Nothing was registered by any of this.
    assert_eq!(app.host.kv.get("default", "ops:funnel:20261123:registered:all").await.expect("kv"), None);
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_tags_and_customers_see_only_their_own_profile() {
    let app = app().await;
    let alice = app.login(Provider::Wechat, "wx_alice2", None, None).await;
    let bob = app.login(Provider::Wechat, "wx_bob2", None, None).await;
    let alice_id = alice.body["customer_id"].as_str().expect("id");
    let bob_token = bob.body["token"].as_str().expect("token");

    // Customers cannot reach operator routes, with or without another customer's id.
    let r = app.send("GET", &format!("/api/ops/customers/{alice_id}"), None, Some(bob_token)).await;
    assert_eq!((r.status, r.body["code"].as_str()), (401, Some("invalid_operator_token")));
    let me = app.send("GET", "/api/me", None, Some(bob_token)).await;
    assert_eq!(me.body["customer_id"], bob.body["customer_id"]);

    let tag = json!({ "tag": "vip_candidate" });
    let r = app.send("POST", &format!("/api/ops/customers/{alice_id}/tags"), Some(&tag), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["operator_tags"], json!(["vip_candidate"]));
    let r = app.send("GET", &format!("/api/ops/customers/{alice_id}"), None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.body["operator_tags"], json!(["vip_candidate"]));
    // The customer's own view does not show operator tags.
    let mine = app.send("GET", "/api/me", None, alice.body["token"].as_str()).await;
    assert_eq!(mine.body["tags"], json!([]));
    let r = app
        .send("DELETE", &format!("/api/ops/customers/{alice_id}/tags/vip_candidate"), None, Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(r.body["operator_tags"], json!([]));

    let bad = json!({ "tag": "Not A Tag" });
    let r = app.send("POST", &format!("/api/ops/customers/{alice_id}/tags"), Some(&bad), Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("tag")));
    let r = app.send("GET", "/api/ops/customers/c_nobody", None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 404);
    let r = app.send("POST", "/api/channels", Some(&json!({"channel": "branch"})), Some("wrong")).await;
    assert_eq!(r.status, 401);
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_logins_of_one_identity_register_one_customer() {
    let app = app().await;
    let body = json!({ "assertion": app.assertion(Provider::App, "app_rush", None) });
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (client, url, body, now) =
            (app.client.clone(), format!("{}/api/sessions", app.base), body.clone(), app.now.to_rfc3339());
        tasks.push(tokio::spawn(async move {
            let res = client.post(url).header("x-scenefin-now", now).json(&body).send().await.expect("request");
            res.json::<serde_json::Value>().await.expect("json")
        }));
    }
    let mut ids = Vec::new();
    let mut new = 0;
    for t in tasks {
        let v = t.await.expect("task");
        ids.push(v["customer_id"].as_str().expect("customer_id").to_owned());
        new += usize::from(v["is_new"] == true);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(new, 1);
    assert_eq!(counter(&app, FunnelStep::Registered, "all").await, 1);
    assert_eq!(stored_counter(&app, &keys::stage("new")).await, 1);
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phones_logging_in_one_new_identity_at_once_register_one_customer_counted_once() {
    let app = app().await;
    let code = json!({"code": "RUSH01", "channel": "poster", "campaign_id": "rush", "scenario": "campus"});
    assert_eq!(app.send("POST", "/api/channels", Some(&code), Some(OPERATOR_TOKEN)).await.status, 201);

    // Act: eight new identities, each logging in from two phones at once, with its verified phone and the code.
    let identities = 8;
    let mut logins = tokio::task::JoinSet::new();
    for i in 0..identities {
        let phone = format!("1390000{i:04}");
        let assertion = app.assertion(Provider::Wechat, &format!("wx_two_phones_{i}"), Some(&phone));
        let body = json!({"assertion": assertion, "channel_code": "RUSH01"});
        for _ in 0..2 {
            let (client, url, body, now) =
                (app.client.clone(), format!("{}/api/sessions", app.base), body.clone(), app.now.to_rfc3339());
            logins.spawn(async move {
                let res = client.post(url).header("x-scenefin-now", now).json(&body).send().await.expect("request");
                (i, res.status().as_u16(), res.json::<serde_json::Value>().await.expect("json"))
            });
        }
    }
    let mut replies = vec![Vec::new(); identities];
    while let Some(done) = logins.join_next().await {
        let (i, status, body) = done.expect("task");
        replies[i].push((status, body));
    }

    // Assert: per identity one customer, registered by exactly one of its two logins; every registration counted
    // once, in every dimension of the code, and in the `new` stage.
    for (i, pair) in replies.iter().enumerate() {
        let statuses: Vec<u16> = pair.iter().map(|(status, _)| *status).collect();
        assert!(statuses.contains(&201) && statuses.contains(&200), "identity {i}: {pair:?}");
        assert_eq!(pair[0].1["customer_id"], pair[1].1["customer_id"], "identity {i}");
        assert_eq!(pair.iter().filter(|(_, b)| b["is_new"] == true).count(), 1, "identity {i}");
    }
    for dim in ["all", "ch:RUSH01", "cp:rush", "sc:campus"] {
        assert_eq!(counter(&app, FunnelStep::Registered, dim).await, 8, "{dim}");
    }
    assert_eq!(stored_counter(&app, &keys::stage("new")).await, 8);
    // The phone was indexed: another provider with it joins the same customer.
    let other = app.login(Provider::App, "app_two_phones_0", Some("13900000000"), None).await;
    assert_eq!((other.status, &other.body["customer_id"]), (200, &replies[0][0].1["customer_id"]));
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_payment_activates_the_customer_and_moves_the_funnel_once() {
    let app = app().await;
    let code = json!({"code": "POSTER7", "channel": "poster", "campaign_id": "autumn"});
    assert_eq!(app.send("POST", "/api/channels", Some(&code), Some(OPERATOR_TOKEN)).await.status, 201);
    let session = app.login(Provider::Phone, "p_carol", Some("13911112222"), Some("POSTER7")).await;
    let id = session.body["customer_id"].as_str().expect("id");

    let event = json!({"event_id": "branch-pay-1", "kind": "paid", "scenario": "utility", "amount_fen": 8800, "bank_card": true});
    let path = format!("/api/ops/customers/{id}/events");
    let first = app.send("POST", &path, Some(&event), Some(OPERATOR_TOKEN)).await;
    let repeat = app.send("POST", &path, Some(&event), Some(OPERATOR_TOKEN)).await;

    assert_eq!(
        (first.status, first.body["first_time"].as_bool(), first.body["stage"].as_str()),
        (200, Some(true), Some("activated"))
    );
    assert_eq!(repeat.body["first_time"], false);
    let me = app.send("GET", "/api/me", None, session.body["token"].as_str()).await;
    assert_eq!(me.body["lifecycle"]["stage"], "activated");
    let stages: Vec<&str> = me.body["lifecycle"]["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|t| t["stage"].as_str())
        .collect();
    assert_eq!(stages, ["new", "activated"]);
    assert!(me.body["tags"].as_array().expect("tags").iter().any(|t| t == "utility_payer"));
    assert_eq!(counter(&app, FunnelStep::Activated, "ch:POSTER7").await, 1);
    assert_eq!(counter(&app, FunnelStep::Activated, "cp:autumn").await, 1);
    assert_eq!(counter(&app, FunnelStep::Activated, "sc:utility").await, 1);

    let bad = json!({"event_id": "x", "kind": "paid", "scenario": "utility", "amount_fen": -5});
    let r = app.send("POST", &path, Some(&bad), Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("amount_fen")));
    app.host.shutdown().await;
}

/// Personal information at rest: after customers log in with verified phones (one by SMS, whose subject is the
/// number itself), bind a utility account and are read by an operator, no key and no value of the whole store holds
/// a phone number in the clear — only masks (`138****2222`) and hashes. Runs on every runtime's store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_dump_holds_no_plain_phone_number() {
    use scenefin_host::kv::{Op, Output};
    let app = app().await;
    let phones = ["13800002222", "13912345678", "15000000042"];
    let mut ids = Vec::new();
    for (i, phone) in phones.iter().enumerate() {
        let r = app.login(Provider::Wechat, &format!("wx_pii_{i}"), Some(phone), None).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        ids.push(r.body["customer_id"].as_str().expect("id").to_owned());
    }
    let sms = app.login(Provider::Phone, phones[1], Some(phones[1]), None).await;
    assert_eq!((sms.status, &sms.body["customer_id"]), (200, &json!(ids[1])), "the SMS login joins by phone");
    for id in &ids {
        let r = app.send("GET", &format!("/api/ops/customers/{id}"), None, Some(OPERATOR_TOKEN)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let shown = r.body.to_string();
        assert!(phones.iter().all(|p| !shown.contains(p)), "the operator sees masks only: {shown}");
    }

    let Ok(Output::Keys(keys)) = app.host.kv.exec("default", Op::Keys).await else { panic!("listing the store") };
    let Ok(Output::Values(values)) = app.host.kv.exec("default", Op::GetMany { keys: keys.clone() }).await else {
        panic!("reading the store")
    };
    assert!(keys.len() > 10, "the dump holds the customers' records ({} keys)", keys.len());
    for (key, value) in values {
        let text = String::from_utf8_lossy(value.as_deref().unwrap_or_default()).into_owned();
        for phone in phones {
            assert!(!key.contains(phone) && !text.contains(phone), "{phone} in the clear at {key}: {text}");
        }
    }
    app.host.shutdown().await;
}
