//! A customer's rights over their personal information (export, erasure, marketing consent) and staff's logged
//! unmasking (customers_domain::privacy).

use customers_domain::privacy;
use customers_domain::sessions;
use scenefin_guest::{
    OrProblem, Request, Response, Role, decode, header, json_response, lifecycle_rules, pii_keys, request_time,
    require_role, required_variable, store,
};
use serde_json::json;

use crate::dto::{ConsentBody, ErasureBody, MeView, UnmaskBody};

type Handled = Result<Response, Response>;

/// The signed-in customer's profile (an erased one is refused: `401 customer_erased`).
async fn me(req: &Request) -> Result<scenefin_core::customers::Customer, Response> {
    let now = request_time(req).await?;
    let session_secret = required_variable("session_secret").await.or_problem()?;
    sessions::authenticate(&store()?, session_secret.as_bytes(), header(req, "authorization"), now).await.or_problem()
}

/// `GET /api/me/export`: everything the bank holds in the customer's profile, the phone number in the clear, and
/// every time staff unmasked it.
pub async fn export(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let customer = me(&req).await?;
    let export = privacy::export(&store()?, &pii_keys().await?, &customer, now).await.or_problem()?;
    let mut response = json_response(200, &export);
    let disposition = format!("attachment; filename=\"scenefin-{}.json\"", customer.id);
    if let Ok(value) = http::HeaderValue::from_str(&disposition) {
        response.headers_mut().insert(http::header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `POST /api/me/erasure` `{confirm: "erase my personal information"}`: pseudonymises the profile; the session
/// ends with it.
pub async fn erase(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let customer = me(&req).await?;
    let ErasureBody { confirm: crate::dto::ErasureConfirm::Erase } = decode(req).await?;
    let erasure = privacy::erase(&store()?, &customer.id, now).await.or_problem()?;
    Ok(json_response(200, &erasure))
}

/// `PUT /api/me/consent` `{marketing}`: grants or withdraws marketing consent.
pub async fn consent(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let customer = me(&req).await?;
    let input: ConsentBody = decode(req).await?;
    let customer = privacy::set_consent(&store()?, &customer.id, input.marketing, now).await.or_problem()?;
    Ok(json_response(200, &MeView::new(&customer, now, &lifecycle_rules().await)))
}

/// `POST /api/ops/customers/{id}/unmask` `{field: "phone", reason}` (finance): the phone number, for a logged reason.
pub async fn unmask(req: Request, id: &str) -> Handled {
    let actor = require_role(&req, Role::Finance).await?;
    let now = request_time(&req).await?;
    let input: UnmaskBody = decode(req).await?;
    let crate::dto::UnmaskField::Phone = input.field;
    let phone =
        privacy::unmask(&store()?, &pii_keys().await?, id, actor.id(), &input.reason, now).await.or_problem()?;
    let reason = input.reason.trim();
    let answer = json_response(
        200,
        &json!({ "customer_id": id, "field": "phone", "value": phone, "reason": reason, "logged_at": now }),
    );
    Ok(scenefin_guest::audit::summarize(answer, format!("customer {id} phone unmasked: {reason}")))
}
