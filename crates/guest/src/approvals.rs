//! Maker-checker over HTTP (`scenefin_core::approvals`), one path for every risky operator action: a staff member
//! asking for one only proposes it (`202 {approval}`); a different staff member holding the proposal's role
//! approves it through `POST /api/{scope}/approvals/{id}/approve`, which carries it out exactly once and answers
//! `{approval, result}` (the action's own answer, credentials included, replayed to the checker's retries); the
//! break-glass token runs the action at once. Each component passes the function that carries out its actions
//! ([`Run`]); the same function serves the direct run and the approved one.
//!
//! Routes served here for each component: `GET …/approvals?state=pending` and `GET …/approvals/{id}` (any staff),
//! `POST …/approvals/{id}/approve` and `…/reject` (the proposal's role), and the refund-only forms
//! `…/refund-approvals/{id}…` ([`REFUNDS`]).

use scenefin_core::approvals::{self, ApprovalError, Decision, Proposal, ProposalState};
use scenefin_core::clock::Timestamp;
use scenefin_core::json::DEFAULT_LIMIT_BYTES;
use scenefin_core::kv::Store as _;
use scenefin_core::partners::Credentials;
use scenefin_core::problem::ApiError;
use serde_json::{Value, json};

use crate::audit::summarize;
use crate::{
    Actor, Head, OrProblem, Request, Response, Role, Route, SpinStore, body, header, json, json_response, problem,
    request_time, require_role, require_staff, split, store,
};

type Handled = Result<Response, Response>;

/// How many times a checker's approval waits for a concurrent run of the same action (about 64 ms each) before
/// answering `409 proposal_in_progress`.
const WAIT_ROUNDS: u32 = 150;

/// A validated risky action, ready to be proposed or run.
pub struct Action {
    /// What it is: `increase_stock`, `register_partner`, `rotate_secret`, `bulk_tags` (`refund` has its own path).
    pub name: &'static str,
    /// The role that may ask for it and approve it.
    pub role: Role,
    /// The resource it acts on (a campaign, a partner, a biller id...).
    pub resource: String,
    /// The validated request, as the action runs it.
    pub payload: Value,
    /// Credentials it installs, minted now so that every run installs the same ones.
    pub credentials: Option<Credentials>,
}

/// What carries out a component's approved (or break-glass) actions: the store, the proposal (its `action`,
/// `resource`, `payload`, `credentials`, `decided_at`), the time; the action's answer, or its problem.
pub trait Run: AsyncFn(&SpinStore, &Proposal, Timestamp) -> Result<Value, Response> {}
impl<F: AsyncFn(&SpinStore, &Proposal, Timestamp) -> Result<Value, Response>> Run for F {}

/// Which proposals a route serves: [`REFUNDS`] for the `…/refund-approvals/…` routes (finance, checked before
/// anything is read; the result named `order`), `None` for the generic `…/approvals/…` routes.
pub struct Scope {
    role: Role,
    action: &'static str,
    field: &'static str,
}

/// The refund-only routes.
pub const REFUNDS: Scope = Scope { role: Role::Finance, action: "refund", field: "order" };

/// The scope of an approvals path segment: [`REFUNDS`] for `refund-approvals`, every proposal for `approvals`.
pub fn scope(kind: &str) -> Option<&'static Scope> {
    (kind == "refund-approvals").then_some(&REFUNDS)
}

/// A staff member's request for `action` (when `needs_checker`) becomes a pending proposal: `202 {approval}`. The
/// break-glass token, or an action that needs no checker, runs at once: `status` with the action's answer. A
/// request with an `Idempotency-Key` proposes once (its retry answers the same proposal).
#[allow(clippy::too_many_arguments)]
pub async fn propose_or_run(
    head: &Head,
    actor: &Actor,
    owner: &str,
    action: Action,
    needs_checker: bool,
    status: u16,
    now: Timestamp,
    run: impl Run,
) -> Handled {
    let store = store()?;
    let id = proposal_id(head, actor.id(), &action, now)?;
    let mut proposal =
        Proposal::new(id, action.name, action.role.as_str(), action.resource, action.payload, 0, actor.id(), now);
    proposal.credentials = action.credentials;
    if needs_checker && matches!(actor, Actor::Staff(_)) {
        let proposal = approvals::propose(&store, owner, proposal).await.or_problem()?;
        let answer = json_response(202, &json!({ "approval": proposal.public() }));
        return Ok(summarize(answer, format!("{}: → pending {}", what(&proposal), proposal.id)));
    }
    proposal.state = ProposalState::Approved;
    proposal.checker = Some(actor.id().to_owned());
    proposal.decided_at = Some(now);
    let answer = json_response(status, &run(&store, &proposal, now).await?);
    Ok(summarize(answer, format!("{}: → done at once (no checker needed)", what(&proposal))))
}

/// `POST` of a partner registration (a biller, community, school or merchant; partner admin): the body decoded as
/// `T` and checked by `check` (which names the new resource; nothing is written), then proposed by staff, or run
/// at once for the break-glass token (`201`). The partner's credentials are minted now and installed by `run`.
pub async fn register_partner<T: serde::de::DeserializeOwned>(
    req: Request,
    owner: &str,
    check: impl AsyncFnOnce(&SpinStore, T) -> Result<String, Response>,
    run: impl Run,
) -> Handled {
    let actor = require_role(&req, Role::PartnerAdmin).await?;
    let now = request_time(&req).await?;
    let (head, bytes) = split(req, DEFAULT_LIMIT_BYTES).await?;
    let input: T = json(&bytes, DEFAULT_LIMIT_BYTES).or_problem()?;
    let payload: Value = json(&bytes, DEFAULT_LIMIT_BYTES).or_problem()?;
    let resource = check(&store()?, input).await?;
    let credentials = Some(scenefin_core::partners::new_credentials(now).or_problem()?);
    let action = Action { name: "register_partner", role: Role::PartnerAdmin, resource, payload, credentials };
    propose_or_run(&head, &actor, owner, action, true, 201, now, run).await
}

/// `apr_` and 16 hex digits: from the maker, the action and the request's `Idempotency-Key` when it has one (a
/// retry proposes nothing new), else random.
fn proposal_id(head: &Head, maker: &str, action: &Action, now: Timestamp) -> Result<String, Response> {
    let Some(key) = header(head, "idempotency-key") else {
        let random =
            scenefin_core::ids::random_bytes::<8>().map_err(|e| problem(&ApiError::internal(e.to_string())))?;
        return Ok(format!("apr_{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>()));
    };
    let key = scenefin_core::idempotency::valid_key(Some(key)).or_problem()?;
    let seed = format!("{maker}:{}:{}:{key}:{}:{}", action.name, action.resource, action.payload, now.shanghai_day());
    Ok(format!("apr_{}", &scenefin_core::ids::hash_key_part(&seed)[..16]))
}

/// `GET …/approvals?state=pending` (any staff): the component's proposals awaiting a checker, oldest first.
pub async fn list(req: &Request, route: &Route, owner: &str) -> Handled {
    require_staff(req).await?;
    let now = request_time(req).await?;
    if route.query_param("state").is_some_and(|s| s != "pending") {
        return Err(problem(&ApiError::validation("state", "state: only `pending` is listed")));
    }
    let items: Vec<Proposal> =
        approvals::pending(&store()?, owner, now).await.or_problem()?.iter().map(Proposal::public).collect();
    Ok(json_response(200, &json!({ "items": items, "next": null })))
}

/// `GET …/approvals/{id}` (any staff; finance for a refund route): the proposal as it stands.
pub async fn get(req: &Request, owner: &str, id: &str, scope: Option<&Scope>) -> Handled {
    authorize(req, scope).await?;
    let proposal = read(&store()?, owner, id, scope).await?;
    Ok(json_response(200, &json!({ "approval": proposal.public() })))
}

/// `POST …/approvals/{id}/reject` (the proposal's role; its maker may withdraw it): it is not carried out.
pub async fn reject(req: Request, owner: &str, id: &str, scope: Option<&Scope>) -> Handled {
    let (store, actor, now, proposal) = checker(req, owner, id, scope).await?;
    let proposal =
        approvals::decide(&store, owner, &proposal.id, actor.id(), now, Decision::Reject).await.or_problem()?;
    let answer = json_response(200, &json!({ "approval": proposal.public() }));
    Ok(summarize(answer, format!("{} ({}): pending → rejected", what(&proposal), proposal.id)))
}

/// `POST …/approvals/{id}/approve` (the proposal's role, not its maker): approves the proposal and carries it out
/// exactly once with `run`. Of concurrent approvals by the checker one runs it and the others wait for its answer;
/// the checker's retries replay it.
pub async fn approve(req: Request, owner: &str, id: &str, scope: Option<&Scope>, run: impl Run) -> Handled {
    let (store, actor, now, proposal) = checker(req, owner, id, scope).await?;
    let field = scope.map_or("result", |s| s.field);
    let id = proposal.id;
    approvals::decide(&store, owner, &id, actor.id(), now, Decision::Approve).await.or_problem()?;
    for round in 0..=WAIT_ROUNDS {
        let (won, proposal) = approvals::start_run(&store, owner, &id, now).await.or_problem()?;
        if won {
            let result = match run(&store, &proposal, now).await {
                Ok(result) => result,
                Err(refused) => {
                    approvals::end_run(&store, owner, &id).await.or_problem()?;
                    return Err(refused);
                }
            };
            let done = approvals::executed(&store, owner, &id, result).await.or_problem()?;
            return Ok(answer(&done, field, true));
        }
        if proposal.state == ProposalState::Executed {
            return Ok(answer(&proposal, field, false));
        }
        store.pause(round.min(7) + 1).await;
    }
    Err(problem(&ApprovalError::InProgress))
}

/// `{approval, <field>: result}`; `ran` when this request carried it out (else it answers what another did).
fn answer(proposal: &Proposal, field: &str, ran: bool) -> Response {
    let mut body = serde_json::Map::new();
    body.insert("approval".into(), json!(proposal.public()));
    body.insert(field.into(), proposal.result.clone());
    let change = if ran { "approved → executed" } else { "already executed, answer replayed" };
    let summary = format!("{} ({}, proposed by {}): {change}", what(proposal), proposal.id, proposal.maker);
    summarize(json_response(200, &body), summary)
}

/// What a proposal does, for the audit log: its action and resource (`refund o_123`).
fn what(proposal: &Proposal) -> String {
    format!("{} {}", proposal.action, proposal.resource)
}

/// The checker of a decision: authenticated (with the scope's role first, if any), the proposal read, and the
/// checker holding its role (`403 forbidden_role`).
async fn checker(
    req: Request,
    owner: &str,
    id: &str,
    scope: Option<&Scope>,
) -> Result<(SpinStore, Actor, Timestamp, Proposal), Response> {
    let now = request_time(&req).await?;
    let actor = authorize(&req, scope).await?;
    // Nothing to read in a body, but it is read all the same: Spin cuts an answer off while the body is unread.
    body(req, DEFAULT_LIMIT_BYTES).await.or_problem()?;
    let store = store()?;
    let proposal = read(&store, owner, id, scope).await?;
    let role = Role::ALL.into_iter().find(|r| r.as_str() == proposal.role).unwrap_or(Role::Admin);
    actor.require(role).or_problem()?;
    Ok((store, actor, now, proposal))
}

/// The operator, with the scope's role when it has one.
async fn authorize(req: &Request, scope: Option<&Scope>) -> Result<Actor, Response> {
    match scope {
        Some(scope) => require_role(req, scope.role).await,
        None => require_staff(req).await,
    }
}

/// Proposal `id` of `owner` (of the scope's action): `404 proposal_not_found` otherwise, and for an id that cannot
/// be one.
async fn read(store: &SpinStore, owner: &str, id: &str, scope: Option<&Scope>) -> Result<Proposal, Response> {
    if scenefin_core::ids::Id::parse(id).is_err() {
        return Err(problem(&ApprovalError::NotFound));
    }
    let proposal = approvals::get(store, owner, id).await.or_problem()?;
    match scope {
        Some(scope) if proposal.action != scope.action => Err(problem(&ApprovalError::NotFound)),
        _ => Ok(proposal),
    }
}

/// Carries out a partner registration proposal: its payload decoded as `T`, registered by `register` with the
/// proposal's credentials at the approval's time (idempotent); the answer is the new resource's `view` under
/// `name`, with the partner's id and secret (shown only to the checker).
pub async fn run_registration<T, R, E>(
    store: &SpinStore,
    proposal: &Proposal,
    now: Timestamp,
    name: &str,
    register: impl AsyncFnOnce(&SpinStore, T, Credentials, Timestamp) -> Result<(R, Credentials), E>,
    view: impl FnOnce(&R) -> Value,
) -> Result<Value, Response>
where
    T: serde::de::DeserializeOwned,
    E: scenefin_core::problem::Problem,
{
    let input: T = payload(proposal)?;
    let creds = credentials(proposal)?.clone();
    let (registered, creds) = register(store, input, creds, proposal.decided_at.unwrap_or(now)).await.or_problem()?;
    let mut answer = serde_json::Map::new();
    answer.insert(name.into(), view(&registered));
    answer.insert("partner_id".into(), json!(creds.partner_id));
    answer.insert("partner_secret".into(), json!(creds.partner_secret));
    Ok(Value::Object(answer))
}

/// Carries out a proposal of a payment scenario (utility, property, campus): a refund (`refund`, see
/// [`crate::orders::execute_refund`]), the registration of its partner resource (`name`, `register`, `view`, see
/// [`run_registration`]), a partner secret rotation.
#[allow(clippy::too_many_arguments)]
pub async fn run_scenario<T, R, E, F>(
    store: &SpinStore,
    owner: &str,
    proposal: &Proposal,
    now: Timestamp,
    refund: impl AsyncFnOnce(
        &SpinStore,
        &str,
        &str,
        &scenefin_core::orders::RefundRequest,
        &scenefin_core::customers::LifecycleRules,
        Timestamp,
    ) -> Result<scenefin_core::orders::Order, F>,
    name: &str,
    register: impl AsyncFnOnce(&SpinStore, T, Credentials, Timestamp) -> Result<(R, Credentials), E>,
    view: impl FnOnce(&R) -> Value,
) -> Result<Value, Response>
where
    T: serde::de::DeserializeOwned,
    E: scenefin_core::problem::Problem,
    F: scenefin_core::problem::Problem,
{
    match proposal.action.as_str() {
        "refund" => crate::orders::execute_refund(store, proposal, now, refund).await,
        "register_partner" => run_registration(store, proposal, now, name, register, view).await,
        "rotate_secret" => crate::partners::execute_rotation(store, owner, proposal, now).await,
        _ => Err(unknown(proposal)),
    }
}

/// The proposal's payload as the request type it was validated as (`500` if it no longer decodes: a stored
/// proposal is never edited).
pub fn payload<T: serde::de::DeserializeOwned>(proposal: &Proposal) -> Result<T, Response> {
    serde_json::from_value(proposal.payload.clone())
        .map_err(|e| problem(&ApiError::internal(format!("proposal {}: payload: {e}", proposal.id))))
}

/// The proposal's credentials (`500` if it has none: only actions that mint them read them).
pub fn credentials(proposal: &Proposal) -> Result<&Credentials, Response> {
    proposal
        .credentials
        .as_ref()
        .ok_or_else(|| problem(&ApiError::internal(format!("proposal {} carries no credentials", proposal.id))))
}

/// The answer to a proposal whose action the component does not carry out (never stored: a component proposes only
/// its own actions).
pub fn unknown(proposal: &Proposal) -> Response {
    problem(&ApiError::internal(format!("proposal {}: unknown action {}", proposal.id, proposal.action)))
}
