//! The audit log: who (a staff member, the break-glass token, a partner) did what (method and path), when, from
//! where, with what result — for every mutating operator and partner request — append-only and tamper-evident.
//!
//! - **Storage.** One log per Asia/Shanghai day, `audit:{yyyymmdd}`: a slot counter and one write-once entry per
//!   slot (`audit:{day}:ctr:n`, `audit:{day}:s:{n}`, like every log here), so concurrent requests append without
//!   contention. Appending costs two store operations after the response is decided.
//! - **Tamper evidence.** Each entry carries `mac`, an HMAC-SHA256 under a key derived from `session_secret`
//!   ([`audit_key`]) over its canonical content (day and slot included), so an entry changed in the store without
//!   the secret no longer verifies. Entries chain in slot order: `chain_n = SHA-256(chain_{n-1} ‖ mac_n)`, starting
//!   from `SHA-256("audit:{day}")` (days do not chain to each other: a day is sealed on its own). The first read
//!   after a day is over, if everything verifies, writes that day's seal
//!   (`audit:{day}:seal`: its entry count and last chain value, write-once); from then on a removed, added or
//!   reordered entry of that day shows as a seal mismatch.
//! - **Reading** ([`day_report`]): every entry of a day, each with `intact`, the chain, and the problems found; the
//!   filters (actor, resource) apply after verification.

use serde::{Deserialize, Serialize};

use crate::auth::{hex, hmac_sha256, sha256_hex};
use crate::clock::{Timestamp, number_of_day};
use crate::kv::{self, Key, Store, StoreError, decode_doc, get_all, get_json, put_json};

/// A day is sealed once it ended this long ago (Asia/Shanghai): appends in flight have landed.
const SEAL_MARGIN_SECS: i64 = 3600;

/// What an entry records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Schema version.
    pub v: u32,
    /// The Shanghai day of the request (`yyyymmdd`).
    pub day: u32,
    /// The slot in the day's log, from 1.
    pub seq: i64,
    /// When.
    pub at: Timestamp,
    /// The staff id, `break-glass`, or the partner id.
    pub actor: String,
    /// `staff`, `break_glass` or `partner`.
    pub actor_kind: String,
    /// The method.
    pub method: String,
    /// The path and query (the resource acted on).
    pub path: String,
    /// The response status (the result).
    pub status: u16,
    /// Where the request came from (the runtime's client address), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// What changed, before → after, as the handler summarised it (e.g. `stock_total 100 → 150`), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// HMAC-SHA256 (hex) of the entry without this field, under [`audit_key`].
    #[serde(default)]
    pub mac: String,
}

impl Entry {
    fn mac_over(&self, key: &[u8; 32]) -> String {
        let unsigned = Entry { mac: String::new(), ..self.clone() };
        // A plain struct of strings and integers always serialises.
        let bytes = serde_json::to_vec(&unsigned).unwrap_or_default();
        hex(&hmac_sha256(key, &bytes))
    }
}

/// The key audit entries are signed with: derived from `session_secret` for this purpose only.
pub fn audit_key(session_secret: &[u8]) -> [u8; 32] {
    hmac_sha256(session_secret, b"scenefin audit log v1")
}

fn log_base(day: u32) -> Key {
    Key::new(&["audit", &day.to_string()])
}

fn seal_key(day: u32) -> Key {
    Key::new(&["audit", &day.to_string(), "seal"])
}

/// Appends an entry (its `day`, `seq` and `mac` are filled in here).
pub async fn append(store: &impl Store, key: &[u8; 32], mut entry: Entry) -> Result<Entry, StoreError> {
    entry.day = entry.at.shanghai_day();
    let base = log_base(entry.day);
    entry.seq = store.increment(&kv::log_counter_key(&base), 1).await?;
    entry.mac = entry.mac_over(key);
    put_json(store, &kv::log_slot_key(&base, entry.seq), &entry).await?;
    Ok(entry)
}

/// A day's seal: its entry count and last chain value, written once after the day is over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// Entries in the day.
    pub count: i64,
    /// The chain value after the last entry.
    pub head: String,
}

/// An entry as a report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checked {
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
    /// Whether its MAC verifies (it is as written).
    pub intact: bool,
    /// The chain value after it.
    pub chain: String,
}

/// A day of the audit log, verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayReport {
    /// The day (`yyyymmdd`).
    pub day: u32,
    /// Entries in the log (before filtering).
    pub total: i64,
    /// The entries that match the filters, in order.
    pub entries: Vec<Checked>,
    /// Whether every entry verifies, none is missing and the seal (if any) matches.
    pub intact: bool,
    /// What does not verify, in plain words.
    pub problems: Vec<String>,
    /// The chain value after the day's last entry.
    pub head: String,
    /// Whether the day is over and sealed.
    pub sealed: bool,
}

/// Filters of a report.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    /// Only this actor.
    pub actor: Option<&'a str>,
    /// Only paths containing this.
    pub resource: Option<&'a str>,
}

/// The audit log of Shanghai day `day` as of `now`, verified (every entry's MAC, missing slots, the chain, the day's
/// seal), then filtered. Seals the day when it is over and verifies.
pub async fn day_report(
    store: &impl Store,
    key: &[u8; 32],
    day: u32,
    filter: &Filter<'_>,
    now: Timestamp,
) -> Result<DayReport, StoreError> {
    let start = sha256_hex(format!("audit:{day}").as_bytes());
    let base = log_base(day);
    let counter = kv::log_counter_key(&base);
    let count = kv::read_counter(store, &counter).await?.max(0);
    let slots: Vec<Key> = (1..=count).map(|n| kv::log_slot_key(&base, n)).collect();
    let mut problems = Vec::new();
    let mut head = start;
    let mut entries = Vec::new();
    for ((slot, raw), n) in slots.iter().zip(get_all(store, &slots).await?).zip(1..) {
        let Some(entry) = decode_doc::<Entry>(slot, raw.as_deref()).ok().flatten() else {
            problems.push(format!("entry {n} is missing or unreadable"));
            head = sha256_hex(format!("{head}missing").as_bytes());
            continue;
        };
        let intact = entry.mac == entry.mac_over(key) && entry.seq == n && entry.day == day;
        if !intact {
            problems.push(format!("entry {n} was changed after it was written"));
        }
        head = sha256_hex(format!("{head}{}", entry.mac).as_bytes());
        let wanted =
            filter.actor.is_none_or(|a| entry.actor == a) && filter.resource.is_none_or(|r| entry.path.contains(r));
        if wanted {
            entries.push(Checked { entry, intact, chain: head.clone() });
        }
    }
    let over = now.unix_secs() - SEAL_MARGIN_SECS >= day_end(day);
    let mut sealed = false;
    if over {
        let computed = Seal { count, head: head.clone() };
        match get_json::<Seal>(store, &seal_key(day)).await? {
            Some(seal) if seal != computed => {
                problems.push(format!(
                    "the day was sealed with {} entries ending in chain {}, but now holds {} ending in {}",
                    seal.count, seal.head, computed.count, computed.head
                ));
                sealed = true;
            }
            Some(_) => sealed = true,
            // Sealed only when everything verifies, so a seal never blesses a tampered day.
            None if problems.is_empty() => {
                put_json(store, &seal_key(day), &computed).await?;
                sealed = true;
            }
            None => {}
        }
    }
    Ok(DayReport { day, total: count, entries, intact: problems.is_empty(), problems, head, sealed })
}

/// When Shanghai day `day` ends, Unix seconds.
fn day_end(day: u32) -> i64 {
    (number_of_day(day).unwrap_or(0) + 1) * 86_400 - crate::clock::SHANGHAI_OFFSET_SECS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemStore;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_unix_secs(1_763_870_400 + secs) // 2025-11-23T12:00:00+08:00
    }

    fn entry(actor: &str, path: &str, at: Timestamp) -> Entry {
        Entry {
            v: 1,
            day: 0,
            seq: 0,
            at,
            actor: actor.into(),
            actor_kind: "staff".into(),
            method: "POST".into(),
            path: path.into(),
            status: 200,
            from: None,
            summary: None,
            mac: String::new(),
        }
    }

    #[test]
    fn a_day_verifies_filters_seals_and_then_shows_any_change() {
        let store = MemStore::default();
        let key = audit_key(b"secret");
        for (actor, path) in [("s_a", "/api/utility/billers"), ("s_b", "/api/ops/x"), ("s_a", "/api/coupons/c")] {
            pollster::block_on(append(&store, &key, entry(actor, path, t(60)))).expect("append");
        }
        let day = t(0).shanghai_day();
        let report = |at: Timestamp, filter: Filter<'_>| {
            pollster::block_on(day_report(&store, &key, day, &filter, at)).expect("report")
        };
        let open = report(t(120), Filter { actor: Some("s_a"), resource: None });
        assert_eq!((open.total, open.entries.len(), open.intact, open.sealed), (3, 2, true, false));
        assert_eq!(report(t(120), Filter { actor: None, resource: Some("coupons") }).entries.len(), 1);
        let closed = report(t(2 * 86_400), Filter::default());
        assert!(closed.intact && closed.sealed, "{closed:?}");

        // Changing an entry breaks its MAC; removing one breaks the chain the seal recorded.
        let slot = kv::log_slot_key(&log_base(day), 2);
        let raw = pollster::block_on(store.get(&slot)).expect("get").expect("slot");
        let changed = String::from_utf8(raw).expect("utf8").replace("/api/ops/x", "/api/ops/y");
        pollster::block_on(store.set(&slot, changed.as_bytes())).expect("set");
        let tampered = report(t(2 * 86_400), Filter::default());
        assert!(!tampered.intact, "{tampered:?}");
        assert!(tampered.problems.iter().any(|p| p.contains("entry 2 was changed")), "{:?}", tampered.problems);
        let last = kv::log_slot_key(&log_base(day), 3);
        pollster::block_on(store.delete(&last)).expect("delete");
        let removed = report(t(2 * 86_400), Filter::default());
        assert!(removed.problems.iter().any(|p| p.contains("entry 3 is missing")), "{:?}", removed.problems);
        assert!(removed.problems.iter().any(|p| p.contains("sealed with 3 entries")), "{:?}", removed.problems);
    }
}
