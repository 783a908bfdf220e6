//! property-fees-domain: communities run by property companies, their rooms and owners, fee bills (paid together
//! when they share a `relate_id`), late fees, the cardholder owner discount, prepay incentives, and the
//! community's settlement and collection reports. Pure logic over `scenefin_core::kv::Store`; quotes, orders,
//! notifications, refunds, ledger and budgets are `scenefin_core`'s.

pub mod communities;
pub mod error;
pub mod fees;
pub mod households;
pub mod keys;
pub mod payments;
pub mod pricing;
pub mod reports;

pub use error::PropertyError;

/// Key owner prefix.
pub const OWNER: &str = "prop";
/// Scenario name in events and orders.
pub const SCENARIO: &str = "property";
