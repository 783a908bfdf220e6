//! Wire format of the utility routes.

use scenefin_core::orders::PayWith;
use serde::{Deserialize, Serialize};
use utility_payments_domain::billers::{AccountRule, Biller, Discount, Exactness, NewBiller};
use utility_payments_domain::bills::{Bill, BillInput, BillStatus};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillerBody {
    pub id: String,
    pub name: String,
    pub category: String,
    pub city: String,
    pub account_rule: AccountRule,
    pub exactness: Exactness,
    pub settlement_account: String,
    #[serde(default)]
    pub discount: Option<Discount>,
}

impl From<BillerBody> for NewBiller {
    fn from(b: BillerBody) -> Self {
        NewBiller {
            id: b.id,
            name: b.name,
            category: b.category,
            city: b.city,
            account_rule: b.account_rule,
            exactness: b.exactness,
            settlement_account: b.settlement_account,
            discount: b.discount,
        }
    }
}

/// A biller as the public sees it (no settlement account, no partner id).
#[derive(Serialize)]
pub struct BillerView<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub category: &'a str,
    pub city: &'a str,
    pub account_rule: AccountRule,
    pub exactness: Exactness,
    pub cardholder_discount: Option<DiscountView>,
}

#[derive(Serialize)]
pub struct DiscountView {
    pub percent_bp: u32,
    pub cap_fen: i64,
}

impl<'a> From<&'a Biller> for BillerView<'a> {
    fn from(b: &'a Biller) -> Self {
        BillerView {
            id: &b.id,
            name: &b.name,
            category: &b.category,
            city: &b.city,
            account_rule: b.account_rule,
            exactness: b.exactness,
            cardholder_discount: b
                .discount
                .as_ref()
                .map(|d| DiscountView { percent_bp: d.percent_bp, cap_fen: d.cap_fen }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillsBody {
    pub bills: Vec<BillInput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindBody {
    pub biller_id: String,
    pub account_no: String,
    #[serde(default)]
    pub alias: Option<String>,
}

#[derive(Serialize)]
pub struct BillView<'a> {
    pub bill_id: &'a str,
    pub period: &'a str,
    pub amount_fen: i64,
    /// What is still due (the amount less partial payments).
    pub due_fen: i64,
    pub due_date: &'a str,
    pub status: BillStatus,
    /// Re-issued bills count up from 1.
    pub version: u32,
    /// The open order paying it right now, if any (another payment of it is refused until that one ends).
    pub in_payment_by: Option<&'a str>,
}

impl<'a> From<&'a Bill> for BillView<'a> {
    fn from(b: &'a Bill) -> Self {
        BillView {
            bill_id: &b.bill_id,
            period: &b.period,
            amount_fen: b.amount_fen,
            due_fen: b.due_fen(),
            due_date: &b.due_date,
            status: b.status,
            version: b.version,
            in_payment_by: b.hold.as_ref().map(|h| h.order_id.as_str()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteBody {
    pub biller_id: String,
    pub account_no: String,
    #[serde(default)]
    pub bill_ids: Option<Vec<String>>,
    #[serde(default)]
    pub amount_fen: Option<i64>,
    pub pay_with: PayWith,
    #[serde(default)]
    pub card_bin: Option<String>,
    #[serde(default)]
    pub coupon_id: Option<String>,
}
