//! The demo's stand-ins for the bank's login gateway and the payment gateway, both off unless variable `demo_mode`
//! is `true`. They sign with the same secrets the real ones use, so every other component treats the demo exactly
//! like production traffic: the page logs in through `POST /api/sessions` and delivers the notification to the
//! scenario's `…/payments/notify` itself, as the gateway would.

use scenefin_core::ApiError;
use scenefin_core::auth::{IdentityAssertion, Provider, sign_assertion, sign_webhook};
use scenefin_core::ids::random_bytes;
use scenefin_core::problem::ErrorKind;
use scenefin_guest::{
    OrProblem, Request, Response, decode, json_response, problem, request_time, required_variable, variable,
};
use serde::Deserialize;
use serde_json::json;

type Handled = Result<Response, Response>;

/// Demo customers: persona → (subject, phone, card fingerprint).
const PERSONAS: &[(&str, &str, &str, &str)] = &[
    ("alice", "demo_alice", "13800000001", "demo_card_alice"),
    ("bob", "demo_bob", "13800000002", "demo_card_bob"),
    ("carol", "demo_carol", "13800000003", "demo_card_carol"),
    ("dave", "demo_dave", "13800000004", "demo_card_dave"),
];

async fn require_demo() -> Result<(), Response> {
    if variable("demo_mode").await.is_some_and(|v| v == "true") {
        Ok(())
    } else {
        Err(problem(&ApiError::new(ErrorKind::NotFound, "demo_disabled", "demo mode is off")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityBody {
    persona: String,
}

/// `POST /api/demo/identity {persona}` → a signed identity assertion.
pub async fn identity(req: Request) -> Handled {
    require_demo().await?;
    let now = request_time(&req).await?;
    let input: IdentityBody = decode(req).await?;
    let Some((_, subject, phone, card)) = PERSONAS.iter().find(|(p, ..)| *p == input.persona) else {
        let names: Vec<&str> = PERSONAS.iter().map(|(p, ..)| *p).collect();
        return Err(problem(&ApiError::validation("persona", format!("one of {}", names.join(", ")))));
    };
    let secret = required_variable("identity_secret").await.or_problem()?;
    let assertion = IdentityAssertion {
        provider: Provider::Wechat,
        subject: (*subject).to_owned(),
        phone: Some((*phone).to_owned()),
        card_fingerprint: Some((*card).to_owned()),
        iat: now.unix_secs(),
    };
    Ok(json_response(
        201,
        &json!({ "persona": input.persona, "assertion": sign_assertion(secret.as_bytes(), &assertion) }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentBody {
    scenario: String,
    order_id: String,
    amount_fen: i64,
    #[serde(default)]
    card_bin: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// `POST /api/demo/payments` → a gateway notification signed with `gateway_secret`, for the page to deliver.
pub async fn payment(req: Request) -> Handled {
    require_demo().await?;
    let now = request_time(&req).await?;
    let input: PaymentBody = decode(req).await?;
    let notify_path = match input.scenario.as_str() {
        "utility" | "property" | "campus" => format!("/api/{}/payments/notify", input.scenario),
        _ => return Err(problem(&ApiError::validation("scenario", "utility, property or campus"))),
    };
    if scenefin_core::ids::Id::parse(&input.order_id).is_err() {
        return Err(problem(&ApiError::validation("order_id", "an order id")));
    }
    if !(1..=100_000_000).contains(&input.amount_fen) {
        return Err(problem(&ApiError::validation("amount_fen", "1 to 100000000")));
    }
    let status = input.status.unwrap_or_else(|| "succeeded".into());
    if status != "succeeded" && status != "failed" {
        return Err(problem(&ApiError::validation("status", "succeeded or failed")));
    }
    let bin = input.card_bin.filter(|b| (6..=8).contains(&b.len()) && b.bytes().all(|c| c.is_ascii_digit()));
    let instrument = match &bin {
        Some(bin) => json!({ "type": "bank_card", "bin": bin, "card_fingerprint": "demo_card" }),
        None => json!({ "type": "wallet" }),
    };
    let nonce: String = random_bytes::<8>().or_problem()?.iter().map(|b| format!("{b:02x}")).collect();
    let event_id = format!("demo_evt_{nonce}");
    let body = json!({
        "event_id": event_id,
        "order_id": input.order_id,
        "status": status,
        "paid_fen": input.amount_fen,
        "paid_at": now,
        "instrument": instrument,
    })
    .to_string();
    let secret = required_variable("gateway_secret").await.or_problem()?;
    let signature = sign_webhook(&secret, &event_id, now.unix_secs(), body.as_bytes()).or_problem()?;
    Ok(json_response(
        201,
        &json!({
            "notify_path": notify_path,
            "headers": {
                "webhook-id": event_id,
                "webhook-timestamp": now.unix_secs().to_string(),
                "webhook-signature": signature,
            },
            "body": body,
        }),
    ))
}
