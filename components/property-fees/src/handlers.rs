//! Handlers: authenticate, decode (size-limited), call one domain function, encode.

use property_fees_domain::communities::{self, LateFee, NewCommunity, Prepay, RoomInput};
use property_fees_domain::fees::{self, BillInput};
use property_fees_domain::{OWNER, PropertyError, households, payments, pricing, reports};
use scenefin_core::approvals::Proposal;
use scenefin_core::clock::Timestamp;
use scenefin_core::json::DEFAULT_LIMIT_BYTES;
use scenefin_core::orders::{CardDiscount, PayWith};
use scenefin_guest::orders as flow;
use scenefin_guest::{
    OrProblem, Request, Response, Role, Route, SpinStore, approvals, bank_card_bins, body, json, json_response,
    lifecycle_rules, operator_or_partner, request_time, require_customer, require_partner, split, store,
};
use serde::Deserialize;
use serde_json::{Value, json};

type Handled = Result<Response, Response>;

/// Upload bodies are larger than ordinary JSON (up to 1,000 rooms or bills).
const UPLOAD_LIMIT_BYTES: usize = 512 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommunityBody {
    id: String,
    name: String,
    city: String,
    property_company: String,
    settlement_account: String,
    #[serde(default)]
    owner_discount: Option<CardDiscount>,
    #[serde(default)]
    prepay: Option<Prepay>,
    #[serde(default)]
    late_fee: Option<LateFee>,
}

/// `POST /api/property/communities` (partner admin): checked, then proposed by staff or registered at once
/// (break-glass); see [`execute`].
pub async fn register(req: Request) -> Handled {
    approvals::register_partner(
        req,
        OWNER,
        async |store, b: CommunityBody| {
            let input = b.into();
            communities::check_new(store, &input).await.or_problem()?;
            Ok(input.id)
        },
        execute,
    )
    .await
}

impl From<CommunityBody> for NewCommunity {
    fn from(b: CommunityBody) -> Self {
        NewCommunity {
            id: b.id,
            name: b.name,
            city: b.city,
            property_company: b.property_company,
            settlement_account: b.settlement_account,
            owner_discount: b.owner_discount,
            prepay: b.prepay,
            late_fee: b.late_fee,
        }
    }
}

/// Carries out an approved proposal of this component (or a break-glass request): a refund, a community's
/// registration, a partner secret rotation.
pub async fn execute(store: &SpinStore, proposal: &Proposal, now: Timestamp) -> Result<Value, Response> {
    approvals::run_scenario(
        store,
        OWNER,
        proposal,
        now,
        async |store, id, by, request, rules, now| payments::refund(store, id, by, request, rules, now).await,
        "community",
        async |store, b: CommunityBody, creds, at| communities::register_with(store, b.into(), creds, at).await,
        community_view,
    )
    .await
}

/// A community as its registration answers it.
fn community_view(c: &communities::Community) -> Value {
    json!({"id": c.id, "name": c.name, "city": c.city, "property_company": c.property_company,
        "prepay": c.prepay, "late_fee": c.late_fee,
        "owner_discount": c.owner_discount.as_ref().map(|d| json!({"percent_bp": d.percent_bp, "cap_fen": d.cap_fen}))})
}

/// Reads a signed partner upload for `community_id`.
async fn partner_upload(
    req: Request,
    community_id: &str,
) -> Result<(SpinStore, communities::Community, Vec<u8>), Response> {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, UPLOAD_LIMIT_BYTES).await?;
    let partner = require_partner(&head, &store, OWNER, &bytes, now).await?;
    partner.require(community_id).or_problem()?;
    let community = communities::get(&store, community_id).await.or_problem()?;
    Ok((store, community, bytes.to_vec()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomsBody {
    rooms: Vec<RoomInput>,
}

pub async fn rooms(req: Request, community_id: &str) -> Handled {
    let (store, community, bytes) = partner_upload(req, community_id).await?;
    let input: RoomsBody = json(&bytes, UPLOAD_LIMIT_BYTES).or_problem()?;
    let pii = scenefin_guest::pii_keys().await?;
    let created = communities::upsert_rooms(&store, &community, &input.rooms, &pii).await.or_problem()?;
    Ok(json_response(200, &json!({ "received": input.rooms.len(), "created": created })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BillsBody {
    bills: Vec<BillInput>,
}

pub async fn bills(req: Request, community_id: &str) -> Handled {
    let (store, community, bytes) = partner_upload(req, community_id).await?;
    let input: BillsBody = json(&bytes, UPLOAD_LIMIT_BYTES).or_problem()?;
    let result = fees::upload(&store, &community, &input.bills).await.or_problem()?;
    Ok(json_response(200, &result))
}

pub async fn perks(community_id: &str) -> Handled {
    let store = store()?;
    let community = communities::get(&store, community_id).await.or_problem()?;
    let items = scenefin_core::perks::for_community(&store, &community.id).await.or_problem()?;
    Ok(json_response(200, &json!({ "items": items, "next": null })))
}

pub async fn stats(req: Request, community_id: &str) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    operator_or_partner(&req, &store, OWNER, Role::Viewer, community_id, b"", now).await?;
    Ok(json_response(200, &reports::stats(&store, community_id).await.or_problem()?))
}

pub async fn settlement(req: Request, route: &Route, community_id: &str) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    operator_or_partner(&req, &store, OWNER, Role::Finance, community_id, b"", now).await?;
    let day = match route.query_param("date") {
        Some(date) => scenefin_core::settlement::parse_date(&date)
            .ok_or(PropertyError::invalid("date", "YYYY-MM-DD"))
            .or_problem()?,
        None => now.shanghai_day(),
    };
    Ok(json_response(200, &reports::settlement(&store, community_id, day).await.or_problem()?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    community_id: String,
    room_id: String,
    owner_name: String,
}

pub async fn claim(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    let b: ClaimBody = json(&body(req, DEFAULT_LIMIT_BYTES).await.or_problem()?, DEFAULT_LIMIT_BYTES).or_problem()?;
    let rules = lifecycle_rules().await;
    let pii = scenefin_guest::pii_keys().await?;
    let wanted = households::Claim { community_id: &b.community_id, room_id: &b.room_id, owner_name: &b.owner_name };
    let claimed = households::claim(&store()?, &customer, wanted, &pii, &rules, now).await.or_problem()?;
    Ok(json_response(201, &claimed))
}

pub async fn households(req: &Request) -> Handled {
    let now = request_time(req).await?;
    let customer = require_customer(req, now).await?;
    let items = households::list(&store()?, &customer, now).await.or_problem()?;
    Ok(json_response(200, &json!({ "items": items, "next": null })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteBody {
    #[serde(default)]
    community_id: Option<String>,
    room_id: String,
    #[serde(default)]
    bill_ids: Vec<String>,
    #[serde(default)]
    prepay_months: Option<u32>,
    pay_with: PayWith,
    #[serde(default)]
    card_bin: Option<String>,
    #[serde(default)]
    coupon_id: Option<String>,
}

pub async fn quote(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    let b: QuoteBody = json(&body(req, DEFAULT_LIMIT_BYTES).await.or_problem()?, DEFAULT_LIMIT_BYTES).or_problem()?;
    let request = pricing::QuoteRequest {
        community_id: b.community_id,
        room_id: b.room_id,
        bill_ids: b.bill_ids,
        prepay_months: b.prepay_months,
        pay_with: b.pay_with,
        card_bin: b.card_bin,
        coupon_id: b.coupon_id,
    };
    let quote = pricing::quote(&store()?, &customer, request, &bank_card_bins().await, now).await.or_problem()?;
    Ok(flow::quote_response(&quote))
}

pub async fn place_order(req: Request) -> Handled {
    flow::place(req, OWNER, async |store, customer, quote_id, now| {
        payments::place(store, customer, quote_id, now).await
    })
    .await
}

pub async fn orders(req: &Request, route: &Route) -> Handled {
    flow::list(req, route, OWNER).await
}

pub async fn order(req: &Request, id: &str) -> Handled {
    flow::get(req, OWNER, id).await
}

pub async fn refund(req: Request, id: &str) -> Handled {
    flow::refund(req, OWNER, id, pricing::community_of, async |store, id, by, request, rules, now| {
        payments::refund(store, id, by, request, rules, now).await
    })
    .await
}

pub async fn notify(req: Request) -> Handled {
    flow::notify(req, async |store, event, bins, rules, now| payments::notify(store, event, bins, rules, now).await)
        .await
}

/// `GET /api/property/communities`: the communities an owner can claim a room in, in the order registered
/// (public: id, name and city only).
pub async fn list_communities() -> Handled {
    let all = communities::all(&store()?).await.or_problem()?;
    Ok(scenefin_guest::directory(all.iter().map(|c| (c.id.as_str(), c.name.as_str(), Some(c.city.as_str())))))
}
