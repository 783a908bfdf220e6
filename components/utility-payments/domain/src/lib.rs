//! utility-payments-domain: billers (water, power, gas, heating), the bills they upload, the household
//! accounts customers bind, pricing (amount exactness, the cardholder discount funded by a bank budget), the
//! payment's effects on bills, and the billers' settlement and acquisition reports. Pure logic over
//! `scenefin_core::kv::Store`; the quote/order/notification machinery is `scenefin_core::orders`.

pub mod accounts;
pub mod billers;
pub mod bills;
pub mod error;
pub mod keys;
pub mod payments;
pub mod pricing;
pub mod reports;

pub use error::UtilityError;

/// Key owner prefix and scenario name.
pub const OWNER: &str = "util";
/// Scenario name in events and orders.
pub const SCENARIO: &str = "utility";
