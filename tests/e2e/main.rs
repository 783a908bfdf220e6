//! End-to-end tests of the app in spin.toml, one module per component.

mod campus_card;
mod console;
mod customers;
mod merchant_coupons;
mod property_fees;
mod referral_tiers;
mod utility_payments;
