//! End-to-end tests of the app in spin.toml, one module per component.

mod approvals;
mod browser;
mod bursts;
mod campus_card;
mod console;
mod customers;
mod differential;
mod faults;
mod hostile;
mod insights;
mod kv_ops;
mod ledger_check;
mod merchant_coupons;
mod mixed_day;
mod money_edges;
mod openapi;
mod partner_events;
mod partner_secrets;
mod privacy;
mod property_fees;
mod referral_tiers;
mod scale;
mod staff;
mod utility_payments;
mod webhooks;
