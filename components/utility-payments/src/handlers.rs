//! Handlers: authenticate, decode (size-limited), call one domain function, encode.

use scenefin_core::approvals::Proposal;
use scenefin_core::clock::Timestamp;
use scenefin_core::json::DEFAULT_LIMIT_BYTES;
use scenefin_guest::orders as flow;
use scenefin_guest::{
    OrProblem, Request, Response, Role, Route, SpinStore, approvals, bank_card_bins, body, json, json_response,
    lifecycle_rules, operator_or_partner, request_time, require_customer, require_partner, split, store,
};
use serde_json::{Value, json};
use utility_payments_domain::{OWNER, UtilityError, accounts, billers, bills, payments, pricing, reports};

use crate::dto::{BillView, BillerBody, BillerView, BillsBody, BindBody, QuoteBody};

type Handled = Result<Response, Response>;

/// Upload bodies are larger than ordinary JSON (up to 1,000 bills).
const UPLOAD_LIMIT_BYTES: usize = 512 * 1024;

/// `POST /api/utility/billers` (partner admin): checked, then proposed by staff or registered at once
/// (break-glass); see [`execute`].
pub async fn register_biller(req: Request) -> Handled {
    approvals::register_partner(
        req,
        OWNER,
        async |store, input: BillerBody| {
            let input = input.into();
            billers::check_new(store, &input).await.or_problem()?;
            Ok(input.id)
        },
        execute,
    )
    .await
}

/// Carries out an approved proposal of this component (or a break-glass request): a refund, a biller's
/// registration, a partner secret rotation.
pub async fn execute(store: &SpinStore, proposal: &Proposal, now: Timestamp) -> Result<Value, Response> {
    approvals::run_scenario(
        store,
        OWNER,
        proposal,
        now,
        async |store, id, by, request, rules, now| payments::refund(store, id, by, request, rules, now).await,
        "biller",
        async |store, input: BillerBody, creds, at| billers::register_with(store, input.into(), creds, at).await,
        |biller| json!(BillerView::from(biller)),
    )
    .await
}

pub async fn list_billers(route: &Route) -> Handled {
    let (category, city) = (route.query_param("category"), route.query_param("city"));
    let list = billers::list(&store()?, category.as_deref(), city.as_deref()).await.or_problem()?;
    let items: Vec<BillerView> = list.iter().map(BillerView::from).collect();
    Ok(json_response(200, &json!({ "items": items, "next": null })))
}

pub async fn upload_bills(req: Request, biller_id: &str) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, UPLOAD_LIMIT_BYTES).await?;
    let partner = require_partner(&head, &store, OWNER, &bytes, now).await?;
    partner.require(biller_id).or_problem()?;
    let input: BillsBody = json(&bytes, UPLOAD_LIMIT_BYTES).or_problem()?;
    let biller = billers::get(&store, biller_id).await.or_problem()?;
    let result = bills::upload(&store, &biller, &input.bills, now).await.or_problem()?;
    Ok(json_response(200, &result))
}

pub async fn settlement(req: Request, route: &Route, biller_id: &str) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    operator_or_partner(&req, &store, OWNER, Role::Finance, biller_id, b"", now).await?;
    let day = match route.query_param("date") {
        Some(date) => reports::parse_date(&date).or_problem()?,
        None => now.shanghai_day(),
    };
    Ok(json_response(200, &reports::settlement(&store, biller_id, day).await.or_problem()?))
}

pub async fn stats(req: Request, biller_id: &str) -> Handled {
    let store = store()?;
    let now = request_time(&req).await?;
    operator_or_partner(&req, &store, OWNER, Role::Viewer, biller_id, b"", now).await?;
    Ok(json_response(200, &reports::stats(&store, biller_id).await.or_problem()?))
}

pub async fn bind(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    let input: BindBody =
        json(&body(req, DEFAULT_LIMIT_BYTES).await.or_problem()?, DEFAULT_LIMIT_BYTES).or_problem()?;
    let rules = lifecycle_rules().await;
    let bound = accounts::bind(&store()?, &customer, &input.biller_id, &input.account_no, input.alias, &rules, now)
        .await
        .or_problem()?;
    Ok(json_response(201, &bound))
}

pub async fn accounts(req: &Request) -> Handled {
    let now = request_time(req).await?;
    let customer = require_customer(req, now).await?;
    let items = accounts::list(&store()?, &customer).await.or_problem()?;
    Ok(json_response(200, &json!({ "items": items, "next": null })))
}

pub async fn unbind(req: &Request, biller_id: &str, account_no: &str) -> Handled {
    let now = request_time(req).await?;
    let customer = require_customer(req, now).await?;
    accounts::unbind(&store()?, &customer, biller_id, account_no).await.or_problem()?;
    Ok(json_response(200, &json!({ "unbound": true })))
}

pub async fn bills(req: &Request, route: &Route) -> Handled {
    let now = request_time(req).await?;
    require_customer(req, now).await?;
    let biller_id =
        route.query_param("biller_id").ok_or(UtilityError::invalid("biller_id", "required")).or_problem()?;
    let account_no =
        route.query_param("account_no").ok_or(UtilityError::invalid("account_no", "required")).or_problem()?;
    let store = store()?;
    let biller = billers::get(&store, &biller_id).await.or_problem()?;
    let account = bills::account(&store, &biller, &account_no).await.or_problem()?;
    let open = bills::open_bills(&store, &biller, &account_no).await.or_problem()?;
    let items: Vec<BillView> = open.iter().map(BillView::from).collect();
    let due: i64 = open.iter().map(bills::Bill::due_fen).sum();
    Ok(json_response(
        200,
        &json!({
            "biller_id": biller.id,
            "account_no": account.account_no,
            "holder_masked": scenefin_core::customers::mask_name(&account.holder_name),
            "exactness": biller.exactness,
            "items": items,
            "outstanding_fen": due,
            "next": null,
        }),
    ))
}

pub async fn quote(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    let input: QuoteBody =
        json(&body(req, DEFAULT_LIMIT_BYTES).await.or_problem()?, DEFAULT_LIMIT_BYTES).or_problem()?;
    let store = store()?;
    let biller = billers::get(&store, &input.biller_id).await.or_problem()?;
    let request = pricing::QuoteRequest {
        biller_id: input.biller_id,
        account_no: input.account_no,
        bill_ids: input.bill_ids,
        amount_fen: input.amount_fen,
        pay_with: input.pay_with,
        card_bin: input.card_bin,
        coupon_id: input.coupon_id,
    };
    let quote = pricing::quote(&store, &customer, &biller, request, &bank_card_bins().await, now).await.or_problem()?;
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
    flow::refund(req, OWNER, id, payments::biller_of, async |store, id, by, request, rules, now| {
        payments::refund(store, id, by, request, rules, now).await
    })
    .await
}

pub async fn notify(req: Request) -> Handled {
    flow::notify(req, async |store, event, bins, rules, now| payments::notify(store, event, bins, rules, now).await)
        .await
}
