//! Personal information (PIPL): a store dump reveals no phone number, name or login subject (keyed hashes for
//! lookups, sealed phone numbers, masked names); staff unmask only with a logged reason the customer sees; a customer
//! exports their data and has it erased while the books and the partners' records keep balancing; marketing consent
//! governs profile-targeted offers and referral nudges.

use scenefin_core::auth::Provider;
use scenefin_core::pii::PiiKeys;
use scenefin_core::staff::{Role, StaffAssertion, sign_staff_assertion};
use scenefin_e2e::{OPERATOR_TOKEN, PII_SECRET, Reply, STAFF_IDENTITY_SECRET, TestApp};
use scenefin_host::kv::{Op, Output};
use serde_json::{Value, json};

use crate::campus_card::{bind_card, issue, member, onboard_school, top_up};
use crate::merchant_coupons::{campaign, claim, create_campaign, onboard_merchant, with};
use crate::referral_tiers::{cash_tier, create_program, program};

async fn staff(app: &TestApp, staff_id: &str, roles: &[Role]) -> String {
    let claims = StaffAssertion {
        staff_id: staff_id.to_owned(),
        name: format!("Staff {staff_id}"),
        roles: roles.to_vec(),
        iat: app.now.unix_secs(),
    };
    let assertion = sign_staff_assertion(STAFF_IDENTITY_SECRET.as_bytes(), &claims);
    let r = app.send("POST", "/api/staff/sessions", Some(&json!({ "assertion": assertion })), None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["token"].as_str().expect("token").to_owned()
}

#[track_caller]
fn refused(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status, r.body["code"].as_str()), (status, Some(code)), "{:?}", r.body);
    assert!(r.content_type.starts_with("application/problem+json"), "{}", r.content_type);
}

/// Every key and value of the store as text.
async fn dump(app: &TestApp) -> Vec<(String, String)> {
    let Ok(Output::Keys(keys)) = app.host.kv.exec("default", Op::Keys).await else { panic!("listing the store") };
    let Ok(Output::Values(values)) = app.host.kv.exec("default", Op::GetMany { keys }).await else {
        panic!("reading the store")
    };
    values
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned()))
        .collect()
}

#[track_caller]
fn nowhere(dump: &[(String, String)], needle: &str, what: &str) {
    for (key, value) in dump {
        assert!(!key.contains(needle) && !value.contains(needle), "{what} ({needle}) at {key}: {value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_exports_then_erases_their_data_and_the_books_keep_balancing() {
    let app = TestApp::spawn().await.expect("app");
    let phone = "13612345678";
    let subject = "wx_pipl_subject_1";
    let school = onboard_school(&app, "pipl_uni", None).await;
    issue(&app, &school, "pipl_uni", &[member("P1", "student", "欧阳娜娜", "2030-07-31", "246810")]).await;
    let login = app.login(Provider::Wechat, subject, Some(phone), None).await;
    assert_eq!(login.status, 201, "{:?}", login.body);
    let token = login.body["token"].as_str().expect("token").to_owned();
    let id = login.body["customer_id"].as_str().expect("id").to_owned();
    let card = bind_card(&app, &token, "pipl_uni", "P1", "246810").await;
    // A property company's roster: the owner's name is matched through its keyed hash, never kept whole.
    let community = json!({"id": "pipl_garden", "name": "PIPL Garden", "city": "shenzhen",
        "property_company": "Vanke Service", "settlement_account": "6222000055556666"});
    let r = app.send("POST", "/api/property/communities", Some(&community), Some(OPERATOR_TOKEN)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let (pid, secret) =
        (r.body["partner_id"].as_str().expect("id"), r.body["partner_secret"].as_str().expect("secret"));
    let rooms = json!({"rooms": [{"room_id": "R1", "building": "1", "unit": "1", "number": "101",
        "owner_name": "司马相如", "area_m2": 90, "monthly_fee_fen": 25000}]});
    let r = app.partner(pid, secret, "PUT", "/api/property/communities/pipl_garden/rooms", Some(&rooms)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let claim_room = |name: &str| {
        let body = json!({"community_id": "pipl_garden", "room_id": "R1", "owner_name": name});
        let (app, token) = (&app, token.clone());
        async move { app.send("POST", "/api/property/households", Some(&body), Some(&token)).await }
    };
    refused(&claim_room("司马相").await, 422, "owner_name_mismatch");
    // A water company's bills carry the account holder's name: kept masked only.
    let w = crate::utility_payments::register(&app, crate::utility_payments::water(100_000)).await;
    let bills = json!({"bills": [{"bill_id": "PB-1", "account_no": "5550001111", "period": "2026-10",
        "amount_fen": 8000, "due_date": "2026-11-30", "holder_name": "诸葛孔明"}]});
    let r = app.partner(&w.partner_id, &w.secret, "PUT", "/api/utility/billers/sz_water/bills", Some(&bills)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let claimed = claim_room(" 司马 相如 ").await;
    assert_eq!(claimed.status, 201, "{:?}", claimed.body);
    top_up(&app, &token, &card, 5_000, "pipl-1").await;
    let second = top_up(&app, &token, &card, 3_000, "pipl-2").await;

    // Staff see masks; a finance staff member unmasks the phone number only with a reason, which is logged.
    let viewer = staff(&app, "s_viewer", &[Role::Viewer, Role::Marketing]).await;
    let finance = staff(&app, "s_finance", &[Role::Finance]).await;
    let unmask = format!("/api/ops/customers/{id}/unmask");
    let shown = app.send("GET", &format!("/api/ops/customers/{id}"), None, Some(&viewer)).await;
    assert_eq!((shown.status, shown.body["phone_masked"].as_str()), (200, Some("136****5678")), "{:?}", shown.body);
    assert!(!shown.body.to_string().contains(phone));
    let reason = "客户来电核实退款，工单 CS-2041";
    refused(
        &app.send("POST", &unmask, Some(&json!({"field": "phone", "reason": reason})), Some(&viewer)).await,
        403,
        "forbidden_role",
    );
    let before = app.snapshot().await;
    refused(
        &app.send("POST", &unmask, Some(&json!({"field": "phone", "reason": " ok "})), Some(&finance)).await,
        400,
        "reason_required",
    );
    refused(
        &app.send("POST", &unmask, Some(&json!({"field": "name", "reason": reason})), Some(&finance)).await,
        400,
        "validation_failed",
    );
    assert_eq!(app.snapshot().await, before, "refused unmasks write nothing");
    let r = app.send("POST", &unmask, Some(&json!({"field": "phone", "reason": reason})), Some(&finance)).await;
    assert_eq!((r.status, r.body["value"].as_str()), (200, Some(phone)), "{:?}", r.body);
    // The audit log has the reason as the request's summary.
    let day = app.now.to_rfc3339()[..10].to_owned();
    let audit = app.send("GET", &format!("/api/ops/audit?day={day}&actor=s_finance"), None, Some(OPERATOR_TOKEN)).await;
    assert_eq!(audit.status, 200, "{:?}", audit.body);
    let summaries: Vec<&str> =
        audit.body["entries"].as_array().expect("entries").iter().filter_map(|e| e["summary"].as_str()).collect();
    assert!(summaries.iter().any(|s| s.contains(reason)), "{:?}", audit.body);

    // The export: everything in the profile, the number in the clear, and who unmasked it why.
    let export = app.send("GET", "/api/me/export", None, Some(&token)).await;
    assert_eq!(export.status, 200, "{:?}", export.body);
    let e = &export.body;
    assert_eq!((e["customer_id"].as_str(), e["phone"].as_str()), (Some(id.as_str()), Some(phone)), "{e}");
    assert_eq!(e["identities"].as_array().map(Vec::len), Some(1), "{e}");
    assert_eq!(e["payments"].as_array().map(Vec::len), Some(2), "{e}");
    assert_eq!(
        (e["staff_access"][0]["by"].as_str(), e["staff_access"][0]["reason"].as_str()),
        (Some("s_finance"), Some(reason))
    );
    assert_eq!(e["marketing_allowed"], json!(true));

    // Erasure needs the customer's confirmation in so many words; without it nothing happens.
    let before = app.snapshot().await;
    refused(
        &app.send("POST", "/api/me/erasure", Some(&json!({"confirm": "yes"})), Some(&token)).await,
        400,
        "validation_failed",
    );
    refused(&app.send("POST", "/api/me/erasure", Some(&json!({})), Some(&token)).await, 400, "validation_failed");
    assert_eq!(app.snapshot().await, before, "an unconfirmed erasure writes nothing");
    let erased = app
        .send("POST", "/api/me/erasure", Some(&json!({"confirm": "erase my personal information"})), Some(&token))
        .await;
    assert_eq!((erased.status, erased.body["index_entries_deleted"].as_u64()), (200, Some(2)), "{:?}", erased.body);

    // The session names no one any more; staff see a pseudonymous profile.
    refused(&app.send("GET", "/api/me", None, Some(&token)).await, 401, "customer_erased");
    refused(&app.send("GET", "/api/me/export", None, Some(&token)).await, 401, "customer_erased");
    let shown = app.send("GET", &format!("/api/ops/customers/{id}"), None, Some(&viewer)).await;
    assert_eq!(shown.status, 200, "{:?}", shown.body);
    assert!(shown.body["erased_at"].is_string() && shown.body["phone_masked"].is_null(), "{:?}", shown.body);
    assert_eq!(shown.body["identities"], json!([]));
    refused(
        &app.send("POST", &unmask, Some(&json!({"field": "phone", "reason": reason})), Some(&finance)).await,
        404,
        "nothing_to_unmask",
    );

    // The money stays where it was: a refund after the erasure, and the books balance.
    let path = format!("/api/campus/orders/{second}/refund");
    let headers = [
        ("authorization".to_owned(), format!("Bearer {OPERATOR_TOKEN}")),
        ("idempotency-key".to_owned(), "pipl-refund".to_owned()),
    ];
    let refund = app.send_raw("POST", &path, Vec::new(), &headers).await;
    assert_eq!((refund.status, refund.body["state"].as_str()), (200, Some("refunded")), "{:?}", refund.body);
    app.ledger_check().await;

    // A store dump names no one: not the number, its unkeyed hash, the keyed hash of the erased index, the login
    // subject or the card holder's name.
    let d = dump(&app).await;
    assert!(d.len() > 20, "the dump holds the records ({} keys)", d.len());
    nowhere(&d, phone, "the phone number");
    nowhere(&d, &scenefin_core::ids::hash_key_part(phone), "the phone's unkeyed hash");
    let pii = PiiKeys::new(PII_SECRET.as_bytes(), None);
    nowhere(&d, &pii.lookup(phone), "the erased phone index");
    nowhere(&d, &pii.lookup(subject), "the erased identity index");
    nowhere(&d, subject, "the login subject");
    nowhere(&d, "欧阳娜娜", "the card holder's name");
    nowhere(&d, "司马相如", "the room owner's name");
    nowhere(&d, "诸葛孔明", "the bill holder's name");
    assert!(d.iter().any(|(_, v)| v.contains("司**如")), "the masked owner name is what is kept");
    assert!(d.iter().any(|(_, v)| v.contains("欧**娜")), "the masked name is what is kept");

    // The same person signing in again is a new customer.
    let again = app.login(Provider::Wechat, subject, Some(phone), None).await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_ne!(again.body["customer_id"].as_str(), Some(id.as_str()));
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketing_consent_governs_profile_targeted_offers_and_referral_nudges() {
    let app = TestApp::spawn().await.expect("app");
    onboard_merchant(&app, "consent_cafe", "nanshan", &["k1"]).await;
    create_campaign(
        &app,
        &with(campaign("consent_vip", &["consent_cafe"]), json!({"eligibility": {"tags_any": ["vip"]}})),
    )
    .await;
    create_campaign(&app, &campaign("consent_open", &["consent_cafe"])).await;
    let ids: Vec<(String, String)> = {
        let mut v = Vec::new();
        for s in ["wx_consent_a", "wx_consent_b"] {
            let r = app.login(Provider::Wechat, s, None, None).await;
            v.push((
                r.body["customer_id"].as_str().expect("id").to_owned(),
                r.body["token"].as_str().expect("t").to_owned(),
            ));
        }
        v
    };
    for (id, _) in &ids {
        let r = app
            .send("POST", &format!("/api/ops/customers/{id}/tags"), Some(&json!({"tag": "vip"})), Some(OPERATOR_TOKEN))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let (_, a) = &ids[0];
    let (_, b) = &ids[1];
    // B turns profile-based offers off: the targeted campaign is refused with a reason, the open one is not.
    let r = app.send("PUT", "/api/me/consent", Some(&json!({"marketing": false})), Some(b)).await;
    assert_eq!((r.status, &r.body["marketing_allowed"]), (200, &json!(false)), "{:?}", r.body);
    assert_eq!(r.body["marketing_consent"]["granted"], json!(false));
    refused(
        &app.send("PUT", "/api/me/consent", Some(&json!({"marketing": "no"})), Some(b)).await,
        400,
        "validation_failed",
    );
    let before = app.snapshot().await;
    refused(&claim(&app, b, "consent_vip", "b-vip").await, 422, "marketing_consent_withdrawn");
    assert_eq!(app.snapshot().await, before, "the refusal wrote nothing");
    assert_eq!(claim(&app, b, "consent_open", "b-open").await.status, 201);
    assert_eq!(claim(&app, a, "consent_vip", "a-vip").await.status, 201, "A never withdrew consent");
    // Granting it again opens the targeted offer.
    assert_eq!(app.send("PUT", "/api/me/consent", Some(&json!({"marketing": true})), Some(b)).await.status, 200);
    assert_eq!(claim(&app, b, "consent_vip", "b-vip-2").await.status, 201);

    // Referral nudges: "N more to reach tier M" only for a customer who allows marketing.
    create_program(&app, &program("consent_friends", json!([cash_tier(1, 500, None), cash_tier(3, 800, None)]))).await;
    let me = |token: &str| {
        let token = token.to_owned();
        let app = &app;
        async move { app.send("GET", "/api/referrals/me?program_id=consent_friends", None, Some(&token)).await }
    };
    let nudged = me(a).await;
    assert_eq!(nudged.status, 200, "{:?}", nudged.body);
    assert_eq!(nudged.body["next_tier"]["message"].as_str(), Some("1 more to reach tier 1"), "{:?}", nudged.body);
    assert_eq!(app.send("PUT", "/api/me/consent", Some(&json!({"marketing": false})), Some(a)).await.status, 200);
    let quiet = me(a).await;
    assert_eq!(
        (quiet.body["next_tier"]["remaining"].as_i64(), &quiet.body["next_tier"]["message"]),
        (Some(1), &Value::Null)
    );
    app.host.shutdown().await;
}
