//! A partner's event feed (issue 26, the foundation): an ordered log of what happened to the partner's bills, fees,
//! cards and coupons, read with a cursor, in which each event id appears exactly once.
//!
//! Layout under the feed's base key (e.g. `util:feed:{partner_id}`):
//! - `{base}:n` — the slot counter (atomic increment: a writer reserves the next slot);
//! - `{base}:s:{seq}` — slot `seq`, written once: an event, or `void` when the slot will never hold one;
//! - `{base}:id:{hash(event id)}` — where the event is placed (`{seq}`), created once: the exactly-once claim;
//! - `{base}:s:{seq}:seen` — when a reader first found the slot reserved but empty.
//!
//! Appending ([`append`]) is idempotent by event id, so the step that causes an event can append it as one of its
//! re-driven effects: a retry after a crash at any point appends the same id into the same slot, or — when a
//! reader gave up on an abandoned slot — into a new one, never twice.
//! - reserve `seq` (increment), then claim the id's placement at `seq` (create-once); a writer that loses the claim
//!   to a concurrent append of the same id voids its own reservation;
//! - fill slot `seq` with the event (create-once): done, or the slot was voided by a reader (below), so the
//!   placement moves to a fresh slot (compare-and-swap from `seq`) and that one is filled.
//!
//! Reading ([`read`]) goes slot by slot from the cursor and stops at the first slot that is reserved but still
//! empty, so a partner's cursor never moves past an event that is still coming (gap-free). A slot a reader has seen
//! empty for [`ABANDONED_AFTER_SECS`] belongs to a writer that crashed between reserving and filling it: the reader
//! voids it (create-once, so a writer that fills it first wins, and one that comes later takes a new slot). A crash
//! therefore delays the events behind it by at most that long, and loses or duplicates none.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::ids::hash_key_part;
use crate::kv::{Key, Step, Store, StoreError, get_all, read_counter, update_json, update_json_new};

/// How long a reserved slot may stay empty, after a reader first saw it so, before readers give up on it.
pub const ABANDONED_AFTER_SECS: i64 = 30;
/// Attempts to place one event (each further one follows a reader voiding the slot it had: rare).
const MAX_ATTEMPTS: usize = 8;

/// An event as partners read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// Stable id, derived from the cause (the same cause always yields the same id).
    pub id: String,
    /// What happened (`bill.paid`, `bill.refunded`, ...).
    pub kind: String,
    /// When it happened.
    pub occurred_at: Timestamp,
    /// What the partner needs to act on it.
    pub data: Value,
}

impl FeedEvent {
    /// Event `kind` (`bill.paid`...) of `cause` (an order, a redemption...): its id is `{kind}:{cause}`, so the same
    /// cause always yields the same id.
    pub fn new(kind: &str, cause: &str, occurred_at: Timestamp, data: Value) -> Self {
        FeedEvent { id: format!("{kind}:{cause}"), kind: kind.to_owned(), occurred_at, data }
    }
}

/// A slot's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "slot", rename_all = "snake_case")]
enum Slot {
    /// The event placed here.
    Event { v: u32, event: FeedEvent },
    /// Never to hold an event: a reservation nobody needed, or one a reader gave up on.
    Void { v: u32, at: Timestamp },
}

/// Where an event id is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Placed {
    v: u32,
    seq: i64,
}

/// When a reader first found a slot reserved but empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    v: u32,
    at: Timestamp,
}

/// The feed of partner resource `resource_id` (a biller, community, school or merchant) of scenario `owner`:
/// `{owner}:feed:{resource_id}`.
pub fn key(owner: &str, resource_id: &str) -> Key {
    Key::new(&[owner, "feed", resource_id])
}

/// The resource of a feed of scenario `owner` made by [`key`], if it is one.
pub fn resource_of<'a>(owner: &str, feed: &'a Key) -> Option<&'a str> {
    feed.as_str().strip_prefix(owner)?.strip_prefix(":feed:")
}

/// `{feed}:n`, the slot counter: how many places the feed has reserved.
pub fn counter_key(feed: &Key) -> Key {
    feed.child(&["n"])
}

/// How many places the feed at `feed` has reserved (its last event's `seq` at most).
pub async fn appended(store: &impl Store, feed: &Key) -> Result<i64, StoreError> {
    read_counter(store, &counter_key(feed)).await
}

/// How far a partner has confirmed reading its feed: the `after` of its latest poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Schema version.
    pub v: u32,
    /// The furthest cursor the partner passed.
    pub after: i64,
    /// When it passed it.
    pub at: Timestamp,
}

/// `{feed}:ack`.
pub fn ack_key(feed: &Key) -> Key {
    feed.child(&["ack"])
}

/// Records that the partner read the feed at `feed` from cursor `after` (so it has everything up to it): one read,
/// and a write when the cursor moved forward.
pub async fn acknowledge(store: &impl Store, feed: &Key, after: i64, now: Timestamp) -> Result<(), StoreError> {
    update_json(store, &ack_key(feed), |current: Option<&Ack>| {
        Ok::<_, StoreError>(match current {
            Some(ack) if ack.after >= after => Step::Keep(()),
            _ => Step::Write(Ack { v: 1, after, at: now }, ()),
        })
    })
    .await
}

/// Event `event_id` of the feed at `feed` and its place, if it is there (two reads).
pub async fn find(store: &impl Store, feed: &Key, event_id: &str) -> Result<Option<(i64, FeedEvent)>, StoreError> {
    let Some(placed) = crate::kv::get_json::<Placed>(store, &placed_key(feed, event_id)).await? else {
        return Ok(None);
    };
    let slot = crate::kv::get_json::<Slot>(store, &slot_key(feed, placed.seq)).await?;
    Ok(match slot {
        Some(Slot::Event { event, .. }) if event.id == event_id => Some((placed.seq, event)),
        _ => None,
    })
}

fn slot_key(feed: &Key, seq: i64) -> Key {
    feed.child(&["s", &seq.to_string()])
}

fn seen_key(feed: &Key, seq: i64) -> Key {
    slot_key(feed, seq).child(&["seen"])
}

fn placed_key(feed: &Key, event_id: &str) -> Key {
    feed.child(&["id", &hash_key_part(event_id)])
}

/// Appends `event` to the feed at `feed` unless its id is already there; its place (`seq`, from 1).
pub async fn append(store: &impl Store, feed: &Key, event: &FeedEvent) -> Result<i64, StoreError> {
    let placed_key = placed_key(feed, &event.id);
    // Not read first: an append is usually the first for its id, and `place` finds an earlier placement itself
    // (a replay then costs a reservation it voids).
    let mut placed: Option<i64> = None;
    for _ in 0..MAX_ATTEMPTS {
        let seq = match placed {
            Some(seq) => seq,
            None => place(store, feed, &placed_key, None, event.occurred_at).await?,
        };
        match fill(store, feed, seq, event).await? {
            Some(true) => return Ok(seq),
            Some(false) => {
                return Err(StoreError::Corrupt {
                    key: slot_key(feed, seq).to_string(),
                    detail: format!("slot holds another event than {}", event.id),
                });
            }
            // A reader gave up on the slot: move to a fresh one.
            None => placed = Some(place(store, feed, &placed_key, Some(seq), event.occurred_at).await?),
        }
    }
    Err(StoreError::Contention { key: placed_key.to_string() })
}

/// Reserves a fresh slot and places the event there, unless its placement already points elsewhere than `from`
/// (`None`: not placed yet): the slot the event is placed in, a reservation that was not needed voided.
async fn place(
    store: &impl Store,
    feed: &Key,
    placed_key: &Key,
    from: Option<i64>,
    at: Timestamp,
) -> Result<i64, StoreError> {
    let fresh = store.increment(&counter_key(feed), 1).await?;
    let decide = |current: Option<&Placed>| {
        Ok::<_, StoreError>(match current {
            Some(p) if Some(p.seq) != from => Step::Keep(p.seq),
            _ => Step::Write(Placed { v: 1, seq: fresh }, fresh),
        })
    };
    let seq = match from {
        None => update_json_new(store, placed_key, decide).await?,
        Some(_) => update_json(store, placed_key, decide).await?,
    };
    if seq != fresh {
        void(store, feed, fresh, at).await?;
    }
    Ok(seq)
}

/// Fills slot `seq` with `event` unless it is taken: `Some(true)` when it holds the event, `None` when it is void,
/// `Some(false)` when it holds another event (a bug).
async fn fill(store: &impl Store, feed: &Key, seq: i64, event: &FeedEvent) -> Result<Option<bool>, StoreError> {
    update_json_new(store, &slot_key(feed, seq), |current: Option<&Slot>| {
        Ok::<_, StoreError>(match current {
            None => Step::Write(Slot::Event { v: 1, event: event.clone() }, Some(true)),
            Some(Slot::Event { event: there, .. }) => Step::Keep(Some(there.id == event.id)),
            Some(Slot::Void { .. }) => Step::Keep(None),
        })
    })
    .await
}

/// Makes slot `seq` void unless it holds an event already; the event it holds, if any.
async fn void(store: &impl Store, feed: &Key, seq: i64, at: Timestamp) -> Result<Option<FeedEvent>, StoreError> {
    update_json_new(store, &slot_key(feed, seq), |current: Option<&Slot>| {
        Ok::<_, StoreError>(match current {
            None => Step::Write(Slot::Void { v: 1, at }, None),
            Some(Slot::Event { event, .. }) => Step::Keep(Some(event.clone())),
            Some(Slot::Void { .. }) => Step::Keep(None),
        })
    })
    .await
}

/// A page of the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    /// The events after the cursor, in order, each with its place.
    pub events: Vec<(i64, FeedEvent)>,
    /// The cursor to read on from (the last slot this page settled).
    pub next: i64,
    /// Slots reserved so far: `next < appended` means more to read (or a slot still being written).
    pub appended: i64,
}

/// Up to `limit` slots after `after`, stopping at a slot reserved but not yet written (its writer is still at it,
/// or gets [`ABANDONED_AFTER_SECS`] before the slot is voided). Two batch reads, plus a write the first time a
/// reader meets such a slot and one when it gives up on it.
pub async fn read(
    store: &impl Store,
    feed: &Key,
    after: i64,
    limit: usize,
    now: Timestamp,
) -> Result<Page, StoreError> {
    let appended = read_counter(store, &counter_key(feed)).await?;
    let after = after.clamp(0, appended);
    let last = appended.min(after.saturating_add(i64::try_from(limit).unwrap_or(i64::MAX)));
    let keys: Vec<Key> = (after + 1..=last).map(|seq| slot_key(feed, seq)).collect();
    let mut page = Page { events: Vec::new(), next: after, appended };
    for (seq, (key, raw)) in (after + 1..).zip(keys.iter().zip(get_all(store, &keys).await?)) {
        let slot: Option<Slot> = crate::kv::decode_doc(key, raw.as_deref())?;
        match slot {
            Some(Slot::Event { event, .. }) => page.events.push((seq, event)),
            Some(Slot::Void { .. }) => {}
            None => match settle(store, feed, seq, now).await? {
                Settled::Event(event) => page.events.push((seq, event)),
                Settled::Void => {}
                Settled::Waiting => break,
            },
        }
        page.next = seq;
    }
    Ok(page)
}

enum Settled {
    Event(FeedEvent),
    Void,
    Waiting,
}

/// A slot found reserved but empty: noted the first time, voided once it has stayed so long enough.
async fn settle(store: &impl Store, feed: &Key, seq: i64, now: Timestamp) -> Result<Settled, StoreError> {
    let seen = update_json_new(store, &seen_key(feed, seq), |current: Option<&Seen>| {
        Ok::<_, StoreError>(match current {
            Some(s) => Step::Keep(s.at),
            None => Step::Write(Seen { v: 1, at: now }, now),
        })
    })
    .await?;
    if now.secs_since(seen) < ABANDONED_AFTER_SECS {
        return Ok(Settled::Waiting);
    }
    Ok(match void(store, feed, seq, now).await? {
        Some(event) => Settled::Event(event),
        None => Settled::Void,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemStore;
    use crate::kv::interleave::join_all;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_secs(1_800_000_000 + secs)
    }

    fn feed() -> Key {
        Key::new(&["util", "feed", "p_water"])
    }

    fn event(id: &str) -> FeedEvent {
        FeedEvent { id: id.into(), kind: "bill.paid".into(), occurred_at: at(0), data: serde_json::json!({"n": id}) }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        pollster::block_on(f)
    }

    /// Every event id in the feed, read to the end as a partner would, `wait` seconds apart.
    fn ids(store: &MemStore, wait: i64) -> Vec<String> {
        let mut cursor = 0;
        let mut out = Vec::new();
        for round in 0..20 {
            let page = run(read(store, &feed(), cursor, 3, at(round * wait))).expect("read");
            out.extend(page.events.into_iter().map(|(_, e)| e.id));
            if page.next == page.appended && page.next == cursor {
                break;
            }
            cursor = page.next;
        }
        out
    }

    #[test]
    fn events_are_read_in_order_once_each_even_when_appended_again() {
        let store = MemStore::default();
        for id in ["a", "b", "c", "d", "e"] {
            run(append(&store, &feed(), &event(id))).expect("append");
        }
        assert_eq!(run(append(&store, &feed(), &event("c"))).expect("again"), 3, "the same place");
        assert_eq!(ids(&store, 0), ["a", "b", "c", "d", "e"]);
        let page = run(read(&store, &feed(), 2, 2, at(0))).expect("read");
        assert_eq!((page.events.iter().map(|(s, _)| *s).collect::<Vec<_>>(), page.next), (vec![3, 4], 4));
    }

    #[test]
    fn concurrent_appends_of_one_event_place_it_once() {
        let store = MemStore::default();
        let (base, x) = (feed(), event("x"));
        let seqs = run(join_all((0..8).map(|_| append(&store, &base, &x)).collect()));
        let seqs: Vec<i64> = seqs.into_iter().map(|s| s.expect("append")).collect();
        assert!(seqs.windows(2).all(|w| w[0] == w[1]), "{seqs:?}");
        run(append(&store, &feed(), &event("y"))).expect("append");
        assert_eq!(ids(&store, 0), ["x", "y"], "the unneeded reservations are void, not gaps");
    }

    #[test]
    fn concurrent_writers_and_readers_on_every_store_kind_see_each_event_once_in_one_order() {
        use crate::kv::CasMode;
        for mode in [CasMode::SpinUpsert, CasMode::Strict, CasMode::SpinRedis] {
            let store = MemStore::new(mode);
            let base = feed();
            let events: Vec<FeedEvent> = ["a", "b", "c", "a", "d", "b", "e", "c"].iter().map(|id| event(id)).collect();
            let appends = join_all(events.iter().map(|e| append(&store, &base, e)).collect());
            let reads = join_all((0..3).map(|_| read(&store, &base, 0, 10, at(0))).collect());
            let (placed, pages) = run(crate::kv::interleave::join2(appends, reads));
            let placed: Vec<i64> = placed.into_iter().map(|p| p.expect("append")).collect();
            for (e, seq) in events.iter().zip(&placed) {
                let same: Vec<i64> =
                    events.iter().zip(&placed).filter(|(o, _)| o.id == e.id).map(|(_, s)| *s).collect();
                assert!(same.iter().all(|s| s == seq), "{mode:?}: {} placed at {same:?}", e.id);
            }
            for page in pages {
                let page = page.expect("read");
                let seen: Vec<&str> = page.events.iter().map(|(_, e)| e.id.as_str()).collect();
                let mut unique = seen.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(unique.len(), seen.len(), "{mode:?}: a concurrent reader saw a duplicate: {seen:?}");
            }
            let mut all = ids(&store, ABANDONED_AFTER_SECS);
            let order = all.clone();
            all.sort();
            assert_eq!(all, ["a", "b", "c", "d", "e"], "{mode:?}: order {order:?}");
            let again = ids(&store, ABANDONED_AFTER_SECS);
            assert_eq!(again, order, "{mode:?}: the order is stable");
        }
    }

    #[test]
    fn a_crash_at_any_write_then_a_retry_yields_the_event_once_and_the_feed_moves_on() {
        for n in 1..=8 {
            let store = MemStore::default();
            run(append(&store, &feed(), &event("before"))).expect("append");
            store.crash_after_write(n);
            let _ = run(append(&store, &feed(), &event("cause")));
            store.heal();
            // A reader while the writer is down: it may wait at the abandoned slot, never skip the event.
            let early = ids(&store, 0);
            assert!(early.starts_with(&["before".to_owned()]), "crash after write {n}: {early:?}");
            // The retry comes later (the gateway redelivers): after the creation lease a crashed claim holds.
            store.set_now(1_800_000_000 + crate::kv::CREATION_LEASE_SECS + 1);
            run(append(&store, &feed(), &event("cause"))).expect("retry");
            run(append(&store, &feed(), &event("after"))).expect("append");
            let all = ids(&store, ABANDONED_AFTER_SECS);
            assert_eq!(all, ["before", "cause", "after"], "crash after write {n}");
        }
    }

    #[test]
    fn a_slot_abandoned_between_reserving_and_filling_is_voided_and_a_late_writer_moves() {
        let store = MemStore::default();
        // A writer reserved slot 1 and claimed it for "late", then stopped.
        run(store.increment(&counter_key(&feed()), 1)).expect("reserve");
        run(update_json_new(&store, &placed_key(&feed(), "late"), |_: Option<&Placed>| {
            Ok::<_, StoreError>(Step::Write(Placed { v: 1, seq: 1 }, ()))
        }))
        .expect("claim");
        run(append(&store, &feed(), &event("next"))).expect("append");
        let page = run(read(&store, &feed(), 0, 10, at(0))).expect("read");
        assert_eq!((page.events.len(), page.next), (0, 0), "waits at the empty slot: nothing skipped");
        let page = run(read(&store, &feed(), 0, 10, at(ABANDONED_AFTER_SECS - 1))).expect("read");
        assert_eq!(page.next, 0, "still waiting");
        let page = run(read(&store, &feed(), 0, 10, at(ABANDONED_AFTER_SECS))).expect("read");
        assert_eq!(page.events.iter().map(|(_, e)| e.id.as_str()).collect::<Vec<_>>(), ["next"]);
        // The writer comes back: its slot is void, so it takes a new one (after the "next" event's), once.
        let moved = run(append(&store, &feed(), &event("late"))).expect("late");
        assert!(moved > 2, "a fresh slot: {moved}");
        assert_eq!(run(append(&store, &feed(), &event("late"))).expect("again"), moved);
        let rest = run(read(&store, &feed(), page.next, 10, at(ABANDONED_AFTER_SECS))).expect("read");
        assert_eq!(rest.events.iter().map(|(_, e)| e.id.as_str()).collect::<Vec<_>>(), ["late"]);
    }
}
