use scenefin_core::auth::{IdentityAssertion, Provider, sign_assertion};
use scenefin_core::events::{FunnelStep, funnel_count};
use scenefin_core::kv::MemStore;
use scenefin_core::kv::interleave::join_all;

use super::*;
use crate::channels::{NewChannel, create};

const IDENTITY: &[u8] = b"identity-secret";
const SESSION: &[u8] = b"session-secret";

static PII: std::sync::LazyLock<PiiKeys> = std::sync::LazyLock::new(|| PiiKeys::new(b"pii-secret", None));

fn secrets() -> Secrets<'static> {
    Secrets { identity_secret: IDENTITY, session_secret: SESSION, pii: &PII }
}

fn now() -> Timestamp {
    Timestamp::parse_rfc3339("2026-11-23T10:00:00+08:00").expect("time")
}

fn assertion(provider: Provider, subject: &str, phone: Option<&str>) -> String {
    let a = IdentityAssertion {
        provider,
        subject: subject.into(),
        phone: phone.map(Into::into),
        card_fingerprint: None,
        iat: now().unix_secs(),
    };
    sign_assertion(IDENTITY, &a)
}

fn login_with(store: &MemStore, assertion: String, channel_code: Option<&str>) -> Result<Session, CustomerError> {
    let input = Login { assertion, channel_code: channel_code.map(Into::into), referral_code: None };
    pollster::block_on(login(store, &secrets(), &LifecycleRules::default(), input, now()))
}

#[test]
fn the_same_subject_is_always_the_same_customer() {
    let store = MemStore::default();
    let first = login_with(&store, assertion(Provider::Wechat, "wx_union_1", None), None).expect("login");
    let second = login_with(&store, assertion(Provider::Wechat, "wx_union_1", None), None).expect("login");
    assert!(first.is_new);
    assert!(!second.is_new);
    assert_eq!(first.customer_id, second.customer_id);
    let other = login_with(&store, assertion(Provider::Wechat, "wx_union_2", None), None).expect("login");
    assert_ne!(other.customer_id, first.customer_id);
}

#[test]
fn a_verified_phone_links_identities_across_providers() {
    let store = MemStore::default();
    let wechat = login_with(&store, assertion(Provider::Wechat, "wx_1", Some("13812345678")), None).expect("login");
    let app = login_with(&store, assertion(Provider::App, "app_77", Some("13812345678")), None).expect("login");
    assert_eq!(app.customer_id, wechat.customer_id);
    assert!(!app.is_new);
    let c = pollster::block_on(customers::lookup(&store, &app.customer_id)).expect("read").expect("exists");
    assert_eq!(c.identities.len(), 2);
    assert_eq!(c.phone_masked.as_deref(), Some("138****5678"));
    assert_eq!(c.journal.iter().map(|j| j.via.as_str()).collect::<Vec<_>>(), vec!["registered", "phone"]);
}

#[test]
fn a_provider_links_at_most_three_identities() {
    let store = MemStore::default();
    for i in 0..3 {
        login_with(&store, assertion(Provider::App, &format!("app_{i}"), Some("13900000000")), None).expect("login");
    }
    let fourth = login_with(&store, assertion(Provider::App, "app_3", Some("13900000000")), None);
    assert_eq!(fourth, Err(CustomerError::IdentityLimit { provider: "app".into(), limit: 3 }));
}

#[test]
fn placeholder_subjects_and_bad_phones_are_refused_without_writes() {
    let store = MemStore::default();
    for subject in ["", "null", "Undefined", "anonymous", "0000000"] {
        let r = login_with(&store, assertion(Provider::Wechat, subject, None), None);
        assert!(matches!(r, Err(CustomerError::BlockedSubject(_))), "{subject:?}: {r:?}");
    }
    let r = login_with(&store, assertion(Provider::Phone, "p1", Some("12345")), None);
    assert_eq!(r, Err(CustomerError::InvalidPhone));
    assert!(store.keys().is_empty());
}

#[test]
fn forged_and_expired_assertions_are_unauthenticated() {
    let store = MemStore::default();
    let mut forged = assertion(Provider::Wechat, "wx_1", None);
    forged.push('x');
    let r = login_with(&store, forged, None).expect_err("forged");
    assert_eq!(scenefin_core::Problem::kind(&r), scenefin_core::ErrorKind::Unauthenticated);
    let old = IdentityAssertion {
        provider: Provider::Wechat,
        subject: "wx_1".into(),
        phone: None,
        card_fingerprint: None,
        iat: now().unix_secs() - 301,
    };
    let r = login_with(&store, sign_assertion(IDENTITY, &old), None).expect_err("expired");
    assert_eq!(scenefin_core::Problem::code(&r), "assertion_expired");
    assert!(store.keys().is_empty());
}

#[test]
fn concurrent_first_logins_converge_on_one_customer() {
    let store = MemStore::default();
    let (secrets, rules) = (secrets(), LifecycleRules::default());
    let tasks = (0..6)
        .map(|_| {
            let input = Login {
                assertion: assertion(Provider::Wechat, "wx_race", None),
                channel_code: None,
                referral_code: None,
            };
            login(&store, &secrets, &rules, input, now())
        })
        .collect();
    let sessions: Vec<Session> = pollster::block_on(join_all(tasks)).into_iter().map(|r| r.expect("login")).collect();
    assert!(sessions.windows(2).all(|w| w[0].customer_id == w[1].customer_id));
    assert_eq!(sessions.iter().filter(|s| s.is_new).count(), 1);
    let registered = pollster::block_on(funnel_count(&store, now().shanghai_day(), FunnelStep::Registered, "all"));
    assert_eq!(registered, Ok(1));
    assert_eq!(counter(&store, &events::keys::stage("new")), 1);
}

fn counter(store: &MemStore, key: &kv::Key) -> i64 {
    pollster::block_on(kv::read_counter(store, key)).expect("counter")
}

#[test]
fn a_first_login_is_its_profile_with_the_registration_its_identity_and_the_counts() {
    let store = MemStore::default();
    let s = login_with(&store, assertion(Provider::Wechat, "wx_one", None), None).expect("login");
    let c = pollster::block_on(customers::lookup(&store, &s.customer_id)).expect("read").expect("exists");
    assert_eq!(c.applied_events, vec![format!("registered:{}", s.customer_id)]);
    assert!(!events::unregistered(&c));
    let day = now().shanghai_day();
    for (key, n) in [
        (events::keys::funnel(day, "registered", "all"), 1),
        (events::keys::funnel(day, "registered", "sc:customers"), 1),
        (events::keys::stage("new"), 1),
    ] {
        assert_eq!(counter(&store, &key), n, "{key}");
    }
    // No per-event or per-entry claims: the identity's index entry was the claim.
    assert!(store.keys().iter().all(|k| !k.starts_with("cust:event:") && !k.starts_with("cust:stagefx:")));
    // A returning login counts nothing and writes nothing.
    let writes = store.writes();
    let again = login_with(&store, assertion(Provider::Wechat, "wx_one", None), None).expect("login");
    assert_eq!((again.customer_id.as_str(), again.is_new), (s.customer_id.as_str(), false));
    assert_eq!(store.writes(), writes);
}

#[test]
fn a_first_login_that_fails_or_crashes_anywhere_is_completed_by_its_retry_and_counted_at_most_once() {
    // Arrange: the writes of a first login (profile claim and write, identity claim and write, three counters).
    let probe = MemStore::default();
    let id = login_with(&probe, assertion(Provider::Wechat, "wx_crash", None), None).expect("login").customer_id;
    let writes = probe.writes();
    assert_eq!(writes, 7);
    let day = now().shanghai_day();
    let counters = [
        events::keys::funnel(day, "registered", "all"),
        events::keys::funnel(day, "registered", "sc:customers"),
        events::keys::stage("new"),
    ];

    for crash in [false, true] {
        for n in 1..=writes {
            let store = MemStore::default();
            // Act: the n-th write fails (or lands and the process dies), then a new process retries, after the
            // creation lease of any claim the first left behind.
            if crash {
                store.crash_after_write(n);
            } else {
                store.fail_write(n);
            }
            let first = login_with(&store, assertion(Provider::Wechat, "wx_crash", None), None);
            store.heal();
            store.set_now(1_800_000_000 + kv::CREATION_LEASE_SECS + 1);
            let retry = login_with(&store, assertion(Provider::Wechat, "wx_crash", None), None).expect("retry");
            let again = login_with(&store, assertion(Provider::Wechat, "wx_crash", None), None).expect("again");

            // Assert: one customer, registered once, counted at most once; fully when the first login stopped
            // before its identity's index entry was written (write 4), or failed without dying.
            let case = format!("{} at write {n}", if crash { "crash" } else { "failure" });
            assert_eq!((retry.customer_id.as_str(), again.customer_id.as_str()), (id.as_str(), id.as_str()), "{case}");
            assert!(!again.is_new, "{case}");
            let registrations = usize::from(first.as_ref().is_ok_and(|s| s.is_new)) + usize::from(retry.is_new);
            assert_eq!(registrations, usize::from(n < 4 || (!crash && n == 4) || first.is_ok()), "{case}");
            let c = pollster::block_on(customers::lookup(&store, &id)).expect("read").expect("exists");
            assert_eq!(c.identities.len(), 1, "{case}");
            assert_eq!(c.applied_events.len(), 1, "{case}");
            for key in &counters {
                let v = counter(&store, key);
                assert!(v <= 1, "{case}: {key} = {v}");
                if n < 4 || (!crash && n <= 4) {
                    assert_eq!(v, 1, "{case}: {key}");
                }
            }
        }
    }
}

#[test]
fn a_channel_code_sets_first_touch_once_and_last_touch_every_time() {
    let store = MemStore::default();
    for code in ["BR01", "POSTER9"] {
        let input = NewChannel {
            code: Some(code.into()),
            channel: "branch".into(),
            campaign_id: Some("spring".into()),
            ..Default::default()
        };
        pollster::block_on(create(&store, input, "GEN", now())).expect("channel");
    }
    let s = login_with(&store, assertion(Provider::Wechat, "wx_t", None), Some("BR01")).expect("login");
    login_with(&store, assertion(Provider::Wechat, "wx_t", None), Some("POSTER9")).expect("login");
    let c = pollster::block_on(customers::lookup(&store, &s.customer_id)).expect("read").expect("exists");
    assert_eq!(c.first_touch.map(|t| t.code), Some("BR01".into()));
    assert_eq!(c.last_touch.map(|t| t.code), Some("POSTER9".into()));
    let by_code = pollster::block_on(funnel_count(&store, now().shanghai_day(), FunnelStep::Registered, "ch:BR01"));
    assert_eq!(by_code, Ok(1));
    assert!(matches!(
        login_with(&store, assertion(Provider::Wechat, "wx_t", None), Some("NOPE")),
        Err(CustomerError::UnknownChannel(_))
    ));
}

#[test]
fn sessions_authenticate_their_customer_only_until_expiry() {
    let store = MemStore::default();
    let s = login_with(&store, assertion(Provider::Wechat, "wx_s", None), None).expect("login");
    let header = format!("Bearer {}", s.token);
    let c = pollster::block_on(authenticate(&store, SESSION, Some(&header), now())).expect("auth");
    assert_eq!(c.id, s.customer_id);
    let later = now().plus_secs(SESSION_TTL_SECS);
    assert!(pollster::block_on(authenticate(&store, SESSION, Some(&header), later)).is_err());
    assert!(pollster::block_on(authenticate(&store, b"other", Some(&header), now())).is_err());
    assert!(pollster::block_on(authenticate(&store, SESSION, None, now())).is_err());
}

#[test]
fn records_under_the_unkeyed_hash_are_found_and_moved_to_the_keyed_one() {
    let store = MemStore::default();
    // A customer written before keyed hashes: its identity and phone indexed under plain SHA-256 prefixes.
    let legacy_subject = hash_key_part("wx_old");
    let legacy_phone = hash_key_part("13912345678");
    let id = derived_customer_id("wechat", &legacy_subject, 0);
    let mut old = Customer::new(&id, now());
    old.identities.push(Identity {
        provider: "wechat".into(),
        subject_hash: legacy_subject.clone(),
        subject_masked: "w****d".into(),
        linked_at: now(),
    });
    old.phone_hash = Some(legacy_phone.clone());
    old.phone_masked = Some("139****5678".into());
    let old = events::register(&old, &LifecycleRules::default());
    pollster::block_on(kv::update_json_new(&store, &customers::keys::customer(&id), |_: Option<&Customer>| {
        Ok::<_, CustomerError>(Step::Write(old.clone(), ()))
    }))
    .expect("profile");
    for key in [keys::identity("wechat", &legacy_subject), keys::phone(&legacy_phone)] {
        pollster::block_on(index_claim(&store, &key, &id)).expect("index");
    }

    let again = login_with(&store, assertion(Provider::Wechat, "wx_old", Some("13912345678")), None).expect("login");
    assert_eq!(again.customer_id, id, "the old record is found");
    assert!(!again.is_new);
    let c = pollster::block_on(customers::lookup(&store, &id)).expect("read").expect("exists");
    assert_eq!(c.identities.len(), 1, "moved, not linked twice: {:?}", c.identities);
    assert_eq!(c.identities[0].subject_hash, PII.lookup("wx_old"));
    assert_eq!(c.phone_hash, Some(PII.lookup("13912345678")));
    let sealed = c.phone_sealed.clone().expect("the number is sealed now");
    assert_eq!(PII.open(&phone_context(&id), &sealed).as_deref(), Some("13912345678"));
    let keys_now = store.keys();
    assert!(!keys_now.iter().any(|k| k.contains(&legacy_subject) || k.contains(&legacy_phone)), "{keys_now:?}");
    // Another provider with the same phone finds the customer through the keyed phone entry.
    let app = login_with(&store, assertion(Provider::App, "app_old", Some("13912345678")), None).expect("login");
    assert_eq!(app.customer_id, id);
}

#[test]
fn an_erased_customer_is_gone_and_their_identity_registers_afresh() {
    let store = MemStore::default();
    let first = login_with(&store, assertion(Provider::Wechat, "wx_gone", Some("13700001111")), None).expect("login");
    let erased = pollster::block_on(crate::privacy::erase(&store, &first.customer_id, now())).expect("erase");
    assert_eq!(erased.index_entries_deleted, 2, "identity and phone");
    let again = pollster::block_on(crate::privacy::erase(&store, &first.customer_id, now())).expect("erase again");
    assert_eq!(again.erased_at, erased.erased_at, "erasing twice is erasing once");
    let c = pollster::block_on(customers::lookup(&store, &first.customer_id)).expect("read").expect("kept");
    assert!(
        c.identities.is_empty() && c.phone_hash.is_none() && c.phone_sealed.is_none() && c.erasure_pending.is_empty()
    );
    let auth = format!("Bearer {}", first.token);
    let refused = pollster::block_on(authenticate(&store, SESSION, Some(&auth), now()));
    assert_eq!(refused.map(|c| c.id), Err(CustomerError::Erased));

    let next = login_with(&store, assertion(Provider::Wechat, "wx_gone", Some("13700001111")), None).expect("login");
    assert!(next.is_new, "a new customer");
    assert_ne!(next.customer_id, first.customer_id);
    let again = login_with(&store, assertion(Provider::Wechat, "wx_gone", None), None).expect("login");
    assert_eq!(again.customer_id, next.customer_id, "and the same one from then on");
}

#[test]
fn a_stale_index_entry_left_by_a_cut_short_erasure_is_cleared_by_the_next_login() {
    let store = MemStore::default();
    let first = login_with(&store, assertion(Provider::Wechat, "wx_cut", None), None).expect("login");
    // The profile pseudonymised, the index entries not yet deleted (a crash after the first write).
    pollster::block_on(kv::update_json(
        &store,
        &customers::keys::customer(&first.customer_id),
        |c: Option<&Customer>| {
            let c = c.expect("profile");
            let pending = vec![keys::identity("wechat", &PII.lookup("wx_cut")).as_str().to_owned()];
            let next =
                Customer { identities: Vec::new(), erased_at: Some(now()), erasure_pending: pending, ..c.clone() };
            Ok::<_, CustomerError>(Step::Write(next, ()))
        },
    ))
    .expect("cut short");
    let next = login_with(&store, assertion(Provider::Wechat, "wx_cut", None), None).expect("login");
    assert_ne!(next.customer_id, first.customer_id);
    assert!(next.is_new);
    let c = pollster::block_on(customers::lookup(&store, &first.customer_id)).expect("read").expect("kept");
    assert!(c.erasure_pending.is_empty(), "the erasure was finished");
}

#[test]
fn erasing_a_customer_leaves_an_index_entry_that_names_another_customer_alone() {
    let store = MemStore::default();
    let x = login_with(&store, assertion(Provider::Wechat, "wx_x", Some("13911112222")), None).expect("x");
    // Y is known before it verifies the same number, so the phone's entry stays X's while Y's profile records it.
    let y = login_with(&store, assertion(Provider::App, "app_y", None), None).expect("y");
    let y_again = login_with(&store, assertion(Provider::App, "app_y", Some("13911112222")), None).expect("y");
    assert_eq!(y_again.customer_id, y.customer_id);
    let erased = pollster::block_on(crate::privacy::erase(&store, &y.customer_id, now())).expect("erase y");
    assert_eq!(erased.index_entries_deleted, 1, "Y's identity only, not X's phone");
    let joined = login_with(&store, assertion(Provider::Phone, "13911112222", Some("13911112222")), None).expect("sms");
    assert_eq!(joined.customer_id, x.customer_id, "the phone still leads to X");
}
