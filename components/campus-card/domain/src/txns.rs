//! A card's transaction list: top-ups, spends, reversals and balance moves, newest first.
//!
//! Entries are numbered by an atomic counter (`…:txn_seq`), so appending never contends on a shared document, and
//! deduplicated by reference (`campus:txnref:{card}:{hash}` holds the number a reference got), so an effect retried
//! after a crash lists once. A number taken by an append that lost the race for its reference stays a gap; listing
//! skips gaps.

use scenefin_core::clock::Timestamp;
use scenefin_core::kv::{self, Step, Store, StoreError, get_json, put_json};
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
        None => {
            let fresh = store.increment(&keys::txn_seq(card_id), 1).await?;
            kv::update_json(store, &ref_key, |doc: Option<&Numbered>| match doc {
                Some(existing) => Ok::<_, StoreError>(Step::Keep(existing.n)),
                None => Ok(Step::Write(Numbered { v: 1, n: fresh }, fresh)),
            })
            .await?
        }
    };
    put_json(store, &keys::txn(card_id, n), txn).await?;
    Ok(())
}

/// A page of the card's transactions, newest first, below the `cursor` (a number from a previous page's `next`).
pub async fn list(
    store: &impl Store,
    card_id: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<Txn>, Option<String>), CampusError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let below = match cursor {
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| CampusError::invalid("cursor", "a cursor from a previous page"))?,
        None => kv::read_counter(store, &keys::txn_seq(card_id)).await?.saturating_add(1),
    };
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
