//! Partner secret rotation: an operator gives a partner (a biller, a property company, a school, a merchant) a new
//! secret; old and new both verify during the overlap, the old one is refused after it or once revoked.

use scenefin_e2e::{Api, OPERATOR_TOKEN, Reply, TestApp};
use serde_json::{Value, json};

/// A partner's credentials and a signed route it may call (`GET`, no side effects).
struct Partner {
    id: String,
    secret: String,
    scenario: &'static str,
    probe: String,
}

fn str_of(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_else(|| panic!("no string {field} in {v}")).to_owned()
}

#[track_caller]
fn refused(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status, r.body["code"].as_str()), (status, Some(code)), "{:?}", r.body);
    assert!(r.content_type.starts_with("application/problem+json"), "{}: {:?}", r.content_type, r.body);
}

async fn onboard(app: &Api, path: &str, body: Value, scenario: &'static str, probe: String) -> Partner {
    let r = app.send("POST", path, Some(&body), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    Partner { id: str_of(&r.body, "partner_id"), secret: str_of(&r.body, "partner_secret"), scenario, probe }
}

async fn biller(app: &Api) -> Partner {
    let body = json!({
        "id": "rot_power", "name": "Rotating Power", "category": "power", "city": "shenzhen",
        "account_rule": {"min_len": 6, "max_len": 12, "charset": "digits"},
        "exactness": "adhoc", "settlement_account": "6222000011113333"
    });
    onboard(app, "/api/utility/billers", body, "utility", "/api/utility/billers/rot_power/stats".into()).await
}

async fn property_company(app: &Api) -> Partner {
    let body = json!({"id": "rot_garden", "name": "Rotating Garden", "city": "shenzhen",
                      "property_company": "Rotating Service", "settlement_account": "6222000011114444"});
    onboard(app, "/api/property/communities", body, "property", "/api/property/communities/rot_garden/stats".into())
        .await
}

async fn school(app: &Api) -> Partner {
    let body = json!({"id": "rot_school", "name": "Rotating School", "city": "beijing"});
    onboard(app, "/api/campus/schools", body, "campus", "/api/campus/schools/rot_school/stats".into()).await
}

/// The partner's probe route, signed with `secret`.
async fn call(app: &Api, p: &Partner, secret: &str) -> Reply {
    app.partner(&p.id, secret, "GET", &p.probe, None).await
}

async fn rotate(app: &Api, p: &Partner, body: Option<&Value>) -> Reply {
    app.send("POST", &format!("/api/{}/partners/{}/rotate-secret", p.scenario, p.id), body, Some(OPERATOR_TOKEN)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_partner_secret_overlaps_with_the_old_one_which_is_refused_after_the_overlap() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    let partners = [biller(&app).await, property_company(&app).await, school(&app).await];

    for p in &partners {
        // An operator rotates: the new secret is returned once, with when the old one stops working.
        let r = rotate(&app, p, Some(&json!({"overlap_secs": 3600}))).await;
        assert_eq!(r.status, 200, "{}: {:?}", p.scenario, r.body);
        assert_eq!(str_of(&r.body, "partner_id"), p.id);
        let new_secret = str_of(&r.body, "partner_secret");
        assert_ne!(new_secret, p.secret);
        assert_eq!(str_of(&r.body, "previous_secret_expires_at"), t0.plus_secs(3600).to_rfc3339());

        // During the overlap both sign.
        assert_eq!(call(&app, p, &p.secret).await.status, 200, "{}: old secret during the overlap", p.scenario);
        assert_eq!(call(&app, p, &new_secret).await.status, 200, "{}: new secret", p.scenario);
        app.now = t0.plus_secs(3599);
        assert_eq!(call(&app, p, &p.secret).await.status, 200, "{}: old secret at the end of the overlap", p.scenario);

        // After it the old one is refused, the new one still works.
        app.now = t0.plus_secs(3601);
        refused(&call(&app, p, &p.secret).await, 401, "invalid_signature");
        assert_eq!(call(&app, p, &new_secret).await.status, 200, "{}: new secret after the overlap", p.scenario);
        app.now = t0;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_defaults_to_a_day_of_overlap_can_be_revoked_early_and_refuses_bad_requests() {
    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    let p = biller(&app).await;

    // Bad requests are problems and write nothing.
    let before = app.snapshot().await;
    let too_long = rotate(&app, &p, Some(&json!({"overlap_secs": 8 * 86_400}))).await;
    refused(&too_long, 400, "validation_failed");
    assert_eq!(too_long.body["field"], "overlap_secs");
    refused(&rotate(&app, &p, Some(&json!({"overlap_secs": -1}))).await, 400, "validation_failed");
    refused(&rotate(&app, &p, Some(&json!({"overlap": 60}))).await, 400, "validation_failed");
    let unknown = Partner { id: "p_nobody".into(), secret: String::new(), scenario: "utility", probe: String::new() };
    refused(&rotate(&app, &unknown, None).await, 404, "partner_not_found");
    let other_scenario = Partner { id: p.id.clone(), scenario: "property", ..unknown };
    refused(&rotate(&app, &other_scenario, None).await, 404, "partner_not_found");
    let as_partner = app
        .partner(&p.id, &p.secret, "POST", &format!("/api/utility/partners/{}/rotate-secret", p.id), Some(&json!({})))
        .await;
    refused(&as_partner, 401, "missing_credentials");
    assert!(app.snapshot().await == before, "refused rotations wrote something");

    // No body: a day of overlap.
    let r = rotate(&app, &p, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(str_of(&r.body, "previous_secret_expires_at"), t0.plus_secs(86_400).to_rfc3339());
    let second = str_of(&r.body, "partner_secret");
    app.now = t0.plus_secs(86_000);
    assert_eq!(call(&app, &p, &p.secret).await.status, 200);

    // Revoked early, the old secret is refused at once; the new one is untouched.
    let revoke = format!("/api/utility/partners/{}/revoke-previous-secret", p.id);
    let r = app.send("POST", &revoke, None, Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, r.body["revoked"].as_u64()), (200, Some(1)), "{:?}", r.body);
    refused(&call(&app, &p, &p.secret).await, 401, "invalid_signature");
    assert_eq!(call(&app, &p, &second).await.status, 200);
    let again = app.send("POST", &revoke, None, Some(OPERATOR_TOKEN)).await;
    assert_eq!((again.status, again.body["revoked"].as_u64()), (200, Some(0)), "{:?}", again.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchants_rotated_secret_redeems_next_to_the_old_one_until_the_overlap_ends_or_is_revoked() {
    use crate::merchant_coupons::{campaign, claim, create_campaign, login, onboard_merchant, order};

    let mut app = TestApp::spawn().await.expect("app");
    let t0 = app.now;
    let m = onboard_merchant(&app, "rot_cafe", "nanshan", &["rc1"]).await;
    create_campaign(&app, &campaign("rot_five", &["rot_cafe"])).await;
    // Five customers' coupons, valid for a week: one redemption per signing attempt below.
    let mut codes = Vec::new();
    for i in 0..5 {
        let c = login(&app, &format!("wx_rot_{i}"), None).await;
        let r = claim(&app, &c.token, "rot_five", &format!("rot-{i}")).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        codes.push(str_of(&r.body, "code"));
    }
    let redeem_with = |app: &Api, secret: &str, i: usize| {
        let body = order(&codes[i], "rc1", 3000, &format!("rot-order-{i}"));
        let (app, secret, partner_id) = (app.clone(), secret.to_owned(), m.partner_id.clone());
        async move { app.partner(&partner_id, &secret, "POST", "/api/coupons/redemptions", Some(&body)).await }
    };

    // Only the operator rotates a merchant's secret, and only a merchant's (not another scenario's partner).
    let rotate_path = format!("/api/coupons/partners/{}/rotate-secret", m.partner_id);
    let body = json!({"overlap_secs": 600});
    refused(
        &app.partner(&m.partner_id, &m.secret, "POST", &rotate_path, Some(&body)).await,
        401,
        "missing_credentials",
    );
    let biller = biller(&app).await;
    let foreign = app
        .send("POST", &format!("/api/coupons/partners/{}/rotate-secret", biller.id), None, Some(OPERATOR_TOKEN))
        .await;
    refused(&foreign, 404, "partner_not_found");
    let wrong_method = app.send("GET", &rotate_path, None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(wrong_method.status, 405, "{:?}", wrong_method.body);

    let r = app.send("POST", &rotate_path, Some(&body), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(str_of(&r.body, "partner_id"), m.partner_id);
    let new_secret = str_of(&r.body, "partner_secret");
    assert_ne!(new_secret, m.secret);
    assert_eq!(str_of(&r.body, "previous_secret_expires_at"), t0.plus_secs(600).to_rfc3339());

    // During the overlap both secrets redeem.
    assert_eq!(redeem_with(&app, &m.secret, 0).await.status, 201, "old secret during the overlap");
    assert_eq!(redeem_with(&app, &new_secret, 1).await.status, 201, "new secret during the overlap");
    app.now = t0.plus_secs(599);
    assert_eq!(redeem_with(&app, &m.secret, 2).await.status, 201, "old secret at the end of the overlap");

    // After it the old one is refused (and redeems nothing), the new one still redeems.
    app.now = t0.plus_secs(601);
    refused(&redeem_with(&app, &m.secret, 3).await, 401, "invalid_signature");
    assert_eq!(redeem_with(&app, &new_secret, 3).await.status, 201, "new secret after the overlap");

    // Rotated again with the default day of overlap, then revoked early: the second secret is refused at once.
    let r = app.send("POST", &rotate_path, None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let third = str_of(&r.body, "partner_secret");
    let revoke = format!("/api/coupons/partners/{}/revoke-previous-secret", m.partner_id);
    let r = app.send("POST", &revoke, None, Some(OPERATOR_TOKEN)).await;
    assert_eq!((r.status, r.body["revoked"].as_u64()), (200, Some(1)), "{:?}", r.body);
    refused(&redeem_with(&app, &new_secret, 4).await, 401, "invalid_signature");
    assert_eq!(redeem_with(&app, &third, 4).await.status, 201, "the current secret");
}
