//! End-to-end tests of the app in spin.toml, one module per component.

mod console;
mod customers;
mod utility_payments;
