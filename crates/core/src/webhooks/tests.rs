use std::cell::RefCell;

use super::*;
use crate::kv::MemStore;
use crate::kv::interleave::join_all;

const SECRET: &str = "partner-secret-0123456789";

fn at(secs: i64) -> Timestamp {
    Timestamp::from_unix_secs(1_800_000_000 + secs)
}

fn feed_key() -> Key {
    Key::new(&["util", "feed", "sz_water"])
}

fn event(id: &str) -> FeedEvent {
    FeedEvent { id: id.into(), kind: "bill.paid".into(), occurred_at: at(0), data: json!({"order_id": id}) }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    pollster::block_on(f)
}

fn partner() -> Partner {
    Partner {
        v: 1,
        partner_id: "p_1".into(),
        secret: SECRET.into(),
        kind: "biller".into(),
        resource_id: "sz_water".into(),
        created_at: at(0),
        previous_secrets: Vec::new(),
        rotated_in: Vec::new(),
    }
}

async fn onboarded() -> MemStore {
    let store = MemStore::default();
    kv::put_json(&store, &partners::partner_key("util", "p_1"), &partner()).await.expect("test step");
    store
}

async fn reg(store: &MemStore, url: &str, now: Timestamp) {
    register(store, &feed_key(), &partner(), "util", url, now).await.expect("test step");
}

async fn append(store: &MemStore, ids: &[&str]) {
    for id in ids {
        feed::append(store, &feed_key(), &event(id)).await.expect("test step");
    }
}

/// A receiver: answers each message with the next of `answers` (then 200), and records what it got.
struct Receiver {
    answers: RefCell<Vec<Sent>>,
    got: RefCell<Vec<Message>>,
}

impl Receiver {
    fn new(answers: Vec<Sent>) -> Self {
        Receiver { answers: RefCell::new(answers), got: RefCell::new(Vec::new()) }
    }

    async fn take(&self, m: &Message) -> Sent {
        self.got.borrow_mut().push(m.clone());
        let mut answers = self.answers.borrow_mut();
        if answers.is_empty() { Ok(200) } else { answers.remove(0) }
    }

    fn ids(&self) -> Vec<String> {
        self.got.borrow().iter().map(|m| m.id.clone()).collect()
    }
}

async fn pass(store: &MemStore, now: Timestamp, receiver: &Receiver) -> Pass {
    deliver(store, &feed_key(), now, async |m: &Message| receiver.take(m).await).await.expect("test step")
}

#[test]
fn urls_are_checked() {
    for good in ["https://hooks.example.com/scenefin", "https://a.b:8443/x?y=1", "http://127.0.0.1:9000/h"] {
        assert!(check_url(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "ftp://x.example/",
        "http://hooks.example.com/",
        "https://user@hooks.example.com/",
        "https://hooks.example.com/#frag",
        "https://hooks example.com/",
        "https://:443/",
        "https://h.example:99999/",
        "https://hooks.example.com/路径",
    ] {
        assert!(matches!(check_url(bad), Err(WebhookError::BadUrl(_))), "{bad}");
    }
}

#[test]
fn messages_are_signed_the_standard_webhooks_way() {
    let m = message("https://h.example/", 3, &event("bill.paid:o_1"), SECRET, at(5)).expect("test step");
    assert_eq!(m.id, "bill.paid:o_1");
    assert_eq!(m.timestamp, at(5).unix_secs());
    crate::auth::verify_webhook(
        &signing_secret(SECRET),
        &m.id,
        &m.timestamp.to_string(),
        &m.signature,
        &m.body,
        at(5).unix_secs(),
    )
    .expect("test step");
    let body: serde_json::Value = serde_json::from_slice(&m.body).expect("test step");
    assert_eq!(body["seq"], 3);
    assert_eq!(body["type"], "bill.paid");
    assert_eq!(body["data"]["order_id"], "bill.paid:o_1");
}

#[test]
fn a_new_endpoint_gets_the_events_from_its_registration_on_in_order() {
    run(async {
        let store = onboarded().await;
        append(&store, &["e1"]).await;
        reg(&store, "https://h.example/", at(1)).await;
        append(&store, &["e2", "e3"]).await;
        let receiver = Receiver::new(vec![]);
        assert_eq!(pass(&store, at(2), &receiver).await.delivered, 2);
        assert_eq!(receiver.ids(), ["e2", "e3"]);
        // Nothing new: nothing sent.
        assert_eq!(pass(&store, at(3), &receiver).await, Pass::default());
        let (hook, appended) = status(&store, &feed_key()).await.expect("test step");
        let hook = hook.expect("test step");
        assert_eq!((hook.cursor, appended), (3, 3));
        assert_eq!(hook.log.len(), 2);
        assert!(hook.lease.is_none());
    });
}

#[test]
fn a_failing_endpoint_is_retried_on_the_schedule_and_later_events_wait() {
    run(async {
        let store = onboarded().await;
        reg(&store, "https://h.example/", at(0)).await;
        append(&store, &["e1", "e2"]).await;
        let receiver = Receiver::new(vec![Ok(500), Err("connection refused".into())]);
        let first = pass(&store, at(1), &receiver).await;
        assert_eq!((first.delivered, first.failed), (0, 1));
        // Not due yet: nothing sent.
        assert_eq!(pass(&store, at(1 + RETRY_SCHEDULE_SECS[0] - 1), &receiver).await, Pass::default());
        let second = pass(&store, at(1 + RETRY_SCHEDULE_SECS[0]), &receiver).await;
        assert_eq!(second.failed, 1);
        let (hook, _) = status(&store, &feed_key()).await.expect("test step");
        let hook = hook.expect("test step");
        assert_eq!((hook.cursor, hook.attempts), (0, 2));
        assert_eq!(hook.failing_since, Some(at(1)));
        assert_eq!(hook.next_at, Some(at(1 + RETRY_SCHEDULE_SECS[0] + RETRY_SCHEDULE_SECS[1])));
        let third = pass(&store, at(10_000), &receiver).await;
        assert_eq!(third.delivered, 2);
        assert_eq!(receiver.ids(), ["e1", "e1", "e1", "e2"]);
        let hook = status(&store, &feed_key()).await.expect("test step").0.expect("test step");
        assert_eq!((hook.cursor, hook.attempts, hook.failing_since, hook.next_at), (2, 0, None, None));
    });
}

#[test]
fn an_event_is_given_up_after_the_last_attempt_and_can_be_replayed() {
    run(async {
        let store = onboarded().await;
        reg(&store, "https://h.example/", at(0)).await;
        append(&store, &["e1", "e2"]).await;
        let receiver = Receiver::new(vec![Ok(503); MAX_ATTEMPTS as usize]);
        let mut now = at(1);
        for _ in 0..MAX_ATTEMPTS {
            pass(&store, now, &receiver).await;
            now = now.plus_secs(40_000);
        }
        let hook = status(&store, &feed_key()).await.expect("test step").0.expect("test step");
        assert_eq!(hook.failed.len(), 1);
        assert_eq!(hook.failed[0].event_id, "e1");
        assert_eq!(hook.failed[0].attempts, MAX_ATTEMPTS);
        assert_eq!(hook.cursor, 1, "delivery moved on");
        // The next pass delivers e2.
        assert_eq!(pass(&store, now, &receiver).await.delivered, 1);
        let replayed = replay(&store, &feed_key(), "e1", now, async |m: &Message| receiver.take(m).await)
            .await
            .expect("test step");
        assert!(replayed.ok && replayed.replay);
        let hook = status(&store, &feed_key()).await.expect("test step").0.expect("test step");
        assert_eq!(hook.failed[0].replayed_at, Some(now));
        assert!(matches!(
            replay(&store, &feed_key(), "nope", now, async |_: &Message| Ok(200)).await,
            Err(WebhookError::NoEvent(_))
        ));
    });
}

#[test]
fn concurrent_passes_send_each_event_once() {
    run(async {
        let store = onboarded().await;
        reg(&store, "https://h.example/", at(0)).await;
        append(&store, &["e1", "e2", "e3"]).await;
        let receiver = Receiver::new(vec![]);
        let passes = join_all((0..6).map(|_| pass(&store, at(1), &receiver)).collect()).await;
        assert_eq!(passes.iter().map(|p| p.delivered).sum::<usize>(), 3);
        assert_eq!(receiver.ids(), ["e1", "e2", "e3"]);
    });
}

#[test]
fn a_pass_that_died_holding_the_lease_is_taken_over_after_it() {
    run(async {
        let store = onboarded().await;
        reg(&store, "https://h.example/", at(0)).await;
        append(&store, &["e1"]).await;
        kv::update_json(&store, &key(&feed_key()), |h: Option<&Webhook>| {
            let mut h = h.cloned().expect("test step");
            h.lease = Some(Lease { token: "dead".into(), until: at(1 + LEASE_SECS) });
            Ok::<_, StoreError>(Step::Write(h, ()))
        })
        .await
        .expect("test step");
        let receiver = Receiver::new(vec![]);
        assert_eq!(pass(&store, at(2), &receiver).await, Pass::default());
        assert_eq!(pass(&store, at(1 + LEASE_SECS), &receiver).await.delivered, 1);
    });
}

#[test]
fn removing_stops_delivery_and_re_adding_starts_from_then() {
    run(async {
        let store = onboarded().await;
        reg(&store, "https://h.example/", at(0)).await;
        append(&store, &["e1"]).await;
        remove(&store, &feed_key(), at(1)).await.expect("test step");
        let receiver = Receiver::new(vec![]);
        assert_eq!(pass(&store, at(2), &receiver).await, Pass::default());
        append(&store, &["e2"]).await;
        reg(&store, "https://h2.example/", at(3)).await;
        append(&store, &["e3"]).await;
        pass(&store, at(4), &receiver).await;
        assert_eq!(receiver.ids(), ["e3"]);
        assert_eq!(receiver.got.borrow()[0].url, "https://h2.example/");
    });
}

#[test]
fn deliver_due_runs_only_the_passes_with_something_due() {
    run(async {
        let store = onboarded().await;
        let receiver = Receiver::new(vec![]);
        let send = async |m: &Message| receiver.take(m).await;
        // No endpoint anywhere: nothing.
        assert_eq!(
            deliver_due(&store, &feeds(&store, "util").await.expect("test step"), at(0), send)
                .await
                .expect("test step"),
            Pass::default()
        );
        reg(&store, "https://h.example/", at(0)).await;
        let other = Key::new(&["util", "feed", "gz_power"]);
        register(&store, &other, &partner(), "util", "https://other.example/", at(0)).await.expect("test step");
        append(&store, &["e1"]).await;
        let all = feeds(&store, "util").await.expect("test step");
        assert_eq!(all.len(), 2);
        let pass =
            deliver_due(&store, &all, at(1), async |m: &Message| receiver.take(m).await).await.expect("test step");
        assert_eq!(pass.delivered, 1);
        assert_eq!(receiver.got.borrow()[0].url, "https://h.example/");
        feed::acknowledge(&store, &feed_key(), 1, at(2)).await.expect("test step");
        feed::acknowledge(&store, &feed_key(), 0, at(3)).await.expect("test step");
        let ack: feed::Ack =
            kv::get_json(&store, &feed::ack_key(&feed_key())).await.expect("test step").expect("test step");
        assert_eq!((ack.after, ack.at), (1, at(2)), "an older cursor does not move the acknowledgement back");
    });
}

#[test]
fn a_pass_whose_endpoint_was_set_again_meanwhile_keeps_only_its_log_and_gives_the_lease_back() {
    run(async {
        let store = onboarded().await;
        reg(&store, "https://h.example/", at(0)).await;
        append(&store, &["e1"]).await;
        // While the pass sends, the partner removes its endpoint, an event comes, and it sets one again.
        let receiver = Receiver::new(vec![]);
        let first = deliver(&store, &feed_key(), at(1), async |m: &Message| {
            remove(&store, &feed_key(), at(1)).await.expect("removed");
            append(&store, &["e2"]).await;
            reg(&store, "https://h2.example/", at(1)).await;
            receiver.take(m).await
        })
        .await
        .expect("a pass");
        assert_eq!(first.delivered, 1);
        let hook = status(&store, &feed_key()).await.expect("status").0.expect("a webhook");
        assert_eq!((hook.cursor, hook.lease.is_none(), hook.log.len()), (2, true, 1), "{hook:?}");
        // The next pass finds nothing due (the new endpoint starts after e2) and is not blocked by a lease.
        append(&store, &["e3"]).await;
        assert_eq!(pass(&store, at(2), &receiver).await.delivered, 1);
    });
}
