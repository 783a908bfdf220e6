//! Maker-checker beyond refunds (tests/e2e/staff.rs has the refund): a coupon stock raise, partner registration,
//! partner secret rotation and bulk tag changes asked by a staff member are only proposed; the maker cannot approve
//! them, nor can staff without the proposal's role; of concurrent approvals exactly one carries the action out,
//! once, and the checker's retries answer the same result (the same credentials); proposals expire after a day and
//! leave the pending list once decided; the break-glass token acts at once.

use scenefin_core::staff::Role;
use scenefin_e2e::{OPERATOR_TOKEN, Reply, TestApp};
use serde_json::{Value, json};

use crate::merchant_coupons::{campaign, create_campaign, onboard_merchant};
use crate::staff::{refused, sign_in};

/// The ids of the pending proposals of an approvals scope (`/api/utility/approvals`...), as `token` lists them.
pub(crate) async fn pending_ids(app: &TestApp, scope: &str, token: &str) -> Vec<String> {
    let r = app.send("GET", &format!("{scope}?state=pending"), None, Some(token)).await;
    assert_eq!(r.status, 200, "{scope}: {:?}", r.body);
    let items = r.body["items"].as_array().expect("items");
    items.iter().map(|p| p["id"].as_str().expect("id").to_owned()).collect()
}

/// `202` with a pending proposal by `maker`; its id.
#[track_caller]
fn proposed(r: &Reply, maker: &str) -> String {
    assert_eq!((r.status, r.body["approval"]["state"].as_str()), (202, Some("pending")), "{:?}", r.body);
    assert_eq!(r.body["approval"]["maker"].as_str(), Some(maker), "{:?}", r.body);
    assert!(r.body["approval"].get("credentials").is_none(), "a proposal never shows credentials: {:?}", r.body);
    r.body["approval"]["id"].as_str().expect("id").to_owned()
}

/// Six approvals of `path` at once, five by `checkers[0]` and one by `checkers[1]`: one checker decides, every
/// approval of theirs answers the same executed result, the other checker's are `409 proposal_decided`. The result.
async fn approve_at_once(app: &TestApp, path: &str, checkers: &[String; 2]) -> Value {
    let mut tasks = tokio::task::JoinSet::new();
    for token in [&checkers[0], &checkers[0], &checkers[0], &checkers[0], &checkers[0], &checkers[1]] {
        let (api, token, path) = (app.api.clone(), token.clone(), path.to_owned());
        tasks.spawn(async move { api.send("POST", &path, None, Some(&token)).await });
    }
    let (mut results, mut deciders, mut refusals) = (Vec::new(), std::collections::BTreeSet::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let r = r.expect("task");
        match r.status {
            200 => {
                assert_eq!(r.body["approval"]["state"], "executed", "{:?}", r.body);
                assert!(r.body["approval"].get("result").is_none(), "{:?}", r.body);
                deciders.insert(r.body["approval"]["checker"].as_str().expect("checker").to_owned());
                results.push(r.body["result"].clone());
            }
            409 => {
                assert_eq!(r.body["code"], "proposal_decided", "{:?}", r.body);
                refusals += 1;
            }
            _ => panic!("approval {path}: {} {:?}", r.status, r.body),
        }
    }
    assert_eq!(deciders.len(), 1, "one checker decided: {deciders:?}");
    assert!(refusals == 1 || refusals == 5, "the other checker's approvals were refused ({refusals})");
    assert!(results.windows(2).all(|w| w[0] == w[1]), "every approval answers the same result: {results:?}");
    results.remove(0)
}

/// Sends a request that must only propose: `202` by `maker`, and nothing in the store changed but the proposal and
/// its day index. The proposal's id.
async fn propose(app: &TestApp, method: &str, path: &str, body: Option<&Value>, token: &str, maker: &str) -> String {
    let before = app.snapshot().await;
    let id = proposed(&app.send(method, path, body, Some(token)).await, maker);
    let after = app.snapshot().await;
    let changed: Vec<&String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .chain(before.keys().filter(|k| !after.contains_key(*k)))
        .collect();
    assert!(
        changed.iter().all(|k| k.contains(":approval:") || k.contains(":approvals:")),
        "{method} {path} only proposes: {changed:?}"
    );
    id
}

/// The staff of a test: a maker and two checkers holding `role`, and `other` holding every role but it.
struct Staff {
    maker: String,
    checkers: [String; 2],
    other: String,
}

async fn staff(app: &TestApp, role: Role, prefix: &str) -> Staff {
    let others: Vec<Role> = Role::ALL.into_iter().filter(|r| *r != role).collect();
    Staff {
        maker: sign_in(app, &format!("{prefix}_maker"), &[role]).await,
        checkers: [
            sign_in(app, &format!("{prefix}_check_1"), &[role]).await,
            sign_in(app, &format!("{prefix}_check_2"), &[role, Role::Viewer]).await,
        ],
        other: sign_in(app, &format!("{prefix}_other"), &others).await,
    }
}

/// The maker cannot approve, staff without the role cannot approve nor reject.
async fn only_another_checker(app: &TestApp, scope: &str, id: &str, staff: &Staff) {
    let path = format!("{scope}/{id}");
    refused(&app.send("POST", &format!("{path}/approve"), None, Some(&staff.maker)).await, 403, "same_staff");
    refused(&app.send("POST", &format!("{path}/approve"), None, Some(&staff.other)).await, 403, "forbidden_role");
    refused(&app.send("POST", &format!("{path}/reject"), None, Some(&staff.other)).await, 403, "forbidden_role");
    let got = app.send("GET", &path, None, Some(&staff.other)).await;
    assert_eq!((got.status, got.body["approval"]["state"].as_str()), (200, Some("pending")), "{:?}", got.body);
    assert!(pending_ids(app, scope, &staff.other).await.contains(&id.to_owned()), "{id} is listed as pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_stock_raise_needs_a_second_marketing_staff_member() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    onboard_merchant(&app, "mc_cafe", "nanshan", &["s1"]).await;
    create_campaign(&app, &campaign("mc_stock", &["mc_cafe"])).await;
    let staff = staff(&app, Role::Marketing, "stock").await;
    let scope = "/api/coupons/approvals";
    let stock = |total: i64| json!({ "stock_total": total });
    let path = "/api/coupons/campaigns/mc_stock/stock";
    let total = async |app: &TestApp| {
        let r = app.send("GET", "/api/coupons/campaigns/mc_stock", None, None).await;
        r.body["remaining_stock"].as_i64().expect("remaining_stock")
    };

    // Bad input is refused before anything is proposed.
    let before = pending_ids(&app, scope, &staff.maker).await;
    refused(&app.send("PUT", path, Some(&stock(0)), Some(&staff.maker)).await, 400, "validation_failed");
    refused(
        &app.send("PUT", "/api/coupons/campaigns/nope/stock", Some(&stock(5)), Some(&staff.maker)).await,
        404,
        "campaign_not_found",
    );
    assert_eq!(pending_ids(&app, scope, &staff.maker).await, before);

    // A raise is proposed, not made; a lowering is made at once.
    let id = propose(&app, "PUT", path, Some(&stock(1500)), &staff.maker, "stock_maker").await;
    assert_eq!(total(&app).await, 1000);
    let r = app.send("PUT", path, Some(&stock(900)), Some(&staff.maker)).await;
    assert_eq!((r.status, r.body["stock_total"].as_i64()), (200, Some(900)), "{:?}", r.body);
    only_another_checker(&app, scope, &id, &staff).await;

    // Approved at once by two checkers: raised once.
    let result = approve_at_once(&app, &format!("{scope}/{id}/approve"), &staff.checkers).await;
    assert_eq!(result["stock_total"].as_i64(), Some(1500), "{result}");
    assert_eq!(total(&app).await, 1500);
    assert!(!pending_ids(&app, scope, &staff.maker).await.contains(&id));
    let got = app.send("GET", &format!("{scope}/{id}"), None, Some(&staff.other)).await;
    assert_eq!(got.body["approval"]["state"], "executed", "{:?}", got.body);
    // The audit log says what changed: the maker's proposal (1000 → 1500) and its execution, once.
    let day = app.now.to_rfc3339()[..10].to_owned();
    let audit = app.send("GET", &format!("/api/ops/audit?day={day}&resource={id}"), None, Some(OPERATOR_TOKEN)).await;
    let summaries: Vec<String> = audit.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["summary"].as_str().map(str::to_owned))
        .collect();
    let executed = summaries.iter().filter(|s| s.contains("approved → executed")).count();
    assert_eq!(executed, 1, "{summaries:?}");
    let path_entries =
        app.send("GET", &format!("/api/ops/audit?day={day}&actor=stock_maker"), None, Some(OPERATOR_TOKEN)).await;
    assert!(
        path_entries.body["entries"].as_array().expect("entries").iter().any(|e| e["summary"]
            .as_str()
            .is_some_and(|s| s.contains("stock_total 1000 → 1500: proposed, pending a checker"))),
        "{:?}",
        path_entries.body
    );

    // Break-glass raises at once.
    let r = app.send("PUT", path, Some(&stock(1600)), Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, r.body["stock_total"].as_i64()), (200, Some(1600)), "{:?}", r.body);

    // A proposal nobody approves within a day expires and leaves the list.
    let stale = proposed(&app.send("PUT", path, Some(&stock(5000)), Some(&staff.maker)).await, "stock_maker");
    app.now = t0.plus_secs(24 * 3600);
    let late = sign_in(&app, "stock_check_1", &[Role::Marketing]).await;
    refused(&app.send("POST", &format!("{scope}/{stale}/approve"), None, Some(&late)).await, 409, "proposal_expired");
    assert!(!pending_ids(&app, scope, &late).await.contains(&stale));
    assert_eq!(total(&app).await, 1600);
}

/// A registration route of each scenario, its body, and a route its partner may sign (`GET` with no effects, or a
/// signed write that reaches the partner's own checks).
struct Registration {
    path: &'static str,
    scope: &'static str,
    body: Value,
    entity: &'static str,
    probe: (&'static str, &'static str),
    rotate: &'static str,
}

fn registrations() -> Vec<Registration> {
    vec![
        Registration {
            path: "/api/utility/billers",
            scope: "/api/utility/approvals",
            body: json!({"id": "mc_water", "name": "Maker Water", "category": "water", "city": "shenzhen",
                         "account_rule": {"min_len": 6, "max_len": 12, "charset": "digits"},
                         "exactness": "adhoc", "settlement_account": "6222000077778888"}),
            entity: "biller",
            probe: ("GET", "/api/utility/billers/mc_water/stats"),
            rotate: "/api/utility/partners",
        },
        Registration {
            path: "/api/property/communities",
            scope: "/api/property/approvals",
            body: json!({"id": "mc_garden", "name": "Maker Garden", "city": "shenzhen",
                         "property_company": "Maker Service", "settlement_account": "6222000077779999"}),
            entity: "community",
            probe: ("GET", "/api/property/communities/mc_garden/stats"),
            rotate: "/api/property/partners",
        },
        Registration {
            path: "/api/campus/schools",
            scope: "/api/campus/approvals",
            body: json!({"id": "mc_school", "name": "Maker School", "city": "beijing"}),
            entity: "school",
            probe: ("GET", "/api/campus/schools/mc_school/stats"),
            rotate: "/api/campus/partners",
        },
        Registration {
            path: "/api/coupons/merchants",
            scope: "/api/coupons/approvals",
            body: json!({"merchant_id": "mc_bakery", "name": "Maker Bakery", "district": "futian",
                         "stores": [{"store_id": "s1", "name": "Maker Bakery 1"}]}),
            entity: "merchant",
            probe: ("POST", "/api/coupons/redemptions"),
            rotate: "/api/coupons/partners",
        },
    ]
}

/// Whether a call signed with `secret` gets past the partner's authentication.
async fn signs(app: &TestApp, reg: &Registration, partner_id: &str, secret: &str) -> bool {
    let body = (reg.probe.0 == "POST").then(|| json!({}));
    let r = app.partner(partner_id, secret, reg.probe.0, reg.probe.1, body.as_ref()).await;
    r.status != 401
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_registration_and_secret_rotation_need_a_second_partner_admin() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    let staff = staff(&app, Role::PartnerAdmin, "pa").await;

    for reg in registrations() {
        // Proposed: nothing registered yet.
        let id = propose(&app, "POST", reg.path, Some(&reg.body), &staff.maker, "pa_maker").await;
        only_another_checker(&app, reg.scope, &id, &staff).await;

        // Approved at once: one partner, one secret, shown to the checker; it signs.
        let approve = format!("{}/{id}/approve", reg.scope);
        let result = approve_at_once(&app, &approve, &staff.checkers).await;
        let partner_id = result["partner_id"].as_str().expect("partner_id").to_owned();
        let secret = result["partner_secret"].as_str().expect("partner_secret").to_owned();
        assert!(result[reg.entity].is_object(), "{}: {result}", reg.path);
        assert!(signs(&app, &reg, &partner_id, &secret).await, "{}: the new partner signs", reg.path);
        let got = app.send("GET", &format!("{}/{id}", reg.scope), None, Some(&staff.other)).await;
        assert!(!got.body.to_string().contains(&secret), "{}: the secret is shown only to the checker", reg.path);

        // The same registration again is refused before it is proposed.
        let again = app.send("POST", reg.path, Some(&reg.body), Some(&staff.maker)).await;
        assert_eq!(again.status, 409, "{}: {:?}", reg.path, again.body);

        // Rotation: proposed (the old secret is still the only one), approved once; old and new both sign during
        // the overlap; a retried approval answers the same secret and does not rotate again.
        let rotate = format!("{}/{partner_id}/rotate-secret", reg.rotate);
        let overlap = json!({"overlap_secs": 3600});
        let rotation = propose(&app, "POST", &rotate, Some(&overlap), &staff.maker, "pa_maker").await;
        assert!(signs(&app, &reg, &partner_id, &secret).await, "{}: not rotated yet", reg.path);
        only_another_checker(&app, reg.scope, &rotation, &staff).await;
        let approve = format!("{}/{rotation}/approve", reg.scope);
        let rotated = approve_at_once(&app, &approve, &staff.checkers).await;
        let new_secret = rotated["partner_secret"].as_str().expect("partner_secret").to_owned();
        assert_ne!(new_secret, secret);
        assert_eq!(rotated["previous_secret_expires_at"], json!(t0.plus_secs(3600).to_rfc3339()), "{rotated}");
        assert!(signs(&app, &reg, &partner_id, &secret).await, "{}: old secret during the overlap", reg.path);
        assert!(signs(&app, &reg, &partner_id, &new_secret).await, "{}: new secret", reg.path);
        let decider = rotated_by(&app, &reg, &rotation, &staff).await;
        let retry = app.send("POST", &approve, None, Some(decider)).await;
        assert_eq!((retry.status, &retry.body["result"]), (200, &rotated), "{:?}", retry.body);
        app.now = t0.plus_secs(3601);
        assert!(!signs(&app, &reg, &partner_id, &secret).await, "{}: old secret after the overlap", reg.path);
        assert!(signs(&app, &reg, &partner_id, &new_secret).await, "{}: one rotation only", reg.path);
        app.now = t0;
    }

    // Break-glass registers at once.
    let body = json!({"id": "mc_glass_school", "name": "Glass School"});
    let r = app.send("POST", "/api/campus/schools", Some(&body), Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, r.body["partner_secret"].is_string()), (201, true), "{:?}", r.body);

    // Bad input is refused before anything is proposed; a proposal nobody approves expires.
    let before = pending_ids(&app, "/api/campus/approvals", &staff.other).await;
    let bad =
        app.send("POST", "/api/campus/schools", Some(&json!({"id": "x y", "name": "Bad"})), Some(&staff.maker)).await;
    refused(&bad, 400, "validation_failed");
    let r = app.send("POST", "/api/campus/partners/p_nope/rotate-secret", None, Some(&staff.maker)).await;
    refused(&r, 404, "partner_not_found");
    assert_eq!(pending_ids(&app, "/api/campus/approvals", &staff.other).await, before);
    let body = json!({"id": "mc_late_school", "name": "Late School"});
    let stale = proposed(&app.send("POST", "/api/campus/schools", Some(&body), Some(&staff.maker)).await, "pa_maker");
    app.now = t0.plus_secs(24 * 3600);
    let late = sign_in(&app, "pa_check_1", &[Role::PartnerAdmin]).await;
    let path = format!("/api/campus/approvals/{stale}/approve");
    refused(&app.send("POST", &path, None, Some(&late)).await, 409, "proposal_expired");
    assert!(!pending_ids(&app, "/api/campus/approvals", &late).await.contains(&stale));
}

/// The checker token that decided proposal `id`.
async fn rotated_by<'a>(app: &TestApp, reg: &Registration, id: &str, staff: &'a Staff) -> &'a str {
    let got = app.send("GET", &format!("{}/{id}", reg.scope), None, Some(&staff.other)).await;
    match got.body["approval"]["checker"].as_str() {
        Some("pa_check_1") => &staff.checkers[0],
        Some("pa_check_2") => &staff.checkers[1],
        other => panic!("checker {other:?}: {:?}", got.body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_tag_change_needs_a_second_marketing_staff_member() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    let mut ids = Vec::new();
    for subject in ["wx_bulk_1", "wx_bulk_2", "wx_bulk_3"] {
        let r = app.login(scenefin_core::auth::Provider::Wechat, subject, None, None).await;
        ids.push(r.body["customer_id"].as_str().expect("customer_id").to_owned());
    }
    let staff = staff(&app, Role::Marketing, "tags").await;
    let scope = "/api/ops/customers/approvals";
    let path = "/api/ops/customers/tags/bulk";
    let tags_of = async |app: &TestApp, id: &str| {
        let r = app.send("GET", &format!("/api/ops/customers/{id}"), None, Some(OPERATOR_TOKEN)).await;
        r.body["operator_tags"].clone()
    };

    // Bad input is refused before anything is proposed.
    let before = pending_ids(&app, scope, &staff.maker).await;
    for (body, field) in [
        (json!({"tag": "vip_q4", "action": "add", "customer_ids": []}), "customer_ids"),
        (json!({"tag": "vip_q4", "action": "add", "customer_ids": vec!["c"; 501]}), "customer_ids"),
        (json!({"tag": "VIP!", "action": "add", "customer_ids": [ids[0]]}), "tag"),
    ] {
        let r = app.send("POST", path, Some(&body), Some(&staff.maker)).await;
        refused(&r, 400, "validation_failed");
        assert_eq!(r.body["field"], field, "{:?}", r.body);
    }
    let r = app
        .send(
            "POST",
            path,
            Some(&json!({"tag": "vip_q4", "action": "toggle", "customer_ids": ["c"]})),
            Some(&staff.maker),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(pending_ids(&app, scope, &staff.maker).await, before);

    // Always a proposal from staff; applied once on approval, unknown ids reported.
    let body = json!({"tag": "vip_q4", "action": "add", "customer_ids": [ids[0], ids[1], ids[2], ids[1], "c_nobody"]});
    let id = propose(&app, "POST", path, Some(&body), &staff.maker, "tags_maker").await;
    assert_eq!(tags_of(&app, &ids[0]).await, json!([]));
    only_another_checker(&app, scope, &id, &staff).await;
    let result = approve_at_once(&app, &format!("{scope}/{id}/approve"), &staff.checkers).await;
    assert_eq!((result["applied"].as_i64(), result["skipped"].as_i64()), (Some(3), Some(1)), "{result}");
    assert_eq!(result["results"][3], json!({"customer_id": "c_nobody", "result": "not_found"}), "{result}");
    for customer in &ids {
        assert_eq!(tags_of(&app, customer).await, json!(["vip_q4"]), "{customer}");
    }
    assert!(!pending_ids(&app, scope, &staff.maker).await.contains(&id));

    // Rejected: nothing happens, and it cannot be approved after.
    let body = json!({"tag": "vip_q4", "action": "remove", "customer_ids": [ids[0]]});
    let id = proposed(&app.send("POST", path, Some(&body), Some(&staff.maker)).await, "tags_maker");
    let r = app.send("POST", &format!("{scope}/{id}/reject"), None, Some(&staff.checkers[0])).await;
    assert_eq!((r.status, r.body["approval"]["state"].as_str()), (200, Some("rejected")), "{:?}", r.body);
    let r = app.send("POST", &format!("{scope}/{id}/approve"), None, Some(&staff.checkers[1])).await;
    refused(&r, 409, "proposal_decided");
    assert_eq!(tags_of(&app, &ids[0]).await, json!(["vip_q4"]));

    // Break-glass applies at once.
    let r = app.send("POST", path, Some(&body), Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, r.body["applied"].as_i64()), (200, Some(1)), "{:?}", r.body);
    assert_eq!(tags_of(&app, &ids[0]).await, json!([]));

    // Expiry.
    let body = json!({"tag": "late", "action": "add", "customer_ids": [ids[0]]});
    let stale = proposed(&app.send("POST", path, Some(&body), Some(&staff.maker)).await, "tags_maker");
    app.now = t0.plus_secs(24 * 3600);
    let late = sign_in(&app, "tags_check_1", &[Role::Marketing]).await;
    refused(&app.send("POST", &format!("{scope}/{stale}/approve"), None, Some(&late)).await, 409, "proposal_expired");
    assert!(!pending_ids(&app, scope, &late).await.contains(&stale));
    assert_eq!(tags_of(&app, &ids[0]).await, json!([]));
}
