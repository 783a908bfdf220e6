//! Wire format of the coupon routes.

use merchant_coupons_domain::campaigns::Campaign;
use merchant_coupons_domain::merchants::{Merchant, Shop};
use merchant_coupons_domain::redemptions::{Redemption, RedemptionState};
use scenefin_core::clock::Timestamp;
use scenefin_core::coupons::{Coupon, Discount};
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
pub struct MerchantView<'a> {
    pub merchant_id: &'a str,
    pub name: &'a str,
    pub district: &'a str,
    pub community_ids: &'a [String],
    pub stores: &'a [Shop],
    pub created_at: Timestamp,
}

impl<'a> From<&'a Merchant> for MerchantView<'a> {
    fn from(m: &'a Merchant) -> Self {
        MerchantView {
            merchant_id: &m.id,
            name: &m.name,
            district: &m.district,
            community_ids: &m.community_ids,
            stores: &m.stores,
            created_at: m.created_at,
        }
    }
}

/// A campaign with its status and remaining stock.
#[derive(Serialize)]
pub struct CampaignView<'a> {
    #[serde(flatten)]
    pub campaign: &'a Campaign,
    pub status: &'static str,
    pub remaining_stock: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockBody {
    pub stock_total: i64,
}

/// A coupon as its holder sees it.
#[derive(Serialize)]
pub struct CouponView<'a> {
    pub coupon_id: &'a str,
    pub code: &'a str,
    pub campaign_id: &'a str,
    pub title: &'a str,
    pub merchant_ids: &'a [String],
    pub district: Option<&'a str>,
    pub discount: &'a Discount,
    pub applies_to: &'a [String],
    pub status: &'static str,
    pub claimed_at: Timestamp,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
}

impl<'a> CouponView<'a> {
    pub fn of(c: &'a Coupon, now: Timestamp) -> Self {
        CouponView {
            coupon_id: &c.id,
            code: &c.code,
            campaign_id: &c.campaign_id,
            title: &c.title,
            merchant_ids: &c.merchant_ids,
            district: c.district.as_deref(),
            discount: &c.discount,
            applies_to: &c.applies_to,
            status: c.status_at(now),
            claimed_at: c.claimed_at,
            expires_at: c.expires_at,
            used_at: c.used_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeemBody {
    pub code: String,
    pub store_id: String,
    pub order_amount_fen: i64,
    pub merchant_order_id: String,
}

/// A redemption as its merchant sees it.
#[derive(Serialize)]
pub struct RedemptionView<'a> {
    pub redemption_id: &'a str,
    pub merchant_order_id: &'a str,
    pub store_id: &'a str,
    pub coupon_id: &'a str,
    pub campaign_id: &'a str,
    pub order_amount_fen: i64,
    pub discount_fen: i64,
    pub pay_fen: i64,
    pub state: RedemptionState,
    pub created_at: Timestamp,
    pub reversed_at: Option<Timestamp>,
    pub coupon_restored: Option<bool>,
}

impl<'a> From<&'a Redemption> for RedemptionView<'a> {
    fn from(r: &'a Redemption) -> Self {
        RedemptionView {
            redemption_id: &r.redemption_id,
            merchant_order_id: &r.merchant_order_id,
            store_id: &r.store_id,
            coupon_id: &r.coupon_id,
            campaign_id: &r.campaign_id,
            order_amount_fen: r.order_amount_fen,
            discount_fen: r.discount_fen,
            pay_fen: r.order_amount_fen - r.discount_fen,
            state: r.state,
            created_at: r.created_at,
            reversed_at: r.reversed_at,
            coupon_restored: r.coupon_restored,
        }
    }
}
