//! Domain tests over the in-memory store: spending under concurrency, and every spend, reversal and reissue
//! interrupted at each write and retried.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::{self, Customer, LifecycleRules};
use scenefin_core::kv::{MemStore, interleave, put_json};
use scenefin_core::ledger::{self, Line, Posting};

use crate::cards::{self, MemberInput};
use crate::schools::{self, Merchant, NewSchool};
use crate::spend::{self, SpendInput, SpendState};
use crate::{CampusError, Refusal, keys, txns};

const CUSTOMER: &str = "c_holder";

fn now() -> Timestamp {
    Timestamp::parse_rfc3339("2026-11-23T10:00:00+08:00").expect("time")
}

fn run<F: Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// A school with one merchant and one bound card holding `balance_fen`.
fn setup(store: &MemStore, balance_fen: i64) -> (Merchant, String) {
    run(async {
        let school = NewSchool { id: "sch1".into(), name: "No. 1 Middle School".into(), city: None, topup_bonus: None };
        let (school, _) = schools::register(store, school, now()).await.expect("school");
        let kind = schools::MerchantKind::Canteen;
        let (merchant, _) = schools::add_merchant(store, &school, "canteen1", "Canteen", kind, now()).await.expect("m");
        let member = MemberInput {
            member_no: "S001".into(),
            kind: "student".into(),
            name: "Li Lei".into(),
            valid_until: "2027-07-31".into(),
            activation_code: "123456".into(),
        };
        let issued = cards::issue(store, &school, &[member], now()).await.expect("issue");
        put_json(store, &customers::keys::customer(CUSTOMER), &Customer::new(CUSTOMER, now())).await.expect("cust");
        let rules = LifecycleRules::default();
        let (card, _) = cards::bind(store, CUSTOMER, "sch1", "S001", "123456", &rules, now()).await.expect("bind");
        assert_eq!(card.card_id, issued.cards[0].card_id);
        cards::set_daily_limit(store, CUSTOMER, &card.card_id, 1_000_000).await.expect("limit");
        if balance_fen > 0 {
            ledger::post(store, &credit("seed:1", &card.card_id, balance_fen)).await.expect("seed");
        }
        (merchant, card.card_id)
    })
}

/// Money paid in through the gateway onto a card.
fn credit(id: &str, card_id: &str, fen: i64) -> Posting {
    Posting {
        v: 1,
        id: id.into(),
        at: now(),
        memo: "test credit".into(),
        lines: vec![
            Line { account: "gateway:clearing".into(), amount_fen: fen },
            Line { account: keys::card_account(card_id), amount_fen: -fen },
        ],
    }
}

fn spend_input(card_id: &str, pos: &str, amount_fen: i64) -> SpendInput {
    SpendInput { pos_txn_id: pos.into(), card_id: Some(card_id.into()), pay_code: None, amount_fen }
}

fn balance(store: &MemStore, card_id: &str) -> i64 {
    run(cards::balance_fen(store, card_id)).expect("balance")
}

fn assert_books_balance(store: &MemStore) {
    let report = run(ledger::check(store, &[now().shanghai_day()])).expect("check");
    assert!(report.balanced, "{:?}", report.discrepancies);
}

fn spent_today(store: &MemStore, card_id: &str) -> i64 {
    run(scenefin_core::kv::read_counter(store, &keys::spent(card_id, now().shanghai_day()))).expect("counter")
}

#[test]
fn concurrent_spends_take_exactly_what_the_card_holds() {
    let store = MemStore::default();
    let (merchant, card) = setup(&store, 500);
    let rules = LifecycleRules::default();
    let inputs: Vec<SpendInput> = (0..20).map(|i| spend_input(&card, &format!("pos{i}"), 100)).collect();

    let results = run(interleave::join_all(
        inputs.iter().map(|input| spend::spend(&store, &merchant, input, &rules, now())).collect(),
    ));

    let ok = results.iter().filter(|r| r.is_ok()).count();
    let broke = results.iter().filter(|r| matches!(r, Err(CampusError::Refused(Refusal::InsufficientBalance)))).count();
    assert_eq!((ok, broke), (5, 15), "{results:?}");
    assert_eq!(balance(&store, &card), 0);
    // Refused spends gave their daily limit back.
    assert_eq!(spent_today(&store, &card), 500);
    let statement = run(spend::statement(&store, &merchant, "2026-11-23")).expect("statement");
    assert_eq!((statement.spends, statement.total_fen, statement.reconciled), (5, 500, true));
    assert_books_balance(&store);
}

#[test]
fn a_spend_interrupted_at_any_write_completes_once_when_retried() {
    let rules = LifecycleRules::default();
    // Count the writes of an undisturbed spend, then fail each in turn (a failed compare-and-swap is resolved by
    // reading back, so some failures are absorbed by the first attempt).
    let probe = MemStore::default();
    let (merchant, card) = setup(&probe, 1_000);
    let before = probe.writes();
    run(spend::spend(&probe, &merchant, &spend_input(&card, "pos-crash", 300), &rules, now())).expect("probe");
    let total = probe.writes() - before;
    let mut n = 1;
    loop {
        let store = MemStore::default();
        let (merchant, card) = setup(&store, 1_000);
        let input = spend_input(&card, "pos-crash", 300);
        store.fail_write(n);

        let first = run(spend::spend(&store, &merchant, &input, &rules, now()));
        store.heal();
        let retried = run(spend::spend(&store, &merchant, &input, &rules, now())).expect("retry completes");

        assert_eq!(retried.state, SpendState::Completed, "fail at write {n}");
        assert_eq!(balance(&store, &card), 700, "debited once, fail at write {n}");
        // A store error gives back what it had taken: the day's limit is counted exactly once (only a crash
        // between the take and its flag leaks, the safe way).
        assert_eq!(spent_today(&store, &card), 300, "limit counted once, fail at write {n}");
        let (list, _) = run(txns::list(&store, &card, None, 10)).expect("txns");
        assert_eq!(list.iter().filter(|t| t.kind == txns::TxnKind::Spend).count(), 1, "fail at write {n}");
        let statement = run(spend::statement(&store, &merchant, "2026-11-23")).expect("statement");
        assert_eq!((statement.spends, statement.total_fen, statement.reconciled), (1, 300, true), "write {n}");
        assert_books_balance(&store);
        if first.is_ok() && n > total {
            break;
        }
        n += 1;
    }
    assert!(n > 10, "the sweep covered the spend's writes ({n})");
}

#[test]
fn a_reversal_interrupted_at_any_write_restores_the_balance_once() {
    let rules = LifecycleRules::default();
    let mut n = 1;
    loop {
        let store = MemStore::default();
        let (merchant, card) = setup(&store, 1_000);
        let done =
            run(spend::spend(&store, &merchant, &spend_input(&card, "pos1", 400), &rules, now())).expect("spend");
        store.fail_write(n);

        let first = run(spend::reverse(&store, &merchant, &done.spend_id, now()));
        store.heal();
        let reversed = run(spend::reverse(&store, &merchant, &done.spend_id, now())).expect("retry completes");

        assert_eq!(reversed.state, SpendState::Reversed);
        assert_eq!(balance(&store, &card), 1_000, "fail at write {n}");
        assert!(spent_today(&store, &card) <= 400, "limit given back at most once, fail at write {n}");
        let statement = run(spend::statement(&store, &merchant, "2026-11-23")).expect("statement");
        assert_eq!((statement.reversals, statement.total_fen, statement.reconciled), (1, 0, true), "write {n}");
        assert_books_balance(&store);
        if first.is_ok() {
            break;
        }
        n += 1;
    }
}

#[test]
fn a_reissue_interrupted_at_any_write_moves_the_balance_exactly_once() {
    let mut n = 1;
    loop {
        let store = MemStore::default();
        let (_, card) = setup(&store, 2_500);
        store.fail_write(n);

        let first = run(cards::reissue(&store, CUSTOMER, &card, now()));
        store.heal();
        let done = run(cards::reissue(&store, CUSTOMER, &card, now())).expect("retry completes");

        assert_eq!((balance(&store, &card), balance(&store, &done.card.card_id)), (0, 2_500), "write {n}");
        assert_eq!(done.moved_fen, 2_500, "write {n}");
        assert_eq!(done.card.card_id, cards::reissued_id(&card));
        let listed = run(cards::list(&store, CUSTOMER)).expect("list");
        assert_eq!(listed.iter().map(|c| c.card_id.as_str()).collect::<Vec<_>>(), [done.card.card_id.as_str()]);
        assert_books_balance(&store);
        if first.is_ok() {
            break;
        }
        n += 1;
    }
}

#[test]
fn money_reaching_a_replaced_card_follows_it_and_spends_on_it_are_refused() {
    let store = MemStore::default();
    let rules = LifecycleRules::default();
    let (merchant, card) = setup(&store, 1_000);
    let new = run(cards::reissue(&store, CUSTOMER, &card, now())).expect("reissue").card.card_id;
    // A late credit to the old card (a top-up paid after the reissue).
    let late = credit("late:1", &card, 300);
    run(ledger::post(&store, &late)).expect("late");

    run(cards::forward_if_replaced(&store, &card, now())).expect("forward");

    assert_eq!((balance(&store, &card), balance(&store, &new)), (0, 1_300));
    let refused = run(spend::spend(&store, &merchant, &spend_input(&card, "pos-old", 100), &rules, now()));
    assert!(matches!(refused, Err(CampusError::Refused(Refusal::CardNotActive))), "{refused:?}");
    run(spend::spend(&store, &merchant, &spend_input(&new, "pos-new", 100), &rules, now())).expect("new card pays");
    assert_books_balance(&store);
}

#[test]
fn one_customer_trying_codes_across_members_is_throttled_for_the_hour_even_concurrently() {
    let store = MemStore::default();
    setup(&store, 0);
    let rules = LifecycleRules::default();
    run(async {
        let school = schools::get(&store, "sch1").await.expect("school");
        let members: Vec<MemberInput> = (0..40)
            .map(|i| MemberInput {
                member_no: format!("R{i:03}"),
                kind: "student".into(),
                name: "Student".into(),
                valid_until: "2027-07-31".into(),
                activation_code: format!("CODE{i:03}"),
            })
            .collect();
        cards::issue(&store, &school, &members, now()).await.expect("issue");
        let guesser = Customer::new("c_guesser", now());
        put_json(&store, &customers::keys::customer("c_guesser"), &guesser).await.expect("customer");
        // Forty wrong codes at once, one per member: exactly the hour's allowance is tried, the rest throttled.
        let attempts = (0..40).map(|i| {
            let (store, rules) = (&store, &rules);
            async move { cards::bind(store, "c_guesser", "sch1", &format!("R{i:03}"), "WRONG", rules, now()).await }
        });
        let answers = interleave::join_all(attempts.collect()).await;
        let wrong = answers.iter().filter(|a| matches!(a, Err(CampusError::InvalidActivationCode { .. }))).count();
        let throttled = answers.iter().filter(|a| matches!(a, Err(CampusError::BindThrottled(_)))).count();
        assert_eq!((wrong, throttled), (10, 30), "{answers:?}");
        // The right code is refused too while throttled; the hour after, it binds.
        let right = cards::bind(&store, "c_guesser", "sch1", "R039", "CODE039", &rules, now()).await;
        assert!(matches!(right, Err(CampusError::BindThrottled(_))), "{right:?}");
        let later = now().plus_secs(3600);
        let (card, _) = cards::bind(&store, "c_guesser", "sch1", "R039", "CODE039", &rules, later).await.expect("bind");
        assert_eq!(card.status, cards::CardStatus::Active);
        // Right codes (here of a card bound already) do not use up the allowance.
        for i in 30..39 {
            cards::bind(&store, "c_other", "sch1", &format!("R{i:03}"), "CODE000", &rules, later).await.expect_err("x");
        }
        for _ in 0..3 {
            let locked = cards::bind(&store, "c_other", "sch1", "S001", "123456", &rules, later).await;
            assert!(matches!(locked, Err(CampusError::CardAlreadyBound)), "{locked:?}");
        }
        let tenth = cards::bind(&store, "c_other", "sch1", "R001", "CODE000", &rules, later).await;
        assert!(matches!(tenth, Err(CampusError::InvalidActivationCode { .. })), "{tenth:?}");
        let eleventh = cards::bind(&store, "c_other", "sch1", "R002", "CODE000", &rules, later).await;
        assert!(matches!(eleventh, Err(CampusError::BindThrottled(_))), "{eleventh:?}");
    });
}

#[test]
fn five_wrong_codes_lock_binding_for_fifteen_minutes() {
    let store = MemStore::default();
    setup(&store, 0);
    let rules = LifecycleRules::default();
    run(async {
        let school = schools::get(&store, "sch1").await.expect("school");
        let member = MemberInput {
            member_no: "S002".into(),
            kind: "staff".into(),
            name: "Han Meimei".into(),
            valid_until: "2027-07-31".into(),
            activation_code: "ABCD1234".into(),
        };
        cards::issue(&store, &school, &[member], now()).await.expect("issue");
        for left in (1..5).rev() {
            let err = cards::bind(&store, CUSTOMER, "sch1", "S002", "WRONG", &rules, now()).await.expect_err("wrong");
            assert_eq!(err, CampusError::InvalidActivationCode { attempts_left: left });
        }
        let locked = cards::bind(&store, CUSTOMER, "sch1", "S002", "WRONG", &rules, now()).await.expect_err("5th");
        assert!(matches!(locked, CampusError::BindLocked(_)));
        let still = cards::bind(&store, CUSTOMER, "sch1", "S002", "ABCD1234", &rules, now().plus_secs(899)).await;
        assert!(matches!(still, Err(CampusError::BindLocked(_))), "{still:?}");
        let (card, first) =
            cards::bind(&store, CUSTOMER, "sch1", "S002", "ABCD1234", &rules, now().plus_secs(900)).await.expect("ok");
        assert!(first);
        assert_eq!(card.status, cards::CardStatus::Active);
    });
}
