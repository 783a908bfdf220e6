//! HTTP handlers of the shared payment flow (`scenefin_core::orders`), parameterised by each scenario's domain
//! functions: placing an order (idempotent), the customer's orders and receipts, gateway notifications, refunds.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::LifecycleRules;
use scenefin_core::json::DEFAULT_LIMIT_BYTES;
use scenefin_core::orders::{
    self, GatewayEvent, Order, OrderError, OrderState, PartialRefund, PayWith, PaymentException, QuoteLine,
    RefundConfirmation, RefundRequest, StateChange,
};
use scenefin_core::problem::Problem;
use serde::{Deserialize, Serialize};
use serde_json::json;

use scenefin_core::approvals::{self, Proposal};
use scenefin_core::staff::Actor;

use crate::{
    Caller, OrProblem, Request, Response, Role, Route, SpinStore, bank_card_bins, idempotent, json, json_response,
    lifecycle_rules, problem, request_time, require_customer, require_operator_or_partner, split, variable,
    verify_gateway,
};

/// Refunds above this many fen, asked for by a staff member, need a second staff member's approval (variable
/// `refund_approval_threshold_fen`, default ¥1,000).
const DEFAULT_REFUND_APPROVAL_THRESHOLD_FEN: i64 = 100_000;

type Handled = Result<Response, Response>;

/// A quote or order line on the wire.
#[derive(Serialize)]
pub struct LineView<'a> {
    /// Kind.
    pub kind: &'a str,
    /// Description.
    pub description: &'a str,
    /// Amount (negative for discounts).
    pub amount_fen: i64,
}

/// Lines on the wire.
pub fn lines(lines: &[QuoteLine]) -> Vec<LineView<'_>> {
    lines.iter().map(|l| LineView { kind: &l.kind, description: &l.description, amount_fen: l.amount_fen }).collect()
}

/// A quote on the wire.
pub fn quote_response(q: &orders::Quote) -> Response {
    json_response(
        201,
        &json!({
            "quote_id": q.id,
            "lines": lines(&q.lines),
            "total_fen": q.total_fen,
            "pay_with": q.pay_with,
            "expires_at": q.expires_at,
        }),
    )
}

/// An order (a receipt once paid) on the wire.
#[derive(Serialize)]
pub struct OrderView<'a> {
    /// Id.
    pub order_id: &'a str,
    /// State.
    pub state: OrderState,
    /// Lines.
    pub lines: Vec<LineView<'a>>,
    /// What the customer pays.
    pub total_fen: i64,
    /// What the order pays for (scenario details: biller and account, community and room...).
    pub details: &'a serde_json::Value,
    /// Created.
    pub created_at: Timestamp,
    /// Payment deadline.
    pub expires_at: Timestamp,
    /// Paid.
    pub paid_at: Option<Timestamp>,
    /// Paid with the bank's card.
    pub paid_with_bank_card: Option<bool>,
    /// The gateway's event id.
    pub receipt_no: Option<&'a str>,
    /// State history.
    pub history: &'a [StateChange],
    /// Money that arrived but could not pay this order (paid twice, paid after it closed), each with its refund
    /// instruction.
    pub refunds_due: &'a [PaymentException],
    /// Partial refunds so far (a refund of the rest makes the order `refunded`).
    pub partial_refunds: &'a [PartialRefund],
    /// Given back to the customer so far.
    pub refunded_fen: i64,
}

impl<'a> From<&'a Order> for OrderView<'a> {
    fn from(o: &'a Order) -> Self {
        OrderView {
            order_id: &o.id,
            state: o.state,
            lines: lines(&o.lines),
            total_fen: o.total_fen,
            details: &o.payload,
            created_at: o.created_at,
            expires_at: o.expires_at,
            paid_at: o.payment.as_ref().map(|p| p.paid_at),
            paid_with_bank_card: o.payment.as_ref().map(|p| p.bank_card),
            receipt_no: o.payment.as_ref().map(|p| p.event_id.as_str()),
            history: &o.history,
            refunds_due: &o.exceptions,
            partial_refunds: &o.partial_refunds,
            refunded_fen: match o.state {
                OrderState::Refunded => o.total_fen,
                _ => o.partially_refunded_fen(),
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderBody {
    quote_id: String,
}

/// `POST …/orders {quote_id}` with `Idempotency-Key`: the order and what the payment SDK needs.
pub async fn place<E: Problem>(
    req: Request,
    owner: &str,
    place: impl AsyncFnOnce(&SpinStore, &str, &str, Timestamp) -> Result<Order, E>,
) -> Handled {
    let now = request_time(&req).await?;
    let customer = require_customer(&req, now).await?;
    let store = SpinStore::open_default().or_problem()?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    idempotent(&store, &head, owner, &customer, &bytes, now, async || {
        let input: OrderBody = match json(&bytes, DEFAULT_LIMIT_BYTES) {
            Ok(input) => input,
            Err(e) => return problem(&e),
        };
        match place(&store, &customer, &input.quote_id, now).await {
            Ok(order) => placed_response(&order),
            Err(e) => problem(&e),
        }
    })
    .await
}

/// `201` with a placed order and the parameters the front end hands to the payment SDK.
pub fn placed_response(order: &Order) -> Response {
    let bank_card_only = order.pay_with == PayWith::BankCard && order.funded_fen() > 0;
    json_response(
        201,
        &json!({
            "order": OrderView::from(order),
            "payment": {
                "order_id": order.id,
                "amount_fen": order.total_fen,
                "currency": "CNY",
                "description": order.lines.first().map(|l| l.description.clone()).unwrap_or_default(),
                "expires_at": order.expires_at,
                "bank_card_only": bank_card_only,
            }
        }),
    )
}

/// `GET …/orders?cursor=&limit=`: the customer's orders, newest first.
pub async fn list(req: &Request, route: &Route, owner: &str) -> Handled {
    let now = request_time(req).await?;
    let customer = require_customer(req, now).await?;
    let limit = route.limit(20, 100).or_problem()?;
    let cursor = route.query_param("cursor");
    let store = SpinStore::open_default().or_problem()?;
    let (items, next) =
        orders::list_orders(&store, owner, &customer, cursor.as_deref(), limit, now).await.or_problem()?;
    let views: Vec<OrderView> = items.iter().map(OrderView::from).collect();
    Ok(json_response(200, &json!({ "items": views, "next": next })))
}

/// `GET …/orders/{id}`: one of the customer's own orders (someone else's is 404).
pub async fn get(req: &Request, owner: &str, id: &str) -> Handled {
    let now = request_time(req).await?;
    let customer = require_customer(req, now).await?;
    let store = SpinStore::open_default().or_problem()?;
    let order = orders::get_order(&store, owner, id, now).await.or_problem()?;
    if order.customer_id != customer {
        return Err(problem(&OrderError::OrderNotFound));
    }
    Ok(json_response(200, &OrderView::from(&order)))
}

/// `POST …/payments/notify`: a verified gateway notification, applied by the scenario.
pub async fn notify<E: Problem>(
    req: Request,
    apply: impl AsyncFnOnce(&SpinStore, &GatewayEvent, &[String], &LifecycleRules, Timestamp) -> Result<Order, E>,
) -> Handled {
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, 16 * 1024).await?;
    verify_gateway(&head, &bytes, now).await?;
    let event: GatewayEvent = json(&bytes, 16 * 1024).or_problem()?;
    let store = SpinStore::open_default().or_problem()?;
    let order = apply(&store, &event, &bank_card_bins().await, &lifecycle_rules().await, now).await.or_problem()?;
    let fulfilled = order.state != OrderState::Paid || order.fulfilled;
    // Money this notification brought that could not pay the order: the gateway is told to return it.
    let refund = order.exceptions.iter().find(|e| e.event_id == event.event_id);
    Ok(json_response(
        200,
        &json!({ "order_id": order.id, "state": order.state, "fulfilled": fulfilled, "refund_instruction": refund }),
    ))
}

/// `POST …/orders/{id}/refund` with `Idempotency-Key`, by the operator or the order's partner (`resource_of`).
/// The caller is authenticated before the order is read, so a caller without valid credentials learns nothing
/// about which orders exist. A staff member asking for more than `refund_approval_threshold_fen` only proposes it:
/// `202` with the pending approval, carried out once another finance staff member approves it ([`execute_refund`]).
pub async fn refund<E: Problem>(
    req: Request,
    owner: &str,
    id: &str,
    resource_of: fn(&Order) -> Option<String>,
    refund: impl AsyncFnOnce(&SpinStore, &str, &str, &RefundRequest, &LifecycleRules, Timestamp) -> Result<Order, E>,
) -> Handled {
    let now = request_time(&req).await?;
    let store = SpinStore::open_default().or_problem()?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let caller = require_operator_or_partner(&head, &store, owner, Role::Finance, &bytes, now).await?;
    let key = head.headers().get("idempotency-key").and_then(|v| v.to_str().ok());
    let key = scenefin_core::idempotency::valid_key(key).or_problem()?;
    let order = orders::get_order(&store, owner, id, now).await.or_problem()?;
    caller.require(&resource_of(&order).unwrap_or_default())?;
    let by = caller.id().to_owned();
    let rules = lifecycle_rules().await;
    // Staff need a checker above the threshold; partners refund their own orders, break-glass is logged instead.
    let needs_checker = matches!(caller, Caller::Operator(Actor::Staff(_)));
    let threshold = refund_approval_threshold().await;
    // The request's id for a partial refund: its caller and idempotency key.
    let request_id = scenefin_core::ids::hash_key_part(&format!("{by}:{key}"))[..16].to_owned();
    let before = format!("order {} {:?}, {} fen refunded", order.id, order.state, order.partially_refunded_fen());
    let answered = idempotent(&store, &head, owner, &by, &bytes, now, async || {
        let amount_fen = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            match json::<RefundBody>(&bytes, DEFAULT_LIMIT_BYTES) {
                Ok(body) => body.amount_fen,
                Err(e) => return problem(&e),
            }
        };
        let value_fen = amount_fen.unwrap_or(order.total_fen - order.partially_refunded_fen());
        if needs_checker && order.state == OrderState::Paid && value_fen > threshold {
            let mut proposal = Proposal::new(
                format!("apr_{request_id}"),
                "refund",
                Role::Finance.as_str(),
                order.id.clone(),
                serde_json::Value::Null,
                value_fen,
                &by,
                now,
            );
            proposal.amount_fen = amount_fen;
            return match approvals::propose(&store, owner, proposal).await {
                Ok(p) => json_response(202, &json!({ "approval": p.public(), "threshold_fen": threshold })),
                Err(e) => problem(&e),
            };
        }
        let request = RefundRequest { id: request_id.clone(), amount_fen };
        match refund(&store, id, &by, &request, &rules, now).await {
            Ok(order) => json_response(200, &OrderView::from(&order)),
            Err(e) => problem(&e),
        }
    })
    .await?;
    let after = match answered.status().as_u16() {
        200 => match orders::get_order(&store, owner, id, now).await {
            Ok(o) => format!("{:?}, {} fen refunded", o.state, o.partially_refunded_fen()),
            Err(_) => "refunded".into(),
        },
        202 => "a refund proposal pending a checker".into(),
        status => format!("unchanged ({status})"),
    };
    Ok(crate::audit::summarize(answered, format!("{before} → {after}")))
}

/// The refund above which a staff member's refund needs a second staff member (variable
/// `refund_approval_threshold_fen`).
async fn refund_approval_threshold() -> i64 {
    variable("refund_approval_threshold_fen")
        .await
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|v| *v >= 0)
        .unwrap_or(DEFAULT_REFUND_APPROVAL_THRESHOLD_FEN)
}

/// Carries out an approved refund proposal (see `crate::approvals::approve`): the refund under the proposal's id,
/// so a run repeated after a crash completes the same refund; its answer is the order.
pub async fn execute_refund<E: Problem>(
    store: &SpinStore,
    proposal: &Proposal,
    now: Timestamp,
    refund: impl AsyncFnOnce(&SpinStore, &str, &str, &RefundRequest, &LifecycleRules, Timestamp) -> Result<Order, E>,
) -> Result<serde_json::Value, Response> {
    let request = RefundRequest { id: proposal.id.clone(), amount_fen: proposal.amount_fen };
    let by = format!("{}+{}", proposal.maker, proposal.checker.as_deref().unwrap_or_default());
    let order = refund(store, &proposal.resource, &by, &request, &lifecycle_rules().await, now).await.or_problem()?;
    Ok(json!(OrderView::from(&order)))
}

/// `POST …/payments/refund-notify`: the gateway (Standard Webhooks) confirms it returned the money of a payment
/// exception; the refund instruction becomes `refunded`, the money leaves suspense, and the order's partner
/// (`resource_of`) reads a `payment.returned` event (a bill or fee paid twice: the second payment went back), once:
/// the gateway's retried confirmation repeats every step, each idempotent.
pub async fn refund_notify(req: Request, owner: &str, resource_of: fn(&Order) -> Option<String>) -> Handled {
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, 16 * 1024).await?;
    verify_gateway(&head, &bytes, now).await?;
    let confirmation: RefundConfirmation = json(&bytes, 16 * 1024).or_problem()?;
    let store = SpinStore::open_default().or_problem()?;
    let order = orders::confirm_refund(&store, owner, &confirmation, now).await.or_problem()?;
    let exception = order.exceptions.iter().find(|e| e.event_id == confirmation.event_id);
    if let (Some(e), Some(resource)) = (exception, resource_of(&order)) {
        let returned_at = e.refunded_at.unwrap_or(now);
        let cause = format!("{}:{}", order.id, scenefin_core::ids::hash_key_part(&e.event_id));
        let data = json!({
            "order_id": order.id, "payment_event_id": e.event_id, "reason": e.reason, "amount_fen": e.amount_fen,
            "paid_at": e.paid_at, "returned_at": returned_at, "order_state": order.state,
        });
        let event = scenefin_core::feed::FeedEvent::new("payment.returned", &cause, returned_at, data);
        scenefin_core::feed::append(&store, &scenefin_core::feed::key(owner, &resource), &event).await.or_problem()?;
    }
    Ok(json_response(200, &json!({ "order_id": order.id, "refund_instruction": exception })))
}

/// `POST …/orders/{id}/refund` body: nothing (refund all that is left), or part of it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    /// Fen to give back, at most what is left; absent: all that is left.
    amount_fen: Option<i64>,
}
