//! Handlers: authenticate, decode (size-limited), call one domain function, encode.

use customers_domain::channels;
use customers_domain::sessions::{self, Login, Secrets};
use customers_domain::tags;
use scenefin_core::json::DEFAULT_LIMIT_BYTES;
use scenefin_guest::audit::summarize;
use scenefin_guest::{
    OrProblem, Request, Response, Role, body, header, json, json_response, lifecycle_rules, request_time, require_role,
    required_variable, store,
};

use crate::dto::{ChannelBody, ChannelView, LoginBody, MeView, OpsView, TagBody};

type Handled = Result<Response, Response>;

pub async fn login(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let identity_secret = required_variable("identity_secret").await.or_problem()?;
    let session_secret = required_variable("session_secret").await.or_problem()?;
    let input: LoginBody =
        json(&body(req, DEFAULT_LIMIT_BYTES).await.or_problem()?, DEFAULT_LIMIT_BYTES).or_problem()?;
    let pii = scenefin_guest::pii_keys().await?;
    let secrets =
        Secrets { identity_secret: identity_secret.as_bytes(), session_secret: session_secret.as_bytes(), pii: &pii };
    let login =
        Login { assertion: input.assertion, channel_code: input.channel_code, referral_code: input.referral_code };
    let session = sessions::login(&store()?, &secrets, &lifecycle_rules().await, login, now).await.or_problem()?;
    Ok(json_response(if session.is_new { 201 } else { 200 }, &session))
}

pub async fn me(req: Request) -> Handled {
    let now = request_time(&req).await?;
    let session_secret = required_variable("session_secret").await.or_problem()?;
    let customer = sessions::authenticate(&store()?, session_secret.as_bytes(), header(&req, "authorization"), now)
        .await
        .or_problem()?;
    Ok(json_response(200, &MeView::new(&customer, now, &lifecycle_rules().await)))
}

pub async fn create_channel(req: Request) -> Handled {
    require_role(&req, Role::Marketing).await?;
    let now = request_time(&req).await?;
    let input: ChannelBody =
        json(&body(req, DEFAULT_LIMIT_BYTES).await.or_problem()?, DEFAULT_LIMIT_BYTES).or_problem()?;
    let generated = channels::generated_code(&scenefin_core::ids::random_bytes::<8>().or_problem()?);
    let created = channels::create(&store()?, input.into(), &generated, now).await.or_problem()?;
    let summary = format!("channel code {}: → {}", created.code, created.channel);
    Ok(summarize(json_response(201, &ChannelView::from(&created)), summary))
}

pub async fn resolve_channel(req: &Request, code: &str) -> Handled {
    let now = request_time(req).await?;
    let found = channels::resolve(&store()?, code, now).await.map_err(|e| match e {
        customers_domain::CustomerError::UnknownChannel(_) => {
            scenefin_guest::problem(&scenefin_core::ApiError::not_found(e.to_string()))
        }
        other => scenefin_guest::problem(&other),
    })?;
    Ok(json_response(200, &ChannelView::from(&found)))
}

pub async fn ops_customer(req: &Request, id: &str) -> Handled {
    require_role(req, Role::Marketing).await?;
    let now = request_time(req).await?;
    let customer = tags::get(&store()?, id).await.or_problem()?;
    Ok(json_response(200, &OpsView::new(&customer, now, &lifecycle_rules().await)))
}

pub async fn add_tag(req: Request, id: &str) -> Handled {
    require_role(&req, Role::Marketing).await?;
    let now = request_time(&req).await?;
    let input: TagBody = json(&body(req, DEFAULT_LIMIT_BYTES).await.or_problem()?, DEFAULT_LIMIT_BYTES).or_problem()?;
    let customer = tags::set_tag(&store()?, id, &input.tag, true).await.or_problem()?;
    let view = json_response(200, &OpsView::new(&customer, now, &lifecycle_rules().await));
    Ok(summarize(view, format!("customer {id} operator tag {}: → present", input.tag)))
}

pub async fn remove_tag(req: &Request, id: &str, tag: &str) -> Handled {
    require_role(req, Role::Marketing).await?;
    let now = request_time(req).await?;
    let customer = tags::set_tag(&store()?, id, tag, false).await.or_problem()?;
    let view = json_response(200, &OpsView::new(&customer, now, &lifecycle_rules().await));
    Ok(summarize(view, format!("customer {id} operator tag {tag}: → absent")))
}

pub async fn record_event(req: Request, id: &str) -> Handled {
    require_role(&req, Role::Marketing).await?;
    let now = request_time(&req).await?;
    let input: crate::dto::EventBody =
        json(&body(req, DEFAULT_LIMIT_BYTES).await.or_problem()?, DEFAULT_LIMIT_BYTES).or_problem()?;
    let event_id = input.event_id.clone();
    let recorded =
        customers_domain::tags::record_offline(&store()?, id, input.into_offline(), now, &lifecycle_rules().await)
            .await
            .or_problem()?;
    let view = crate::dto::RecordedView::from(&recorded);
    let outcome = if view.first_time { "recorded" } else { "already recorded" };
    let summary = format!("customer {id} offline event {event_id}: {outcome}, stage {}", view.stage);
    Ok(summarize(json_response(200, &view), summary))
}
