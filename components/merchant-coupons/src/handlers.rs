//! Handlers: authenticate, decode (size-limited), call one domain function, encode.

use merchant_coupons_domain::campaigns::{self, Campaign, NewCampaign};
use merchant_coupons_domain::merchants::{self, Merchant, NewMerchant};
use merchant_coupons_domain::redemptions::{self, RedeemInput};
use merchant_coupons_domain::{OWNER, checkin, claims};
use scenefin_core::approvals::Proposal;
use scenefin_core::clock::Timestamp;
use scenefin_core::json::DEFAULT_LIMIT_BYTES;
use scenefin_guest::approvals::{self, Action};
use scenefin_guest::{
    Head, OrProblem, Request, Response, Role, Route, SpinStore, body, decode, idempotent, json, json_response,
    lifecycle_rules, problem, request_time, require_customer, require_partner, require_role, split, store,
};
use serde_json::json;

use crate::dto::{CampaignView, CouponView, MerchantView, RedeemBody, RedemptionView, StockBody};

type Handled = Result<Response, Response>;

/// A campaign with its status and remaining stock; the public (`Audience::Public`) does not see its budget.
async fn campaign_view(
    store: &SpinStore,
    c: &Campaign,
    now: Timestamp,
    audience: Audience,
) -> Result<serde_json::Value, Response> {
    let issued = campaigns::issued(store, &c.id).await.or_problem()?;
    let view = CampaignView { campaign: c, status: c.status_at(now), remaining_stock: (c.stock_total - issued).max(0) };
    let mut value =
        serde_json::to_value(view).map_err(|e| problem(&scenefin_core::ApiError::internal(e.to_string())))?;
    if audience == Audience::Public
        && let Some(fields) = value.as_object_mut()
    {
        fields.remove("budget_fen");
    }
    Ok(value)
}

/// Who a campaign is shown to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Audience {
    Operator,
    Public,
}

/// `POST /api/coupons/merchants` (partner admin): checked, then proposed by staff or registered at once
/// (break-glass); see [`execute`].
pub async fn register_merchant(req: Request) -> Handled {
    approvals::register_partner(
        req,
        OWNER,
        async |store, input: NewMerchant| {
            merchants::check_new(store, &input).await.or_problem()?;
            Ok(input.merchant_id)
        },
        execute,
    )
    .await
}

/// Carries out an approved proposal of this component (or a request that needs no checker): a stock change, a
/// merchant's registration, a partner secret rotation.
pub async fn execute(store: &SpinStore, proposal: &Proposal, now: Timestamp) -> Result<serde_json::Value, Response> {
    match proposal.action.as_str() {
        "increase_stock" => {
            let input: StockBody = approvals::payload(proposal)?;
            let campaign = campaigns::set_stock(store, &proposal.resource, input.stock_total).await.or_problem()?;
            campaign_view(store, &campaign, now, Audience::Operator).await
        }
        "register_partner" => {
            approvals::run_registration(
                store,
                proposal,
                now,
                "merchant",
                async |store, input: NewMerchant, creds, at| merchants::register_with(store, input, creds, at).await,
                |merchant| json!(MerchantView::from(merchant)),
            )
            .await
        }
        "rotate_secret" => scenefin_guest::partners::execute_rotation(store, OWNER, proposal, now).await,
        _ => Err(approvals::unknown(proposal)),
    }
}

pub async fn create_campaign(req: Request) -> Handled {
    require_role(&req, Role::Marketing).await?;
    let now = request_time(&req).await?;
    let input: NewCampaign = decode(req).await?;
    let store = store()?;
    let campaign = campaigns::create(&store, input, now).await.or_problem()?;
    Ok(json_response(201, &campaign_view(&store, &campaign, now, Audience::Operator).await?))
}

pub async fn list_campaigns(req: &Request, route: &Route) -> Handled {
    let now = request_time(req).await?;
    let (district, merchant_id) = (route.query_param("district"), route.query_param("merchant_id"));
    let store = store()?;
    let mut items = Vec::new();
    for c in campaigns::listed(&store, district.as_deref(), merchant_id.as_deref(), now).await.or_problem()? {
        items.push(campaign_view(&store, &c, now, Audience::Public).await?);
    }
    Ok(json_response(200, &json!({ "items": items, "next": null })))
}

pub async fn get_campaign(req: &Request, id: &str) -> Handled {
    let now = request_time(req).await?;
    let store = store()?;
    let campaign = campaigns::get(&store, id).await.or_problem()?;
    Ok(json_response(200, &campaign_view(&store, &campaign, now, Audience::Public).await?))
}

pub async fn pause(req: Request, id: &str, paused: bool) -> Handled {
    require_role(&req, Role::Marketing).await?;
    let now = request_time(&req).await?;
    let store = store()?;
    let campaign = campaigns::set_paused(&store, id, paused).await.or_problem()?;
    Ok(json_response(200, &campaign_view(&store, &campaign, now, Audience::Operator).await?))
}

/// `PUT /api/coupons/campaigns/{id}/stock` (marketing): checked; a staff member's raise is proposed (a second
/// marketing staff member approves it), a lowering or a break-glass change is made at once.
pub async fn set_stock(req: Request, id: &str) -> Handled {
    let actor = require_role(&req, Role::Marketing).await?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let input: StockBody = json(&bytes, DEFAULT_LIMIT_BYTES).or_problem()?;
    let current = campaigns::check_stock(&store()?, id, input.stock_total).await.or_problem()?;
    let raise = input.stock_total > current.stock_total;
    let change = format!("campaign {id} stock_total {} → {}", current.stock_total, input.stock_total);
    let action = Action {
        name: "increase_stock",
        role: Role::Marketing,
        resource: current.id,
        payload: json!({ "stock_total": input.stock_total }),
        credentials: None,
    };
    let answer = approvals::propose_or_run(&head, &actor, OWNER, action, raise, 200, now, execute).await?;
    let outcome = if answer.status() == 202 { "proposed, pending a checker" } else { "applied" };
    Ok(scenefin_guest::audit::summarize(answer, format!("{change}: {outcome}")))
}

pub async fn stats(req: &Request, id: &str) -> Handled {
    require_role(req, Role::Viewer).await?;
    let now = request_time(req).await?;
    let store = store()?;
    let campaign = campaigns::get(&store, id).await.or_problem()?;
    Ok(json_response(200, &redemptions::stats(&store, &campaign, now).await.or_problem()?))
}

pub async fn claim(req: Request, campaign_id: &str) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    let store = store()?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let key = scenefin_guest::header(&head, "idempotency-key").unwrap_or_default().to_owned();
    let rules = lifecycle_rules().await;
    idempotent(&store, &head, OWNER, &customer, &bytes, now, async || {
        match claims::claim(&store, campaign_id, &customer, &key, &rules, now).await {
            Ok(coupon) => json_response(201, &CouponView::of(&coupon, now)),
            Err(e) => problem(&e),
        }
    })
    .await
}

pub async fn wallet(req: &Request, route: &Route) -> Handled {
    let now = request_time(req).await?;
    let customer = require_customer(req, now).await?;
    let status = route.query_param("status");
    let coupons = claims::wallet(&store()?, &customer, status.as_deref(), now).await.or_problem()?;
    let items: Vec<CouponView> = coupons.iter().map(|c| CouponView::of(c, now)).collect();
    Ok(json_response(200, &json!({ "items": items, "next": null })))
}

pub async fn check_in(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    body(req, 1024).await.or_problem()?;
    let rules = lifecycle_rules().await;
    let done = checkin::check_in(&store()?, &customer, &rules, now).await.or_problem()?;
    let coupons: Vec<CouponView> = done.coupons.iter().map(|c| CouponView::of(c, now)).collect();
    let refusals: Vec<_> =
        done.refusals.iter().map(|(campaign, code)| json!({ "campaign_id": campaign, "code": code })).collect();
    Ok(json_response(
        200,
        &json!({
            "date": done.date,
            "streak": done.streak,
            "already_checked_in": done.already_checked_in,
            "coupons": coupons,
            "refusals": refusals,
        }),
    ))
}

pub async fn checkin_status(req: &Request) -> Handled {
    let now = request_time(req).await?;
    let customer = require_customer(req, now).await?;
    let (streak, last_date, today) = checkin::status(&store()?, &customer, now).await.or_problem()?;
    Ok(json_response(200, &json!({ "streak": streak, "last_date": last_date, "checked_in_today": today })))
}

async fn signed_merchant(head: &Head, store: &SpinStore, bytes: &[u8], now: Timestamp) -> Result<Merchant, Response> {
    let partner = require_partner(head, store, OWNER, bytes, now).await?;
    merchants::of_partner(store, &partner).await.or_problem()
}

pub async fn redeem(req: Request) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let merchant = signed_merchant(&head, &store, &bytes, now).await?;
    let input: RedeemBody = json(&bytes, DEFAULT_LIMIT_BYTES).or_problem()?;
    let input = RedeemInput {
        code: input.code,
        store_id: input.store_id,
        order_amount_fen: input.order_amount_fen,
        merchant_order_id: input.merchant_order_id,
    };
    let rules = lifecycle_rules().await;
    let done = redemptions::redeem(&store, &merchant, &input, &rules, now).await.or_problem()?;
    Ok(json_response(201, &RedemptionView::from(&done)))
}

pub async fn reverse(req: Request, id: &str) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let merchant = signed_merchant(&head, &store, &bytes, now).await?;
    let done = redemptions::reverse(&store, &merchant, id, now).await.or_problem()?;
    Ok(json_response(200, &RedemptionView::from(&done)))
}
