//! Webhooks (issue 26): a partner that registers an endpoint gets each event of its feed ([`crate::feed`]) POSTed
//! to it, signed with Standard Webhooks under its own partner secret, in feed order, at least once.
//!
//! One document per feed, `{feed}:webhook` ([`Webhook`]): the endpoint, the delivery cursor (the last feed place
//! delivered or given up on), the failing event's attempts and when to try it again, a lease so one request at a
//! time delivers, the recent attempts and the deliveries given up on. Nothing runs in the background (Spin has no
//! timers): a delivery pass ([`deliver`]) runs right after a request records an event, when the partner polls its
//! feed or looks at its webhook, and on any later request that asks for one, and it only does something when an
//! event is due. A failing endpoint is retried on [`RETRY_SCHEDULE_SECS`] (later events wait behind it, so the
//! order holds); after [`MAX_ATTEMPTS`] the event is given up on (listed in `failed`, replayable) and delivery
//! moves on.
//!
//! The sending itself is the caller's (`send`): a component does it with outbound HTTP, a test with a closure.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::feed::{self, FeedEvent};
use crate::kv::{self, Key, Step, Store, StoreError, Tried};
use crate::partners::{self, Partner};
use crate::problem::{ErrorKind, Problem};

/// Attempts at one event before it is given up on (the first plus one per entry of [`RETRY_SCHEDULE_SECS`]).
pub const MAX_ATTEMPTS: u32 = RETRY_SCHEDULE_SECS.len() as u32 + 1;
/// The wait after the n-th failed attempt (Standard Webhooks' suggested schedule: 5 s, 5 min, 30 min, 2 h, 5 h,
/// 10 h, 10 h: about 28 hours in all).
pub const RETRY_SCHEDULE_SECS: [i64; 7] = [5, 300, 1_800, 7_200, 18_000, 36_000, 36_000];
/// How long a delivery pass may hold the lease (a pass that crashed is taken over after this).
pub const LEASE_SECS: i64 = 60;
/// Events delivered in one pass at most.
pub const PASS_EVENTS: usize = 20;
/// Recent attempts kept.
const LOG_KEEP: usize = 50;
/// Deliveries given up on that are kept.
const FAILED_KEEP: usize = 100;
/// Longest endpoint URL accepted.
pub const MAX_URL_LEN: usize = 512;

/// `{owner}:webhooks`: the feeds of scenario `owner` that ever had an endpoint (what [`deliver_due`] looks at).
pub fn index_key(owner: &str) -> Key {
    Key::new(&[owner, "webhooks"])
}

/// `{feed}:webhook`.
pub fn key(feed: &Key) -> Key {
    feed.child(&["webhook"])
}

/// A partner's webhook: endpoint and delivery state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Schema version.
    pub v: u32,
    /// Where events go; `None` once the partner removed its endpoint.
    pub url: Option<String>,
    /// The scenario and the partner that registered it (whose secret signs the messages).
    #[serde(default)]
    pub owner: String,
    /// See `owner`.
    #[serde(default)]
    pub partner_id: String,
    /// When the endpoint was last set or removed.
    pub updated_at: Option<Timestamp>,
    /// The last feed place delivered or given up on.
    pub cursor: i64,
    /// Failed attempts at the event after the cursor.
    pub attempts: u32,
    /// Not before this instant is the event after the cursor tried again.
    pub next_at: Option<Timestamp>,
    /// Since when the endpoint has been failing (cleared by a success).
    pub failing_since: Option<Timestamp>,
    /// The last failure.
    pub last_error: Option<String>,
    /// The pass delivering now, if any.
    pub lease: Option<Lease>,
    /// Recent attempts, oldest first.
    #[serde(default)]
    pub log: Vec<Attempt>,
    /// Events given up on, oldest first.
    #[serde(default)]
    pub failed: Vec<Failed>,
}

/// A delivery pass's hold on the webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The pass.
    pub token: String,
    /// Until when.
    pub until: Timestamp,
}

/// One attempt to deliver one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The event's feed place.
    pub seq: i64,
    /// The event's id (also the `webhook-id`).
    pub event_id: String,
    /// When.
    pub at: Timestamp,
    /// Which attempt at this event (1 = the first; a replay counts on from its own 1).
    pub attempt: u32,
    /// The endpoint's status, if it answered.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Delivered (the endpoint answered 2xx).
    pub ok: bool,
    /// A replay the partner asked for.
    pub replay: bool,
}

/// An event given up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    /// Its feed place.
    pub seq: i64,
    /// Its id.
    pub event_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// When delivery moved on.
    pub gave_up_at: Timestamp,
    /// A replay later delivered it.
    #[serde(default)]
    pub replayed_at: Option<Timestamp>,
}

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The endpoint.
    pub url: String,
    /// `webhook-id`: the event's id (the same for every attempt, so a receiver dedupes by it).
    pub id: String,
    /// `webhook-timestamp` (Unix seconds).
    pub timestamp: i64,
    /// `webhook-signature`.
    pub signature: String,
    /// The JSON body: the event as the feed shows it.
    pub body: Vec<u8>,
}

/// What the endpoint did with a message: `Ok(status)` when it answered, `Err(reason)` when it could not be reached.
pub type Sent = Result<u16, String>;

/// Why a webhook request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The endpoint URL is not acceptable.
    #[error("{0}")]
    BadUrl(String),
    /// No endpoint registered.
    #[error("no webhook endpoint is registered")]
    NoEndpoint,
    /// No such event in the feed.
    #[error("no event {0} in this feed")]
    NoEvent(String),
    /// The secret does not make a signing key.
    #[error("the partner secret cannot sign webhooks")]
    Secret,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Problem for WebhookError {
    fn kind(&self) -> ErrorKind {
        match self {
            WebhookError::BadUrl(_) => ErrorKind::Unprocessable,
            WebhookError::NoEndpoint | WebhookError::NoEvent(_) => ErrorKind::NotFound,
            WebhookError::Secret => ErrorKind::Internal,
            WebhookError::Store(e) => e.kind(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            WebhookError::BadUrl(_) => "invalid_webhook_url",
            WebhookError::NoEndpoint => "webhook_not_registered",
            WebhookError::NoEvent(_) => "event_not_found",
            WebhookError::Secret => "internal_error",
            WebhookError::Store(e) => e.code(),
        }
    }
    fn field(&self) -> Option<&str> {
        match self {
            WebhookError::BadUrl(_) => Some("url"),
            WebhookError::NoEvent(_) => Some("event_id"),
            _ => None,
        }
    }
}

/// Checks an endpoint URL: `https://host[:port]/path` (or `http://` to a loopback host, for development), no user
/// info, no fragment, at most [`MAX_URL_LEN`] bytes.
pub fn check_url(url: &str) -> Result<(), WebhookError> {
    let bad = |why: &str| Err(WebhookError::BadUrl(format!("url: {why}")));
    if url.len() > MAX_URL_LEN || url.is_empty() {
        return bad(&format!("1 to {MAX_URL_LEN} bytes"));
    }
    if url.chars().any(|c| c.is_ascii_control() || c.is_whitespace() || !c.is_ascii()) {
        return bad("no spaces, control or non-ASCII characters (percent-encode them)");
    }
    let (scheme, rest) = match url.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("http") => (s, rest),
        _ => return bad("must start with https://"),
    };
    if rest.contains('#') {
        return bad("no fragment");
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return bad("needs a host and no user information");
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            if !port.is_empty() && port.parse::<u16>().is_err() {
                return bad("the port must be a number up to 65535");
            }
            host
        }
        _ => authority,
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
    if !host_ok {
        return bad("the host is not a valid name or address");
    }
    let loopback = matches!(host.to_ascii_lowercase().as_str(), "127.0.0.1" | "localhost" | "[::1]");
    if scheme.eq_ignore_ascii_case("http") && !loopback {
        return bad("must use https:// (http:// only to a loopback host, for development)");
    }
    Ok(())
}

/// The Standard Webhooks signing secret of a partner: `whsec_` and the base64 of its partner secret's bytes (what a
/// partner gives its Standard Webhooks library).
pub fn signing_secret(partner_secret: &str) -> String {
    use base64::Engine;
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(partner_secret.as_bytes()))
}

/// The message for `event` at place `seq`, signed at `signed_at` for `url`. Delivery signs at the wall clock's
/// time, not the request's (a receiver checks `webhook-timestamp` against its own clock to refuse replays).
pub fn message(
    url: &str,
    seq: i64,
    event: &FeedEvent,
    partner_secret: &str,
    signed_at: Timestamp,
) -> Result<Message, WebhookError> {
    let body = serde_json::to_vec(&json!({
        "id": event.id, "seq": seq, "type": event.kind, "occurred_at": event.occurred_at, "data": event.data,
    }))
    .map_err(|_| WebhookError::Secret)?;
    let timestamp = signed_at.unix_secs();
    let signature = crate::auth::sign_webhook(&signing_secret(partner_secret), &event.id, timestamp, &body)
        .map_err(|_| WebhookError::Secret)?;
    Ok(Message { url: url.to_owned(), id: event.id.clone(), timestamp, signature, body })
}

/// Sets the endpoint of the feed at `feed` (new, changed, or again after a removal). A new or re-added endpoint
/// starts with the events recorded from now on; a changed one carries on where delivery was.
pub async fn register(
    store: &impl Store,
    feed: &Key,
    partner: &Partner,
    owner: &str,
    url: &str,
    now: Timestamp,
) -> Result<Webhook, WebhookError> {
    check_url(url)?;
    let appended = feed::appended(store, feed).await?;
    let hook = kv::update_json(store, &key(feed), |current: Option<&Webhook>| {
        let mut hook = current.cloned().unwrap_or(Webhook { v: 1, ..Webhook::default() });
        if hook.url.as_deref() == Some(url) && hook.partner_id == partner.partner_id {
            return Ok::<_, StoreError>(Step::Keep(hook));
        }
        hook.owner = owner.to_owned();
        hook.partner_id.clone_from(&partner.partner_id);
        if hook.url.is_none() {
            hook.cursor = hook.cursor.max(appended);
            hook.attempts = 0;
            hook.next_at = None;
            hook.failing_since = None;
        }
        hook.url = Some(url.to_owned());
        hook.updated_at = Some(now);
        Ok(Step::Write(hook.clone(), hook))
    })
    .await?;
    kv::add_to_index(store, &index_key(owner), feed.as_str()).await?;
    Ok(hook)
}

/// Removes the endpoint: nothing more is sent (the log and the failed deliveries stay readable).
pub async fn remove(store: &impl Store, feed: &Key, now: Timestamp) -> Result<Option<Webhook>, WebhookError> {
    let hook = kv::update_json(store, &key(feed), |current: Option<&Webhook>| {
        let Some(current) = current else { return Ok::<_, StoreError>(Step::Keep(None)) };
        if current.url.is_none() {
            return Ok(Step::Keep(Some(current.clone())));
        }
        let mut hook = current.clone();
        hook.url = None;
        hook.updated_at = Some(now);
        hook.attempts = 0;
        hook.next_at = None;
        hook.lease = None;
        Ok(Step::Write(hook.clone(), Some(hook)))
    })
    .await?;
    Ok(hook)
}

/// The webhook of the feed at `feed`, if one was ever registered, and how many places the feed has reserved.
pub async fn status(store: &impl Store, feed: &Key) -> Result<(Option<Webhook>, i64), StoreError> {
    let read = read_all(store, std::slice::from_ref(feed)).await?.pop().unwrap_or_default();
    Ok((read.hook, read.appended))
}

/// A feed's webhook as read: the document's bytes (a lease is taken from exactly these), the document, and the
/// feed's slot counter.
#[derive(Default)]
struct Read {
    raw: Option<Vec<u8>>,
    hook: Option<Webhook>,
    appended: i64,
}

/// The webhooks of `feeds` and their feeds' counters, in one batch read.
async fn read_all(store: &impl Store, feeds: &[Key]) -> Result<Vec<Read>, StoreError> {
    let keys: Vec<Key> = feeds.iter().flat_map(|f| [key(f), feed::counter_key(f)]).collect();
    let mut raw = kv::get_all(store, &keys).await?.into_iter();
    let mut reads = Vec::with_capacity(feeds.len());
    for pair in keys.chunks(2) {
        let (hook_raw, counter_raw) = (raw.next().flatten(), raw.next().flatten());
        reads.push(Read {
            hook: kv::decode_doc(&pair[0], hook_raw.as_deref())?,
            appended: kv::counter_of(&pair[1], counter_raw.as_deref())?,
            raw: hook_raw,
        });
    }
    Ok(reads)
}

/// The feeds of scenario `owner` that ever had an endpoint (one read).
pub async fn feeds(store: &impl Store, owner: &str) -> Result<Vec<Key>, StoreError> {
    Ok(kv::read_index(store, &index_key(owner)).await?.iter().filter_map(|k| Key::try_from_stored(k)).collect())
}

/// Runs a delivery pass ([`deliver`]) for each of `feeds` (see [`feeds`]) that has something due: one batch read
/// when none is due. A pass that fails is logged and skipped (delivery is never
/// why a request fails). What the passes did, summed.
pub async fn deliver_due(
    store: &impl Store,
    feeds: &[Key],
    now: Timestamp,
    mut send: impl AsyncFnMut(&Message) -> Sent,
) -> Result<Pass, StoreError> {
    if feeds.is_empty() {
        return Ok(Pass::default());
    }
    let mut total = Pass::default();
    for (feed, read) in feeds.iter().zip(read_all(store, feeds).await?) {
        match pass(store, feed, read, now, async |m: &Message| send(m).await).await {
            Ok(pass) => {
                total.delivered += pass.delivered;
                total.failed += pass.failed;
                total.gave_up += pass.gave_up;
            }
            Err(e) => eprintln!("webhook delivery for {feed} failed: {e}"),
        }
    }
    Ok(total)
}

/// What a delivery pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Events delivered.
    pub delivered: usize,
    /// Failed attempts (at most one per pass: a failure ends it).
    pub failed: usize,
    /// Events given up on.
    pub gave_up: usize,
}

/// Delivers what is due of the feed at `feed` to its endpoint, in order, through `send`, signed under
/// the secret of the partner that registered the endpoint: nothing when there is no endpoint, nothing new, the failing event's retry is not due yet, or
/// another pass holds the lease (one batch read then). Stops at the first failure (the event is retried on the
/// schedule), after [`PASS_EVENTS`] events, or at an event still being recorded.
pub async fn deliver(
    store: &impl Store,
    feed: &Key,
    now: Timestamp,
    send: impl AsyncFnMut(&Message) -> Sent,
) -> Result<Pass, WebhookError> {
    let read = read_all(store, std::slice::from_ref(feed)).await?.pop().unwrap_or_default();
    pass(store, feed, read, now, send).await
}

/// [`deliver`] from what was read of the webhook (`read`): nothing unless a pass is due.
async fn pass(
    store: &impl Store,
    feed: &Key,
    read: Read,
    now: Timestamp,
    mut send: impl AsyncFnMut(&Message) -> Sent,
) -> Result<Pass, WebhookError> {
    let hook_key = key(feed);
    let (Some(current_raw), Some(current)) = (read.raw, read.hook) else { return Ok(Pass::default()) };
    let appended = read.appended;
    if !due(&current, appended, now) {
        return Ok(Pass::default());
    }
    // Take the lease from exactly what was read: a concurrent pass that took it first wins, this one does nothing.
    let token = crate::auth::hex(&crate::ids::random_bytes::<12>().map_err(|e| StoreError::Backend(e.to_string()))?);
    let leased = kv::try_update_json(store, &hook_key, &current_raw, |hook: &Webhook| {
        if !due(hook, appended, now) {
            return Ok::<_, StoreError>(Step::Keep(None));
        }
        let mut hook = hook.clone();
        hook.lease = Some(Lease { token: token.clone(), until: now.plus_secs(LEASE_SECS) });
        Ok(Step::Write(hook.clone(), Some(hook)))
    })
    .await?;
    let hook = match leased {
        Tried::Done(Some(hook)) => hook,
        Tried::Done(None) | Tried::Lost(_) => return Ok(Pass::default()),
    };
    let Some(url) = hook.url.clone() else { return Ok(Pass::default()) };
    let partner_secret = &secret_of(store, &hook).await?;

    let page = feed::read(store, feed, hook.cursor, PASS_EVENTS, now).await?;
    let mut pass = Pass::default();
    let mut outcome = Outcome { cursor: hook.cursor, attempts: hook.attempts, ..Outcome::default() };
    let mut stopped = false;
    for (seq, event) in &page.events {
        let message = message(&url, *seq, event, partner_secret, SystemClock.now())?;
        let sent = send(&message).await;
        let attempt = outcome.attempts + 1;
        let (ok, status, error) = judge(&sent);
        outcome.log.push(Attempt {
            seq: *seq,
            event_id: event.id.clone(),
            at: now,
            attempt,
            status,
            error: error.clone(),
            ok,
            replay: false,
        });
        if ok {
            pass.delivered += 1;
            outcome.cursor = *seq;
            outcome.attempts = 0;
            outcome.succeeded = true;
            continue;
        }
        pass.failed += 1;
        outcome.last_error = error.clone();
        if attempt >= MAX_ATTEMPTS {
            pass.gave_up += 1;
            outcome.failed.push(Failed {
                seq: *seq,
                event_id: event.id.clone(),
                attempts: attempt,
                last_error: error,
                gave_up_at: now,
                replayed_at: None,
            });
            outcome.cursor = *seq;
            outcome.attempts = 0;
        } else {
            outcome.attempts = attempt;
            outcome.next_at = Some(now.plus_secs(RETRY_SCHEDULE_SECS[(attempt - 1) as usize]));
        }
        stopped = true;
        break;
    }
    if !stopped {
        // Void places between and after the events count as settled too.
        outcome.cursor = outcome.cursor.max(page.next);
    }
    finish(store, &hook_key, &token, hook.cursor, outcome, now).await?;
    Ok(pass)
}

/// What a pass learned, applied to the document at its end.
#[derive(Debug, Default)]
struct Outcome {
    cursor: i64,
    attempts: u32,
    next_at: Option<Timestamp>,
    last_error: Option<String>,
    succeeded: bool,
    log: Vec<Attempt>,
    failed: Vec<Failed>,
}

/// Writes a pass's outcome and gives the lease back. When the lease was taken over meanwhile (this pass outlived
/// it), or the cursor was moved by a new registration, only its log is kept.
async fn finish(
    store: &impl Store,
    hook_key: &Key,
    token: &str,
    started_at: i64,
    outcome: Outcome,
    now: Timestamp,
) -> Result<(), StoreError> {
    kv::update_json(store, hook_key, |current: Option<&Webhook>| {
        let Some(current) = current else { return Ok::<_, StoreError>(Step::Keep(())) };
        let mut hook = current.clone();
        let leased = hook.lease.as_ref().is_some_and(|l| l.token == token);
        if leased {
            hook.lease = None;
        }
        // The cursor is this pass's to move unless it moved meanwhile (the endpoint was removed and set again).
        if leased && hook.cursor == started_at {
            hook.cursor = outcome.cursor;
            hook.attempts = outcome.attempts;
            hook.next_at = outcome.next_at;
            if outcome.last_error.is_some() {
                hook.last_error.clone_from(&outcome.last_error);
                if outcome.next_at.is_some() {
                    hook.failing_since.get_or_insert(now);
                }
            }
            if outcome.succeeded && outcome.next_at.is_none() {
                hook.failing_since = None;
            }
            hook.failed.extend(outcome.failed.iter().cloned());
            trim(&mut hook.failed, FAILED_KEEP);
        }
        hook.log.extend(outcome.log.iter().cloned());
        trim(&mut hook.log, LOG_KEEP);
        Ok(Step::Write(hook, ()))
    })
    .await
}

/// Delivers event `event_id` of the feed at `feed` again, now, whatever happened to it before (the partner asked
/// for it): the attempt is logged; a replay that succeeds marks a given-up delivery as replayed. The cursor does not
/// move.
pub async fn replay(
    store: &impl Store,
    feed: &Key,
    event_id: &str,
    now: Timestamp,
    send: impl AsyncFnOnce(&Message) -> Sent,
) -> Result<Attempt, WebhookError> {
    let hook_key = key(feed);
    let hook: Webhook = kv::get_json(store, &hook_key).await?.ok_or(WebhookError::NoEndpoint)?;
    let url = hook.url.clone().ok_or(WebhookError::NoEndpoint)?;
    let partner_secret = &secret_of(store, &hook).await?;
    let (seq, event) =
        feed::find(store, feed, event_id).await?.ok_or_else(|| WebhookError::NoEvent(event_id.to_owned()))?;
    let message = message(&url, seq, &event, partner_secret, SystemClock.now())?;
    let sent = send(&message).await;
    let (ok, status, error) = judge(&sent);
    let attempt = Attempt { seq, event_id: event.id.clone(), at: now, attempt: 1, status, error, ok, replay: true };
    kv::update_json(store, &hook_key, |current: Option<&Webhook>| {
        let Some(current) = current else { return Ok::<_, StoreError>(Step::Keep(())) };
        let mut hook = current.clone();
        hook.log.push(attempt.clone());
        trim(&mut hook.log, LOG_KEEP);
        if ok {
            for failed in hook.failed.iter_mut().filter(|f| f.seq == seq && f.replayed_at.is_none()) {
                failed.replayed_at = Some(now);
            }
        }
        Ok(Step::Write(hook, ()))
    })
    .await?;
    Ok(attempt)
}

/// The current secret of the partner that registered `hook`.
async fn secret_of(store: &impl Store, hook: &Webhook) -> Result<String, WebhookError> {
    let partner: Option<Partner> = kv::get_json(store, &partners::partner_key(&hook.owner, &hook.partner_id)).await?;
    partner.map(|p| p.secret).ok_or(WebhookError::Secret)
}

/// Whether a pass has anything to do: an endpoint, an event after the cursor, its retry due, no live lease.
fn due(hook: &Webhook, appended: i64, now: Timestamp) -> bool {
    hook.url.is_some()
        && appended > hook.cursor
        && hook.next_at.is_none_or(|at| at <= now)
        && hook.lease.as_ref().is_none_or(|l| l.until <= now)
}

/// Delivered (2xx), the status, the failure.
fn judge(sent: &Sent) -> (bool, Option<u16>, Option<String>) {
    match sent {
        Ok(status) if (200..300).contains(status) => (true, Some(*status), None),
        Ok(status) => (false, Some(*status), Some(format!("the endpoint answered {status}"))),
        Err(reason) => (false, None, Some(reason.chars().take(300).collect())),
    }
}

fn trim<T>(items: &mut Vec<T>, keep: usize) {
    if items.len() > keep {
        items.drain(..items.len() - keep);
    }
}

#[cfg(test)]
mod tests;
