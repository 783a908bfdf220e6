//! Domain tests over the in-memory store: attribution refusals, qualification through core events, the ladder
//! arithmetic, bonus claw-back, and a hundred referees qualifying at once.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::{self, Customer, LifecycleRules};
use scenefin_core::events::{self, Event, EventKind};
use scenefin_core::kv::{MemStore, interleave, put_json, read_counter};
use scenefin_core::ledger;
use scenefin_core::referrals::{self, Qualifying, Reward, RewardKind, Schedule, Status, Tier};

use crate::programs::{self, NewProgram};
use crate::rewards::Outcome;
use crate::{codes, keys, reports};

fn now() -> Timestamp {
    Timestamp::parse_rfc3339("2026-11-23T10:00:00+08:00").expect("time")
}

fn run<F: Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

fn cash(fen: i64) -> Reward {
    Reward { kind: RewardKind::CashFen, amount: Some(fen), campaign_id: None }
}

fn program(budget_fen: i64) -> NewProgram {
    NewProgram {
        id: "friends".into(),
        title: "Bring a friend".into(),
        qualifying: Qualifying { event: "first_payment".into(), min_amount_fen: 1000, within_days: 30 },
        holding_days: 7,
        tiers: vec![
            Tier { min_qualified: 1, reward_per_referral: cash(500), tier_bonus: None },
            Tier { min_qualified: 3, reward_per_referral: cash(800), tier_bonus: Some(cash(1000)) },
            Tier {
                min_qualified: 5,
                reward_per_referral: Reward { kind: RewardKind::Points, amount: Some(300), campaign_id: None },
                tier_bonus: None,
            },
        ],
        referee_reward: None,
        max_rewarded_per_referrer: 200,
        budget_fen,
        schedule: Schedule { starts_at: now().plus_days(-10), ends_at: now().plus_days(60) },
    }
}

fn customer(store: &MemStore, id: &str, phone: Option<&str>) -> Customer {
    let mut c = Customer::new(id, now());
    c.phone_hash = phone.map(str::to_owned);
    run(put_json(store, &customers::keys::customer(id), &c)).expect("customer");
    c
}

/// A program, a referrer with a code, and `n` referees attached at registration.
fn setup(store: &MemStore, n: usize, budget_fen: i64) -> String {
    run(programs::create(store, program(budget_fen), now())).expect("program");
    customer(store, "c_referrer", Some("p_referrer"));
    let (code, _) = run(codes::get_or_create(store, "friends", "c_referrer")).expect("code");
    for i in 0..n {
        let referee = customer(store, &format!("c_friend{i}"), None);
        let r = run(referrals::attach(store, &referee, &code.code, true, now())).expect("attach");
        assert_eq!(r.status, Status::Pending, "{r:?}");
    }
    code.code
}

fn pay(store: &MemStore, referee: &str, order: &str, fen: i64, at: Timestamp) -> Event {
    let event = Event {
        id: format!("paid:{order}"),
        customer_id: referee.into(),
        kind: EventKind::Paid,
        scenario: "utility".into(),
        at,
        amount_fen: Some(fen),
        bank_card: false,
        tags: vec![],
    };
    run(events::record(store, &event, &LifecycleRules::default())).expect("event");
    event
}

/// Every day the tests post on.
fn days() -> Vec<u32> {
    (0..10).map(|d| now().plus_days(d).shanghai_day()).collect()
}

fn me(store: &MemStore, at: Timestamp) -> reports::Me {
    run(reports::me(store, "friends", "c_referrer", &LifecycleRules::default(), true, at)).expect("me")
}

#[test]
fn the_ladder_pays_each_referral_at_its_tier_and_the_bonus_once_after_the_holding_period() {
    let store = MemStore::default();
    setup(&store, 6, 1_000_000);
    pay(&store, "c_friend0", "o_small", 999, now()); // below the minimum: still pending
    for i in 0..6 {
        pay(&store, &format!("c_friend{i}"), &format!("o_{i}"), 5000, now());
    }

    let during = me(&store, now().plus_days(6));
    assert_eq!((during.qualified_count, during.rewards.cash_fen), (6, 1000), "only the tier-2 bonus so far");
    assert_eq!(during.current_tier.map(|t| t.tier), Some(3));
    assert!(during.next_tier.is_none());

    let after = me(&store, now().plus_days(7));
    // Referrals 1-2 at tier 1 (500), 3-4 at tier 2 (800), 5-6 at tier 3 (300 points); bonus 1000 once.
    assert_eq!((after.rewards.cash_fen, after.rewards.points), (500 + 500 + 800 + 800 + 1000, 600));
    assert!(after.referrals.iter().all(|r| r.status == Status::Rewarded));
    let again = me(&store, now().plus_days(8));
    assert_eq!(again.rewards, after.rewards, "settling again pays nothing more");
    let report = run(ledger::check(&store, &days())).expect("check");
    assert!(report.balanced, "{:?}", report.discrepancies);
    let owed = run(ledger::balance(&store, &keys::rewards_account("c_referrer"))).expect("balance");
    assert_eq!(owed, -3600);
}

#[test]
fn a_refund_in_the_holding_period_claws_back_the_referral_and_the_bonus_it_carried() {
    let store = MemStore::default();
    setup(&store, 3, 1_000_000);
    for i in 0..3 {
        pay(&store, &format!("c_friend{i}"), &format!("o_{i}"), 5000, now());
    }
    assert_eq!(me(&store, now().plus_days(1)).rewards.cash_fen, 1000, "tier 2 reached: bonus");
    let refund = Event {
        id: "refunded:o_2".into(),
        customer_id: "c_friend2".into(),
        kind: EventKind::Refunded,
        scenario: "utility".into(),
        at: now().plus_days(2),
        amount_fen: Some(5000),
        bank_card: false,
        tags: vec![],
    };
    run(events::record(&store, &refund, &LifecycleRules::default())).expect("refund");

    let page = me(&store, now().plus_days(8));
    assert_eq!(page.qualified_count, 2);
    assert_eq!(page.rewards.cash_fen, 1000, "two referrals at 500, the bonus clawed back");
    assert!(page.rewards.bonuses.contains(&(2, Outcome::ClawedBack)));
    let statuses: Vec<Status> = page.referrals.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == Status::ClawedBack).count(), 1);
    assert_eq!(page.next_tier.and_then(|t| t.message), Some("1 more to reach tier 2".to_owned()));
    let report = run(ledger::check(&store, &days())).expect("check");
    assert!(report.balanced, "{:?}", report.discrepancies);
}

#[test]
fn a_hundred_referees_qualifying_at_once_are_counted_and_rewarded_exactly() {
    let store = MemStore::default();
    setup(&store, 100, 1_000_000);
    let payments: Vec<(String, String)> = (0..100).map(|i| (format!("c_friend{i}"), format!("o_{i}"))).collect();

    let store_ref = &store;
    run(interleave::join_all(
        payments
            .iter()
            .map(|(referee, order)| async move {
                let event = Event {
                    id: format!("paid:{order}"),
                    customer_id: referee.clone(),
                    kind: EventKind::Paid,
                    scenario: "utility".into(),
                    at: now(),
                    amount_fen: Some(5000),
                    bank_card: false,
                    tags: vec![],
                };
                events::record(store_ref, &event, &LifecycleRules::default()).await.expect("event");
            })
            .collect(),
    ));

    let counter = referrals::keys::referrer_counter("friends", "c_referrer", "qualified");
    assert_eq!(run(read_counter(&store, &counter)).expect("counter"), 100);
    let page = me(&store, now().plus_days(7));
    assert_eq!((page.qualified_count, page.current_tier.map(|t| t.tier)), (100, Some(3)));
    assert_eq!((page.rewards.cash_fen, page.rewards.points), (2 * 500 + 2 * 800 + 1000, 96 * 300));
}

#[test]
fn budget_exhaustion_stops_cash_rewards_cleanly() {
    let store = MemStore::default();
    setup(&store, 3, 1200);
    for i in 0..3 {
        pay(&store, &format!("c_friend{i}"), &format!("o_{i}"), 5000, now());
    }
    let page = me(&store, now().plus_days(7));

    // Rewards are carried out in order: 500 and 500 fit, then neither the third referral's 800 nor the tier bonus's
    // 1000 fits in the 200 left. Nothing is paid in part.
    assert_eq!(page.rewards.cash_fen, 1000);
    let outcomes: Vec<(Status, Option<Outcome>)> =
        page.referrals.iter().map(|r| (r.status, r.reward.as_ref().map(|w| w.outcome))).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == (Status::Rewarded, Some(Outcome::Paid))).count(), 2);
    assert_eq!(outcomes.iter().filter(|o| **o == (Status::Qualified, Some(Outcome::BudgetExhausted))).count(), 1);
    assert_eq!(page.rewards.bonuses, vec![(2, Outcome::BudgetExhausted)]);
    let status = run(scenefin_core::limits::status(&store, &keys::budget("friends"))).expect("budget");
    assert_eq!((status.committed_fen, status.reserved_fen), (1000, 1000));
    assert!(run(ledger::check(&store, &days())).expect("check").balanced);
}

#[test]
fn attachment_refuses_self_referral_loops_shared_phones_and_late_codes() {
    let store = MemStore::default();
    let code = setup(&store, 0, 1_000_000);
    let referrer = run(customers::lookup(&store, "c_referrer")).expect("get").expect("referrer");
    let reason = |r: referrals::Referral| r.reason.unwrap_or_default();

    assert_eq!(reason(run(referrals::attach(&store, &referrer, &code, true, now())).expect("self")), "self_referral");
    let twin = customer(&store, "c_twin", Some("p_referrer"));
    assert_eq!(reason(run(referrals::attach(&store, &twin, &code, true, now())).expect("twin")), "shared_identity");
    let late = customer(&store, "c_late", None);
    let later = now().plus_days(8);
    assert_eq!(reason(run(referrals::attach(&store, &late, &code, false, later)).expect("late")), "existing_customer");

    // A→B→A and A→B→C→A: A attaches the code of someone it (indirectly) referred.
    for (a, chain) in [("c_a1", vec!["c_b1"]), ("c_a2", vec!["c_b2", "c_c2"])] {
        let a_customer = customer(&store, a, None);
        let mut code = run(codes::get_or_create(&store, "friends", a)).expect("code").0.code;
        for next in chain {
            let next_customer = customer(&store, next, None);
            let r = run(referrals::attach(&store, &next_customer, &code, true, now())).expect("attach");
            assert_eq!(r.status, Status::Pending, "{r:?}");
            code = run(codes::get_or_create(&store, "friends", next)).expect("code").0.code;
        }
        let looped = run(referrals::attach(&store, &a_customer, &code, false, now())).expect("loop");
        assert_eq!(reason(looped), "referral_loop", "{a}");
    }
}
