//! Domain tests over the in-memory store: the stock, limit and budget invariants under interleaved claims, one
//! winner among concurrent redemptions, and claims and redemptions interrupted at every write (the merchant's feed
//! then holding each redemption and reversal once, in order).

use scenefin_core::clock::Timestamp;
use scenefin_core::coupons::{CouponState, Discount, DiscountKind};
use scenefin_core::customers::{self, Customer, LifecycleRules};
use scenefin_core::feed;
use scenefin_core::kv::{MemStore, interleave, put_json, read_counter};
use scenefin_core::{ledger, limits};

use crate::campaigns::{self, Eligibility, Kind, NewCampaign, Schedule, Validity};
use crate::merchants::{self, Merchant, NewMerchant, Shop};
use crate::redemptions::{self, RedeemInput, RedemptionState};
use crate::{CouponError, Refusal, claims, keys};

fn now() -> Timestamp {
    Timestamp::parse_rfc3339("2026-11-23T10:00:00+08:00").expect("time")
}

fn run<F: Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

fn campaign(id: &str, stock: i64, per_customer: i64, budget_fen: i64) -> NewCampaign {
    NewCampaign {
        id: id.into(),
        title: "¥5 off".into(),
        kind: Kind::Daily,
        merchant_ids: vec!["cafe".into()],
        district: None,
        coupon: Discount {
            kind: DiscountKind::FixedOff,
            amount_fen: Some(500),
            percent_bp: None,
            max_off_fen: None,
            min_spend_fen: 1000,
        },
        validity: Validity { days_after_claim: Some(7), ends_at: None },
        schedule: Schedule { starts_at: now().plus_days(-1), ends_at: now().plus_days(30) },
        stock_total: stock,
        daily_stock: None,
        per_customer_limit: per_customer,
        per_customer_daily_limit: None,
        budget_fen,
        eligibility: Eligibility::default(),
        applies_to: vec![],
        checkin_streaks: vec![],
    }
}

fn setup(store: &MemStore, customers: usize) -> Merchant {
    run(async {
        let input = NewMerchant {
            merchant_id: "cafe".into(),
            name: "Sunny Cafe".into(),
            district: "nanshan".into(),
            community_ids: vec![],
            stores: vec![Shop { store_id: "s1".into(), name: "Main".into() }],
        };
        let (merchant, _) = merchants::register(store, input, now()).await.expect("merchant");
        for i in 0..customers {
            let id = format!("c_{i}");
            put_json(store, &customers::keys::customer(&id), &Customer::new(&id, now())).await.expect("customer");
        }
        merchant
    })
}

fn claim_all(store: &MemStore, campaign_id: &str, claims: &[(String, String)]) -> Vec<Result<String, CouponError>> {
    let rules = LifecycleRules::default();
    run(interleave::join_all(
        claims
            .iter()
            .map(|(customer, key)| {
                let rules = &rules;
                async move { claims::claim(store, campaign_id, customer, key, rules, now()).await.map(|c| c.code) }
            })
            .collect(),
    ))
}

fn refusals(results: &[Result<String, CouponError>], refusal: Refusal) -> usize {
    results.iter().filter(|r| matches!(r, Err(CouponError::Refused(x)) if *x == refusal)).count()
}

#[test]
fn interleaved_claims_never_pass_stock_limits_or_budget() {
    let store = MemStore::default();
    setup(&store, 60);
    run(campaigns::create(&store, campaign("stock", 25, 1, 1_000_000), now())).expect("campaign");
    run(campaigns::create(&store, campaign("budget", 1_000, 5, 7 * 500), now())).expect("campaign");
    run(campaigns::create(&store, campaign("limit", 1_000, 2, 1_000_000), now())).expect("campaign");

    let many: Vec<(String, String)> = (0..60).map(|i| (format!("c_{i}"), "k".to_owned())).collect();
    let stock = claim_all(&store, "stock", &many);
    assert_eq!(stock.iter().filter(|r| r.is_ok()).count(), 25);
    assert_eq!(refusals(&stock, Refusal::OutOfStock), 35);

    let budget = claim_all(&store, "budget", &many);
    assert_eq!(budget.iter().filter(|r| r.is_ok()).count(), 7);
    assert_eq!(refusals(&budget, Refusal::BudgetExhausted), 53);
    let status = run(limits::status(&store, &keys::budget("budget"))).expect("status");
    assert!(status.reserved_fen <= status.total_fen, "{status:?}");
    // Refused claims gave their stock back.
    assert_eq!(run(campaigns::issued(&store, "budget")).expect("issued"), 7);

    let one_customer: Vec<(String, String)> = (0..30).map(|i| ("c_1".to_owned(), format!("key{i}"))).collect();
    let limited = claim_all(&store, "limit", &one_customer);
    assert_eq!(limited.iter().filter(|r| r.is_ok()).count(), 2);
    assert_eq!(refusals(&limited, Refusal::LimitReached), 28);
    let held = run(read_counter(&store, &keys::per_customer("limit", "c_1"))).expect("counter");
    assert_eq!(held, 2);
}

#[test]
fn one_code_redeemed_concurrently_has_exactly_one_winner() {
    let store = MemStore::default();
    let merchant = setup(&store, 1);
    run(campaigns::create(&store, campaign("c1", 10, 1, 100_000), now())).expect("campaign");
    let rules = LifecycleRules::default();
    let code = run(claims::claim(&store, "c1", "c_0", "k", &rules, now())).expect("claim").code;
    let inputs: Vec<RedeemInput> = (0..20)
        .map(|i| RedeemInput {
            code: code.clone(),
            store_id: "s1".into(),
            order_amount_fen: 3000,
            merchant_order_id: format!("order-{i}"),
        })
        .collect();

    let results = run(interleave::join_all(
        inputs.iter().map(|input| redemptions::redeem(&store, &merchant, input, &rules, now())).collect(),
    ));

    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert!(results.iter().filter(|r| r.is_err()).all(|r| matches!(r, Err(CouponError::AlreadyUsed))));
    assert_eq!(won[0].discount_fen, 500);
    let report = run(ledger::check(&store, &[now().shanghai_day()])).expect("check");
    assert!(report.balanced, "{:?}", report.discrepancies);
    assert_eq!(run(ledger::balance(&store, &keys::merchant_account("cafe"))).expect("balance"), -500);
    let status = run(limits::status(&store, &keys::budget("c1"))).expect("status");
    assert_eq!(status.committed_fen, 500);
}

#[test]
fn a_claim_interrupted_at_any_write_issues_at_most_one_coupon_and_completes_on_retry() {
    let rules = LifecycleRules::default();
    let mut n = 1;
    loop {
        let store = MemStore::default();
        setup(&store, 1);
        run(campaigns::create(&store, campaign("c1", 10, 1, 100_000), now())).expect("campaign");
        store.fail_write(n);

        let first = run(claims::claim(&store, "c1", "c_0", "key", &rules, now()));
        store.heal();
        // A store error gives back what the attempt took, so the retry issues the one coupon, counted once. (Only a
        // crash between the takes and the activation leaves them taken: its retry is refused, never doubled.)
        let coupon = run(claims::claim(&store, "c1", "c_0", "key", &rules, now())).expect("the retry issues");
        assert_eq!(coupon.state, CouponState::Active, "write {n}");
        let issued = run(campaigns::issued(&store, "c1")).expect("issued");
        let wallet = run(claims::wallet(&store, "c_0", None, now())).expect("wallet");
        assert_eq!((wallet.len(), issued), (1, 1), "write {n}");
        let status = run(limits::status(&store, &keys::budget("c1"))).expect("status");
        assert_eq!(status.reserved_fen, 500, "write {n}: {status:?}");
        if first.is_ok() {
            break;
        }
        n += 1;
    }
}

#[test]
fn a_redemption_interrupted_at_any_write_uses_the_coupon_once_and_completes_on_retry() {
    let rules = LifecycleRules::default();
    let mut n = 1;
    loop {
        let store = MemStore::default();
        let merchant = setup(&store, 1);
        run(campaigns::create(&store, campaign("c1", 10, 1, 100_000), now())).expect("campaign");
        let code = run(claims::claim(&store, "c1", "c_0", "k", &rules, now())).expect("claim").code;
        let input = RedeemInput { code, store_id: "s1".into(), order_amount_fen: 3000, merchant_order_id: "o1".into() };
        store.fail_write(n);

        let first = run(redemptions::redeem(&store, &merchant, &input, &rules, now()));
        store.heal();
        let done = run(redemptions::redeem(&store, &merchant, &input, &rules, now())).expect("retry completes");

        assert_eq!(done.state, RedemptionState::Completed, "write {n}");
        assert_eq!(run(ledger::balance(&store, &keys::merchant_account("cafe"))).expect("bal"), -500, "write {n}");
        // Statistics are at most once: a crash between an effect's claim and its increment loses that count.
        let redeemed = run(read_counter(&store, &keys::counter("c1", "redeemed"))).expect("ctr");
        assert!((0..=1).contains(&redeemed), "write {n}: {redeemed}");
        let coupon = run(scenefin_core::coupons::get(&store, &done.coupon_id)).expect("get").expect("coupon");
        assert_eq!((coupon.state, coupon.used_by.as_deref()), (CouponState::Used, Some(done.redemption_id.as_str())));
        let report = run(ledger::check(&store, &[now().shanghai_day()])).expect("check");
        assert!(report.balanced, "write {n}: {:?}", report.discrepancies);
        if first.is_ok() {
            break;
        }
        n += 1;
    }
}

#[test]
fn interleaved_unknown_codes_at_one_store_answer_exactly_the_limit_and_lock_only_that_store() {
    let store = MemStore::default();
    let rules = LifecycleRules::default();
    let shops = ["s1", "s2"].map(|id| Shop { store_id: id.into(), name: id.into() });
    let input = NewMerchant {
        merchant_id: "tills".into(),
        name: "Two Tills".into(),
        district: "nanshan".into(),
        community_ids: vec![],
        stores: shops.to_vec(),
    };
    let (merchant, _) = run(merchants::register(&store, input, now())).expect("merchant");
    let guess = |store_id: &str, i: usize| RedeemInput {
        code: format!("NOSUCHCODE{i:02}"),
        store_id: store_id.into(),
        order_amount_fen: 3000,
        merchant_order_id: format!("{store_id}-{i}"),
    };
    let guesses: Vec<RedeemInput> = (0..30).map(|i| guess("s1", i)).collect();

    let results = run(interleave::join_all(
        guesses.iter().map(|input| redemptions::redeem(&store, &merchant, input, &rules, now())).collect(),
    ));

    let answered = results.iter().filter(|r| matches!(r, Err(CouponError::CouponNotFound))).count();
    let locked = results.iter().filter(|r| matches!(r, Err(CouponError::LockedOut(_)))).count();
    assert_eq!((answered, locked), (merchants::MAX_MISSES_PER_MINUTE as usize, 20), "{results:?}");
    let again = run(redemptions::redeem(&store, &merchant, &guess("s1", 30), &rules, now()));
    assert!(matches!(again, Err(CouponError::LockedOut(until)) if until == now().plus_secs(merchants::LOCKOUT_SECS)));
    let other = run(redemptions::redeem(&store, &merchant, &guess("s2", 0), &rules, now()));
    assert_eq!(other, Err(CouponError::CouponNotFound));
}

/// The event ids of merchant `cafe`'s feed, read to the end as the merchant would (later and later, so a slot a
/// crash left reserved but empty is given up on).
fn feed_ids(store: &MemStore) -> Vec<String> {
    let merchant_feed = feed::key(crate::OWNER, "cafe");
    let (mut cursor, mut out) = (0, Vec::new());
    for round in 0..20 {
        let at = now().plus_secs(round * (feed::ABANDONED_AFTER_SECS + 1));
        let page = run(feed::read(store, &merchant_feed, cursor, 50, at)).expect("read");
        out.extend(page.events.into_iter().map(|(_, e)| e.id));
        if page.next == page.appended && page.next == cursor {
            break;
        }
        cursor = page.next;
    }
    out
}

/// A redemption or its reversal failing at, or crashing right after, write `n` (`crash`), then the merchant's next
/// move: the retry, or (`reverse_first`) a reversal before it. Whatever happened, the feed holds the redemption once,
/// then its reversal once.
fn feed_after_a_fault(n: u64, crash: bool, in_reversal: bool, reverse_first: bool) -> bool {
    let rules = LifecycleRules::default();
    let store = MemStore::default();
    let merchant = setup(&store, 1);
    run(campaigns::create(&store, campaign("c1", 10, 1, 100_000), now())).expect("campaign");
    let code = run(claims::claim(&store, "c1", "c_0", "k", &rules, now())).expect("claim").code;
    let input = RedeemInput { code, store_id: "s1".into(), order_amount_fen: 3000, merchant_order_id: "o1".into() };
    let id = redemptions::redemption_id_for("cafe", "o1");
    let fault = |store: &MemStore| if crash { store.crash_after_write(n) } else { store.fail_write(n) };
    // After a crash the next process comes later: a creation the crashed one left half-done has lapsed.
    let heal = |store: &MemStore| {
        store.heal();
        if crash {
            store.set_now(1_800_000_000 + scenefin_core::kv::CREATION_LEASE_SECS + 1);
        }
    };
    let ctx = format!("write {n}, crash {crash}, in the reversal {in_reversal}, reversed first {reverse_first}");
    let first_ok = if in_reversal {
        run(redemptions::redeem(&store, &merchant, &input, &rules, now())).expect("redeem");
        fault(&store);
        let first = run(redemptions::reverse(&store, &merchant, &id, now().plus_secs(60)));
        heal(&store);
        run(redemptions::reverse(&store, &merchant, &id, now().plus_secs(90))).expect("the reversal again");
        first.is_ok()
    } else {
        fault(&store);
        let first = run(redemptions::redeem(&store, &merchant, &input, &rules, now()));
        heal(&store);
        if reverse_first {
            // Reversible only once the redemption completed; its event then comes first even if the crash kept it out.
            if run(redemptions::reverse(&store, &merchant, &id, now().plus_secs(60))).is_err() {
                return first.is_ok();
            }
        }
        run(redemptions::redeem(&store, &merchant, &input, &rules, now())).expect("the retry");
        if !reverse_first {
            run(redemptions::reverse(&store, &merchant, &id, now().plus_secs(60))).expect("reverse");
        }
        first.is_ok()
    };
    assert_eq!(feed_ids(&store), [format!("coupon.redeemed:{id}"), format!("coupon.reversed:{id}")], "{ctx}");
    first_ok
}

#[test]
fn a_redemption_or_reversal_interrupted_at_any_write_appends_each_feed_event_once_in_order() {
    for crash in [false, true] {
        for (in_reversal, reverse_first) in [(false, false), (false, true), (true, false)] {
            let mut n = 1;
            while !feed_after_a_fault(n, crash, in_reversal, reverse_first) {
                n += 1;
                assert!(n < 200, "never completed");
            }
        }
    }
}
