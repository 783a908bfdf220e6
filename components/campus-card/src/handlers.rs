//! Handlers: authenticate, decode (size-limited), call one domain function, encode.

use campus_card_domain::cards::{self, Actor, Card};
use campus_card_domain::schools::{self, Merchant, School};
use campus_card_domain::spend::{self, SpendInput};
use campus_card_domain::topups::{self, TopupRequest};
use campus_card_domain::{CampusError, OWNER, txns};
use scenefin_core::approvals::Proposal;
use scenefin_core::clock::Timestamp;
use scenefin_core::json::DEFAULT_LIMIT_BYTES;
use scenefin_guest::orders as flow;
use scenefin_guest::{
    Head, OrProblem, Request, Response, Role, Route, SpinStore, approvals, bank_card_bins, body, decode,
    has_operator_credentials, idempotent, json, json_response, lifecycle_rules, problem, request_time,
    require_customer, require_partner, require_role, split, store,
};
use serde_json::{Value, json};

use crate::dto::{
    BindBody, LimitsBody, MembersBody, MerchantBody, MerchantView, SchoolBody, SchoolView, SpendBody, SpendView,
    TopupBody,
};

type Handled = Result<Response, Response>;

/// Member uploads are larger than ordinary JSON (up to 1,000 members).
const UPLOAD_LIMIT_BYTES: usize = 512 * 1024;

/// The school itself (signed), or an operator who may read its numbers.
async fn school_or_operator(head: &Head, store: &SpinStore, school_id: &str, bytes: &[u8], now: Timestamp) -> Handled {
    if has_operator_credentials(head) {
        require_role(head, Role::Viewer).await?;
        return Ok(json_response(200, &()));
    }
    let partner = require_partner(head, store, OWNER, bytes, now).await?;
    schools::require_school(&partner, school_id).or_problem()?;
    Ok(json_response(200, &()))
}

/// The school a signed request comes from, which must be `school_id`.
async fn signed_school(
    head: &Head,
    store: &SpinStore,
    school_id: &str,
    bytes: &[u8],
    now: Timestamp,
) -> Result<School, Response> {
    let partner = require_partner(head, store, OWNER, bytes, now).await?;
    schools::require_school(&partner, school_id).or_problem()?;
    schools::get(store, school_id).await.or_problem()
}

/// The merchant a signed POS request comes from.
async fn signed_merchant(head: &Head, store: &SpinStore, bytes: &[u8], now: Timestamp) -> Result<Merchant, Response> {
    let partner = require_partner(head, store, OWNER, bytes, now).await?;
    schools::merchant_of(store, &partner).await.or_problem()
}

/// `POST /api/campus/schools` (partner admin): checked, then proposed by staff or registered at once (break-glass);
/// see [`execute`].
pub async fn register_school(req: Request) -> Handled {
    approvals::register_partner(
        req,
        OWNER,
        async |store, input: SchoolBody| {
            let new = input.into();
            schools::check_new(store, &new).await.or_problem()?;
            Ok(new.id)
        },
        execute,
    )
    .await
}

/// Carries out an approved proposal of this component (or a break-glass request): a refund, a school's
/// registration, a partner secret rotation.
pub async fn execute(store: &SpinStore, proposal: &Proposal, now: Timestamp) -> Result<Value, Response> {
    approvals::run_scenario(
        store,
        OWNER,
        proposal,
        now,
        async |store, id, by, request, rules, now| topups::refund(store, id, by, request, rules, now).await,
        "school",
        async |store, input: SchoolBody, creds, at| schools::register_with(store, input.into(), creds, at).await,
        |school| json!(SchoolView::from(school)),
    )
    .await
}

pub async fn school_stats(req: Request, school_id: &str) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    school_or_operator(&head, &store, school_id, &bytes, now).await?;
    let school = schools::get(&store, school_id).await.or_problem()?;
    Ok(json_response(200, &schools::stats(&store, &school).await.or_problem()?))
}

pub async fn add_merchant(req: Request, school_id: &str) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let school = signed_school(&head, &store, school_id, &bytes, now).await?;
    let input: MerchantBody = json(&bytes, DEFAULT_LIMIT_BYTES).or_problem()?;
    let (merchant, creds) =
        schools::add_merchant(&store, &school, &input.merchant_id, &input.name, input.kind, now).await.or_problem()?;
    Ok(json_response(
        201,
        &json!({ "merchant": MerchantView::from(&merchant), "partner_id": creds.partner_id, "partner_secret": creds.partner_secret }),
    ))
}

pub async fn upload_members(req: Request, school_id: &str) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, UPLOAD_LIMIT_BYTES).await?;
    let school = signed_school(&head, &store, school_id, &bytes, now).await?;
    let input: MembersBody = json(&bytes, UPLOAD_LIMIT_BYTES).or_problem()?;
    Ok(json_response(200, &cards::issue(&store, &school, &input.members, now).await.or_problem()?))
}

/// `freeze` or `unfreeze` by the school, on one of its cards.
pub async fn school_card_action(req: Request, school_id: &str, card_id: &str, freeze: bool) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let school = signed_school(&head, &store, school_id, &bytes, now).await?;
    let card = cards::get(&store, card_id).await.or_problem()?;
    if card.school_id != school.id {
        return Err(problem(&CampusError::CardNotFound));
    }
    let card = if freeze {
        cards::freeze(&store, card_id, now).await
    } else {
        cards::unfreeze(&store, card_id, Actor::School, now).await
    }
    .or_problem()?;
    card_response(&store, 200, &card, now).await
}

async fn card_response(store: &SpinStore, status: u16, card: &Card, now: Timestamp) -> Handled {
    Ok(json_response(status, &cards::view(store, card, now).await.or_problem()?))
}

pub async fn bind(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    let input: BindBody = decode(req).await?;
    let store = store()?;
    let rules = lifecycle_rules().await;
    let (card, bound_now) =
        cards::bind(&store, &customer, &input.school_id, &input.member_no, &input.activation_code, &rules, now)
            .await
            .or_problem()?;
    card_response(&store, if bound_now { 201 } else { 200 }, &card, now).await
}

pub async fn my_cards(req: &Request) -> Handled {
    let now = request_time(req).await?;
    let customer = require_customer(req, now).await?;
    let store = store()?;
    let mut items = Vec::new();
    for card in cards::list(&store, &customer).await.or_problem()? {
        items.push(cards::view(&store, &card, now).await.or_problem()?);
    }
    Ok(json_response(200, &json!({ "items": items, "next": null })))
}

pub async fn set_limits(req: Request, card_id: &str) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    let input: LimitsBody = decode(req).await?;
    let store = store()?;
    let card = cards::set_daily_limit(&store, &customer, card_id, input.daily_limit_fen).await.or_problem()?;
    card_response(&store, 200, &card, now).await
}

/// `report-lost`, `unfreeze` and `pay-code`, `reissue`: the holder's actions on their card.
pub async fn holder_action(req: Request, card_id: &str, action: &str) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    // These take no body; a small one (e.g. `{}`) is accepted and ignored.
    body(req, 1024).await.or_problem()?;
    let store = store()?;
    match action {
        "report-lost" => {
            let card = cards::report_lost(&store, &customer, card_id, now).await.or_problem()?;
            card_response(&store, 200, &card, now).await
        }
        "unfreeze" => {
            cards::owned(&store, &customer, card_id).await.or_problem()?;
            let card = cards::unfreeze(&store, card_id, Actor::Holder, now).await.or_problem()?;
            card_response(&store, 200, &card, now).await
        }
        "reissue" => {
            let done = cards::reissue(&store, &customer, card_id, now).await.or_problem()?;
            let view = cards::view(&store, &done.card, now).await.or_problem()?;
            Ok(json_response(
                201,
                &json!({ "card": view, "replaced_card_id": done.replaced_card_id, "moved_fen": done.moved_fen }),
            ))
        }
        _ => {
            let (code, doc) = spend::pay_code(&store, &customer, card_id, now).await.or_problem()?;
            Ok(json_response(201, &json!({ "pay_code": code, "card_id": doc.card_id, "expires_at": doc.expires_at })))
        }
    }
}

pub async fn transactions(req: &Request, route: &Route, card_id: &str) -> Handled {
    let now = request_time(req).await?;
    let customer = require_customer(req, now).await?;
    let store = store()?;
    let limit = route.limit(20, txns::MAX_PAGE).or_problem()?;
    cards::owned(&store, &customer, card_id).await.or_problem()?;
    let cursor = route.query_param("cursor");
    let (items, next) = txns::list(&store, card_id, cursor.as_deref(), limit).await.or_problem()?;
    Ok(json_response(200, &json!({ "items": items, "next": next })))
}

pub async fn topup(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    let store = store()?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let bins = bank_card_bins().await;
    idempotent(&store, &head, OWNER, &customer, &bytes, now, async || {
        let input: TopupBody = match json(&bytes, DEFAULT_LIMIT_BYTES) {
            Ok(input) => input,
            Err(e) => return problem(&e),
        };
        let request = TopupRequest {
            card_id: input.card_id,
            amount_fen: input.amount_fen,
            pay_with: input.pay_with,
            card_bin: input.card_bin,
        };
        match topups::create(&store, &customer, &request, &bins, now).await {
            Ok(order) => flow::placed_response(&order),
            Err(e) => problem(&e),
        }
    })
    .await
}

pub async fn orders(req: &Request, route: &Route) -> Handled {
    flow::list(req, route, OWNER).await
}

pub async fn order(req: &Request, id: &str) -> Handled {
    flow::get(req, OWNER, id).await
}

/// `POST /api/campus/orders/{id}/refund`: the operator or the card's school refunds a top-up to the instrument that
/// paid it, while the card still holds it (`422 insufficient_funds` otherwise).
pub async fn refund(req: Request, id: &str) -> Handled {
    flow::refund(req, OWNER, id, topups::school_of, async |store, id, by, request, rules, now| {
        topups::refund(store, id, by, request, rules, now).await
    })
    .await
}

pub async fn notify(req: Request) -> Handled {
    flow::notify(req, async |store, event, bins, rules, now| topups::notify(store, event, bins, rules, now).await).await
}

pub async fn spend(req: Request) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let merchant = signed_merchant(&head, &store, &bytes, now).await?;
    let input: SpendBody = json(&bytes, DEFAULT_LIMIT_BYTES).or_problem()?;
    let input = SpendInput {
        pos_txn_id: input.pos_txn_id,
        card_id: input.card_id,
        pay_code: input.pay_code,
        amount_fen: input.amount_fen,
    };
    let rules = lifecycle_rules().await;
    let done = spend::spend(&store, &merchant, &input, &rules, now).await.or_problem()?;
    let balance = cards::balance_fen(&store, &done.card_id).await.or_problem()?;
    Ok(json_response(201, &SpendView::of(&done, Some(balance))))
}

pub async fn reverse(req: Request, spend_id: &str) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let merchant = signed_merchant(&head, &store, &bytes, now).await?;
    let done = spend::reverse(&store, &merchant, spend_id, now).await.or_problem()?;
    Ok(json_response(200, &SpendView::of(&done, None)))
}

pub async fn settlement(req: Request, route: &Route, merchant_id: &str) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let merchant = if has_operator_credentials(&head) {
        require_role(&head, Role::Finance).await?;
        schools::merchant(&store, merchant_id).await.or_problem()?
    } else {
        let partner = require_partner(&head, &store, OWNER, &bytes, now).await?;
        let merchant = schools::merchant(&store, merchant_id).await.or_problem()?;
        let own_merchant = partner.kind == schools::MERCHANT_PARTNER && partner.resource_id == merchant.id;
        if !own_merchant {
            schools::require_school(&partner, &merchant.school_id).or_problem()?;
        }
        merchant
    };
    let date = route.query_param("date").unwrap_or_else(|| scenefin_core::clock::iso_day(now.shanghai_day()));
    Ok(json_response(200, &spend::statement(&store, &merchant, &date).await.or_problem()?))
}

/// `GET /api/campus/schools`: the schools a customer can bind a card of, in the order registered (public: id,
/// name and city only).
pub async fn list_schools() -> Handled {
    let all = schools::all(&store()?).await.or_problem()?;
    Ok(scenefin_guest::directory(all.iter().map(|s| (s.id.as_str(), s.name.as_str(), s.city.as_deref()))))
}
