//! A card's transaction list: top-ups, spends, reversals and balance moves, newest first.
//!
//! Entries are numbered by an atomic counter (`…:txn_seq`), so appending never contends on a shared document, and
//! deduplicated by reference (`campus:txnref:{card}:{hash}` holds the number a reference got), so an effect retried
//! after a crash lists once. A number taken by an append that lost the race for its reference stays a gap; listing
//! skips gaps.

use scenefin_core::clock::Timestamp;
use scenefin_core::kv::{self, Key, Step, Store, StoreError, get_json, put_json};
use serde::{Deserialize, Serialize};

use crate::{CampusError, keys};

/// What moved the balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnKind {
    /// A paid top-up (with its bonus).
    TopUp,
    /// A merchant debit.
    Spend,
    /// A merchant debit reversed.
    Reversal,
    /// Balance received from a replaced card.
    TransferIn,
    /// Balance moved to the card that replaced this one.
    TransferOut,
    /// A top-up refunded to the instrument that paid it (with its bonus taken back).
    Refund,
}

/// One transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// The ledger posting id (unique).
    pub txn_id: String,
    /// Kind.
    pub kind: TxnKind,
    /// Effect on the balance: positive in, negative out.
    pub amount_fen: i64,
    /// The order, `pos_txn_id` or card it concerns.
    pub reference: String,
    /// The merchant, for spends and reversals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    /// When.
    pub at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Numbered {
    v: u32,
    n: i64,
}

/// Largest page.
pub const MAX_PAGE: usize = 100;

/// Appends `txn` to the card's list, once per `txn.txn_id`.
pub async fn append(store: &impl Store, card_id: &str, txn: &Txn) -> Result<(), CampusError> {
    let ref_key = keys::txn_ref(card_id, &txn.txn_id);
    let n = match get_json::<Numbered>(store, &ref_key).await? {
        Some(existing) => existing.n,
        None => number(store, card_id, &ref_key).await?,
    };
    put_json(store, &keys::txn(card_id, n), txn).await?;
    Ok(())
}

/// [`append`] for a transaction that is almost surely not listed yet (its effect was just made by this call): the
/// number is taken without looking first. Should it be listed already, it keeps its number and the one taken is a
/// gap, which readers skip.
pub async fn append_new(store: &impl Store, card_id: &str, txn: &Txn) -> Result<(), CampusError> {
    let n = number(store, card_id, &keys::txn_ref(card_id, &txn.txn_id)).await?;
    put_json(store, &keys::txn(card_id, n), txn).await?;
    Ok(())
}

/// The number of the transaction whose reference is `ref_key`: a fresh one from the card's counter, unless another
/// attempt recorded one first.
async fn number(store: &impl Store, card_id: &str, ref_key: &Key) -> Result<i64, CampusError> {
    let fresh = store.increment(&keys::txn_seq(card_id), 1).await?;
    Ok(kv::update_json_new(store, ref_key, |doc: Option<&Numbered>| match doc {
        Some(existing) => Ok::<_, StoreError>(Step::Keep(existing.n)),
        None => Ok(Step::Write(Numbered { v: 1, n: fresh }, fresh)),
    })
    .await?)
}

/// A page of the card's transactions, newest first, below the `cursor` (a number from a previous page's `next`).
pub async fn list(
    store: &impl Store,
    card_id: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<Txn>, Option<String>), CampusError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let cursor = cursor
        .map(|c| {
            // A transaction number as the contract spells it: 1 to 18 digits, no leading zero or sign.
            let spelled = (1..=18).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit()) && !c.starts_with('0');
            spelled
                .then(|| c.parse::<i64>().ok())
                .flatten()
                .ok_or_else(|| CampusError::invalid("cursor", "a cursor from a previous page (a transaction number)"))
        })
        .transpose()?;
    // A cursor above the newest number starts from the newest: reading down from a forged `9223372036854775807`
    // a page at a time would otherwise hold the request for ever.
    let end = kv::read_counter(store, &keys::txn_seq(card_id)).await?.saturating_add(1);
    let below = cursor.map_or(end, |c| c.min(end));
    let mut items = Vec::with_capacity(limit);
    let mut next_below = below;
    // Gaps are rare; read a little more than a page at a time until it is full or the list ends.
    while items.len() < limit && next_below > 1 {
        let low = next_below.saturating_sub(i64::try_from(limit).unwrap_or(1)).max(1);
        let numbers: Vec<i64> = (low..next_below).rev().collect();
        let keys: Vec<_> = numbers.iter().map(|n| keys::txn(card_id, *n)).collect();
        for ((n, key), raw) in numbers.iter().zip(&keys).zip(kv::get_all(store, &keys).await?) {
            if items.len() == limit {
                break;
            }
            if let Some(txn) = kv::decode_doc::<Txn>(key, raw.as_deref())? {
                items.push(txn);
            }
            next_below = *n;
        }
    }
    let next = (next_below > 1 && items.len() == limit).then(|| next_below.to_string());
    Ok((items, next))
}

/// Hostile transaction cursors, property-based.
#[cfg(test)]
mod hostile_cursor_tests {
    use proptest::prelude::*;
    use scenefin_core::Problem;
    use scenefin_core::kv::MemStore;

    use super::*;

    fn store_with(n: usize) -> MemStore {
        let store = MemStore::default();
        pollster::block_on(async {
            for i in 0..n {
                let txn = Txn {
                    txn_id: format!("t{i}"),
                    kind: TxnKind::TopUp,
                    amount_fen: 100,
                    reference: format!("o{i}"),
                    merchant_id: None,
                    at: Timestamp::from_unix_secs(1_795_000_000),
                };
                append(&store, "card_1", &txn).await.expect("append");
            }
        });
        store
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn garbage_cursors_never_panic(n in 0usize..8, cursor in prop_oneof![
            ".{0,30}".boxed(),
            any::<i64>().prop_map(|c| c.to_string()).boxed(),
            Just("99999999999999999999999".to_owned()).boxed(),
        ], limit in any::<usize>()) {
            let store = store_with(n);
            match pollster::block_on(list(&store, "card_1", Some(&cursor), limit)) {
                Ok((items, _)) => prop_assert!(cursor.parse::<i64>().is_ok_and(|c| c >= 1) && items.len() <= MAX_PAGE),
                Err(e) => prop_assert_eq!(e.code(), "validation_failed"),
            }
        }

        #[test]
        fn next_cursors_walk_every_transaction_once(n in 0usize..30, limit in 1usize..8) {
            let store = store_with(n);
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..=n {
                let (items, next) = pollster::block_on(list(&store, "card_1", cursor.as_deref(), limit)).expect("a page");
                seen.extend(items.into_iter().map(|t| t.txn_id));
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let expected: Vec<String> = (0..n).rev().map(|i| format!("t{i}")).collect();
            prop_assert_eq!(seen, expected);
        }
    }
}
