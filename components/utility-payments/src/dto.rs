//! Wire format of the utility routes.

use scenefin_core::clock::Timestamp;
use scenefin_core::orders::{Order, OrderState, PayWith, Quote, QuoteLine};
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
    pub due_date: &'a str,
    pub status: BillStatus,
}

impl<'a> From<&'a Bill> for BillView<'a> {
    fn from(b: &'a Bill) -> Self {
        BillView {
            bill_id: &b.bill_id,
            period: &b.period,
            amount_fen: b.amount_fen,
            due_date: &b.due_date,
            status: b.status,
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

#[derive(Serialize)]
pub struct QuoteView<'a> {
    pub quote_id: &'a str,
    pub lines: &'a [QuoteLineView<'a>],
    pub total_fen: i64,
    pub pay_with: PayWith,
    pub expires_at: Timestamp,
}

#[derive(Serialize)]
pub struct QuoteLineView<'a> {
    pub kind: &'a str,
    pub description: &'a str,
    pub amount_fen: i64,
}

pub fn lines(lines: &[QuoteLine]) -> Vec<QuoteLineView<'_>> {
    lines
        .iter()
        .map(|l| QuoteLineView { kind: &l.kind, description: &l.description, amount_fen: l.amount_fen })
        .collect()
}

pub fn quote_view<'a>(q: &'a Quote, lines: &'a [QuoteLineView<'a>]) -> QuoteView<'a> {
    QuoteView { quote_id: &q.id, lines, total_fen: q.total_fen, pay_with: q.pay_with, expires_at: q.expires_at }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBody {
    pub quote_id: String,
}

/// An order as its customer (a receipt once paid), an operator or its biller sees it.
#[derive(Serialize)]
pub struct OrderView<'a> {
    pub order_id: &'a str,
    pub state: OrderState,
    pub lines: Vec<QuoteLineView<'a>>,
    pub total_fen: i64,
    pub biller_id: Option<&'a str>,
    pub account_no: Option<&'a str>,
    pub bill_ids: Option<&'a serde_json::Value>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub paid_at: Option<Timestamp>,
    pub paid_with_bank_card: Option<bool>,
    pub receipt_no: Option<&'a str>,
    pub history: &'a [scenefin_core::orders::StateChange],
}

impl<'a> From<&'a Order> for OrderView<'a> {
    fn from(o: &'a Order) -> Self {
        OrderView {
            order_id: &o.id,
            state: o.state,
            lines: lines(&o.lines),
            total_fen: o.total_fen,
            biller_id: o.payload.get("biller_id").and_then(|v| v.as_str()),
            account_no: o.payload.get("account_no").and_then(|v| v.as_str()),
            bill_ids: o.payload.get("bill_ids"),
            created_at: o.created_at,
            expires_at: o.expires_at,
            paid_at: o.payment.as_ref().map(|p| p.paid_at),
            paid_with_bank_card: o.payment.as_ref().map(|p| p.bank_card),
            receipt_no: o.payment.as_ref().map(|p| p.event_id.as_str()),
            history: &o.history,
        }
    }
}

/// What the mini-program hands to the payment SDK.
#[derive(Serialize)]
pub struct PaymentParams<'a> {
    pub order_id: &'a str,
    pub amount_fen: i64,
    pub currency: &'static str,
    pub description: String,
    pub expires_at: Timestamp,
    pub bank_card_only: bool,
}

#[derive(Serialize)]
pub struct PlacedView<'a> {
    pub order: OrderView<'a>,
    pub payment: PaymentParams<'a>,
}
