//! campus-card-domain: schools and their merchants, batch-issued campus cards, binding, stored value (top-up through
//! the shared payment flow, spending by POS or one-time pay code), daily limits, loss, freeze and reissue, the
//! card's transaction list and merchant settlement. Pure logic over `scenefin_core::kv::Store`.
//!
//! The balance of a card is the ledger account [`keys::card_account`], never a field of a document here: the
//! ledger refuses any posting that would take more than a stored-value account holds, in the same CAS that applies
//! the line, so no sequence of spends, retries or crashes can overdraw a card.

pub mod cards;
pub mod error;
pub mod keys;
pub mod schools;
pub mod spend;
pub mod topups;
pub mod txns;

pub use error::{CampusError, Refusal};

/// Key owner prefix.
pub const OWNER: &str = "campus";
/// Scenario name in events and orders.
pub const SCENARIO: &str = "campus";

#[cfg(test)]
mod tests;
