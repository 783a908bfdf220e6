"""Schemathesis hooks for scenefin: who is calling, signatures on the exact bytes sent, and the spec's cross-field
rules that JSON Schema cannot say.

Loaded by tests/contract/run.py through SCHEMATHESIS_HOOKS; the run's secrets come from the JSON file named by
SCENEFIN_CONTRACT_CONTEXT (written by run.py after it seeded the app).
"""

import base64
import datetime
import hashlib
import hmac
import json
import os
import secrets
import time

import requests
import schemathesis

CONTEXT = json.loads(open(os.environ["SCENEFIN_CONTRACT_CONTEXT"]).read())
SHANGHAI = datetime.timezone(datetime.timedelta(hours=8))
# Partner ids by path prefix (longest first), and partner secrets by partner id (updated when the run rotates one).
PARTNER_BY_PREFIX = sorted(((prefix, creds["partner_id"]) for prefix, creds in CONTEXT["partners"].items()),
                           key=lambda entry: -len(entry[0]))
SECRETS = {creds["partner_id"]: creds["secret"] for creds in CONTEXT["partners"].values()}
PARTNER_HEADERS = ("X-Partner-Id", "X-Timestamp", "X-Nonce", "X-Signature")
WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def schemes(case):
    """The security alternatives of the case's operation, as sets of scheme names."""
    return [set(alternative) for alternative in case.operation.definition.raw.get("security", [])]


def partner_for(path: str):
    return next((pid for prefix, pid in PARTNER_BY_PREFIX if path.startswith(prefix)), None)


@schemathesis.auth(refresh_interval=None, retry_on=[])
class Caller:
    """Authenticates as the caller the operation declares: the operator, the customer session, the scenario's
    partner, or the payment gateway. The first declared alternative wins (operator before partner)."""

    def get(self, case, ctx):
        return CONTEXT

    def set(self, case, data, ctx):
        alternatives = schemes(case)
        if not alternatives:
            return
        first = alternatives[0]
        headers = case.headers if case.headers is not None else {}
        if "operatorToken" in first:
            headers["Authorization"] = f"Bearer {data['operator_token']}"
        elif "customerSession" in first:
            headers["Authorization"] = f"Bearer {data['session_token']}"
        elif "partnerId" in first:
            partner = partner_for(case.operation.path)
            if partner is None:
                return
            # Placeholders: Signer computes the real ones on the prepared request.
            headers.update({"X-Partner-Id": partner, "X-Timestamp": "0", "X-Nonce": "placeholder", "X-Signature": "0"})
        elif "webhookId" in first:
            headers.update({"webhook-id": "msg_" + secrets.token_hex(8), "webhook-timestamp": "0",
                            "webhook-signature": "v1,placeholder"})
        case.headers = headers


class Signer(requests.auth.AuthBase):
    """Signs a prepared request whose headers carry the whole partner or webhook credential set (a probe that
    removed or replaced any of them stays unsigned, as an attacker's would)."""

    def __call__(self, r):
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        h = r.headers
        if all(name in h for name in PARTNER_HEADERS) and h["X-Partner-Id"] in SECRETS and h["X-Nonce"] == "placeholder":
            ts, nonce = str(int(time.time())), secrets.token_hex(12)
            canonical = f"{r.method}\n{r.path_url}\n{ts}\n{nonce}\n{hashlib.sha256(body).hexdigest()}"
            h["X-Timestamp"], h["X-Nonce"] = ts, nonce
            h["X-Signature"] = hmac.new(SECRETS[h["X-Partner-Id"]].encode(), canonical.encode(), hashlib.sha256).hexdigest()
        if all(name in h for name in WEBHOOK_HEADERS) and h["webhook-signature"] == "v1,placeholder":
            ts = str(int(time.time()))
            key = base64.b64decode(CONTEXT["gateway_secret"].removeprefix("whsec_"))
            content = f"{h['webhook-id']}.{ts}.".encode() + body
            h["webhook-timestamp"] = ts
            h["webhook-signature"] = "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        return r


@schemathesis.hook
def before_call(ctx, case, kwargs):
    kwargs["auth"] = Signer()


@schemathesis.hook
def after_call(ctx, case, response):
    """A rotated partner secret is the one to sign with from now on."""
    if case.operation.path.endswith("/rotate-secret") and 200 <= response.status_code < 300:
        try:
            body = response.json()
        except ValueError:
            return
        if isinstance(body, dict) and body.get("partner_id") in SECRETS and body.get("partner_secret"):
            SECRETS[body["partner_id"]] = body["partner_secret"]


# ---------------------------------------------------------------------------------------------------------------
# Cross-field rules (described in docs/openapi.yaml; JSON Schema cannot express them). Cases that break one are
# not generated: the server refuses them with 400, which is right, but the fuzzer would read it as a schema-valid
# request rejected.


def _day(value):
    try:
        return datetime.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _today():
    return datetime.datetime.now(SHANGHAI).date()


@schemathesis.hook
def filter_query(ctx, query):
    """Day ranges (`from`, `to`): `from` on or before `to`, at most 366 days in all, `to` not after tomorrow
    (Asia/Shanghai), defaults `to` = today, `from` = 29 days before `to`."""
    if not query or ("from" not in query and "to" not in query):
        return True
    frm, to = query.get("from"), query.get("to")
    if (frm is not None and _day(frm) is None) or (to is not None and _day(to) is None):
        return True  # not a date at all: the schema's own business
    end = _day(to) if to is not None else _today()
    start = _day(frm) if frm is not None else end - datetime.timedelta(days=29)
    return start <= end and (end - start).days < 366 and end <= _today() + datetime.timedelta(days=1)


# ---------------------------------------------------------------------------------------------------------------
# Customers, coupons, referrals, insights (/api/ops/...): cross-field rules per case. `filter_case` and `map_case`
# also run in the coverage phase, where `filter_query` and `filter_body` do not. Schema-valid bodies that break a
# cross-field rule are repaired (a positive case only: a negative one must stay as invalid as it was generated);
# query cases that break one are dropped.


def _instant(value):
    try:
        return datetime.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _number(value):
    """An integer as JSON sends it (`54` or `54.0`)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fix_schedule(schedule):
    """`ends_at` after `starts_at` (a day after it, or `starts_at` a day earlier at the end of the calendar)."""
    if not isinstance(schedule, dict):
        return
    start, end = _instant(schedule.get("starts_at")), _instant(schedule.get("ends_at"))
    if start is None or end is None or end > start:
        return
    try:
        schedule["ends_at"] = (start + datetime.timedelta(days=1)).isoformat()
    except OverflowError:
        schedule["starts_at"] = (start - datetime.timedelta(days=1)).isoformat()


def _fix_reward(reward):
    if not isinstance(reward, dict):
        return
    if reward.get("kind") in ("cash_fen", "points"):
        reward.pop("campaign_id", None)
        reward.setdefault("amount", 1)
    elif reward.get("kind") == "coupon_campaign":
        reward.pop("amount", None)
        reward.setdefault("campaign_id", "st1")


def _fix_campaign(body):
    schedule, validity, coupon = body.get("schedule"), body.get("validity"), body.get("coupon")
    _fix_schedule(schedule)
    if not body.get("merchant_ids") and "district" not in body:
        body["district"] = "d1"
    if isinstance(validity, dict):
        if "ends_at" in validity:
            validity.pop("days_after_claim", None)
            start, end = _instant((schedule or {}).get("starts_at")), _instant(validity["ends_at"])
            if start is not None and end is not None and end <= start:
                validity["ends_at"] = schedule.get("ends_at")
        else:
            validity.setdefault("days_after_claim", 1)
    if isinstance(coupon, dict):
        if coupon.get("type") == "fixed_off":
            coupon.setdefault("amount_fen", 1)
        elif coupon.get("type") == "percent_off":
            coupon.setdefault("percent_bp", 1)
            coupon.setdefault("max_off_fen", 1)
        value = coupon.get("amount_fen") if coupon.get("type") == "fixed_off" else coupon.get("max_off_fen")
        if _number(value) and _number(body.get("budget_fen")) and body["budget_fen"] < value:
            body["budget_fen"] = value
    if body.get("kind") == "checkin":
        if not body.get("checkin_streaks"):
            body["checkin_streaks"] = [1]
    else:
        body.pop("checkin_streaks", None)
    if body.get("kind") == "community_perk":
        eligibility = body.setdefault("eligibility", {})
        if isinstance(eligibility, dict) and not eligibility.get("community_ids"):
            eligibility["community_ids"] = ["c1"]


def _fix_program(body):
    tiers = [t for t in body.get("tiers", []) if isinstance(t, dict)] if isinstance(body.get("tiers"), list) else []
    wanted = [t.get("min_qualified") for t in tiers]
    if any(b <= a for a, b in zip(wanted, wanted[1:]) if _number(a) and _number(b)):
        for i, tier in enumerate(tiers):
            tier["min_qualified"] = i + 1
    for tier in tiers:
        _fix_reward(tier.get("reward_per_referral"))
        _fix_reward(tier.get("tier_bonus"))
    _fix_reward(body.get("referee_reward"))
    _fix_schedule(body.get("schedule"))


def _repair(case):
    """Makes a positive case's body keep the cross-field rules of its operation."""
    _repair_scenario(case)
    body, path = case.body, case.operation.path
    if not isinstance(body, dict) or case.operation.method.upper() != "POST":
        return
    if path == "/api/ops/customers/{id}/events" and body.get("kind") in ("paid", "topped_up"):
        body.setdefault("amount_fen", 1)
    elif path == "/api/coupons/merchants" and isinstance(body.get("stores"), list):
        for i, store in enumerate(body["stores"]):
            if isinstance(store, dict):
                store["store_id"] = f"s{i}"
    elif path == "/api/coupons/campaigns":
        _fix_campaign(body)
    elif path == "/api/referrals/programs":
        _fix_program(body)


def _positive(case):
    generation = getattr(getattr(case, "meta", None), "generation", None)
    return generation is None or str(getattr(generation.mode, "value", generation.mode)) == "positive"


@schemathesis.hook
def filter_case(ctx, case):
    path = case.operation.path
    if path.startswith("/api/ops/") and case.operation.method.upper() == "GET" and isinstance(case.query, dict):
        if not filter_query(ctx, case.query):
            return False
        if path == "/api/ops/funnel" and sum(k in case.query for k in ("channel", "campaign", "scenario")) > 1:
            return False
    return True


@schemathesis.hook
def map_case(ctx, case):
    if _positive(case):
        _repair(case)
    return case


@schemathesis.hook
def before_add_examples(ctx, examples):
    """The examples phase runs no filter or map hooks: its cases get the same repairs."""
    for case in examples:
        _repair(case)


# ---------------------------------------------------------------------------------------------------------------
# Utility, property, campus (/api/utility/, /api/property/, /api/campus/): their cross-field rules (described in the
# schemas in docs/openapi.yaml), repaired in positive cases through `_repair`.


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _repair_scenario(case):
    body, path = case.body, case.operation.path
    if not isinstance(body, dict):
        return
    rule, prepay = body.get("account_rule"), body.get("prepay")
    if path == "/api/utility/billers" and isinstance(rule, dict):
        low, high = rule.get("min_len"), rule.get("max_len")
        if _number(low) and _number(high) and low > high:
            rule["min_len"], rule["max_len"] = high, low  # min_len <= max_len
    elif path == "/api/property/communities" and isinstance(prepay, dict):
        months, free = prepay.get("months"), prepay.get("free_months")
        if _number(months) and _number(free) and free >= months:
            prepay["free_months"] = int(months) - 1  # free_months < months
    elif path in ("/api/utility/billers/{id}/bills", "/api/property/communities/{id}/bills"):
        for i, bill in enumerate(body.get("bills") or []):
            if isinstance(bill, dict):
                bill["bill_id"] = f"b{i}"  # each bill id once per upload
