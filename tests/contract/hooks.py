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
# Partner ids by scenario path prefix, and partner secrets by partner id (updated when the run rotates one).
PARTNER_BY_PREFIX = {f"/api/{name}/": creds["partner_id"] for name, creds in CONTEXT["partners"].items()}
SECRETS = {creds["partner_id"]: creds["secret"] for creds in CONTEXT["partners"].values()}
PARTNER_HEADERS = ("X-Partner-Id", "X-Timestamp", "X-Nonce", "X-Signature")
WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def schemes(case):
    """The security alternatives of the case's operation, as sets of scheme names."""
    return [set(alternative) for alternative in case.operation.definition.raw.get("security", [])]


def partner_for(path: str):
    return next((pid for prefix, pid in PARTNER_BY_PREFIX.items() if path.startswith(prefix)), None)


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
    """Day ranges (`from`, `to`): `from` on or before `to`, at most 366 days apart, `to` not after tomorrow
    (Asia/Shanghai), defaults `to` = today, `from` = 29 days before `to`."""
    if not query or ("from" not in query and "to" not in query):
        return True
    frm, to = query.get("from"), query.get("to")
    if (frm is not None and _day(frm) is None) or (to is not None and _day(to) is None):
        return True  # not a date at all: the schema's own business
    end = _day(to) if to is not None else _today()
    start = _day(frm) if frm is not None else end - datetime.timedelta(days=29)
    return start <= end and (end - start).days <= 366 and end <= _today() + datetime.timedelta(days=1)
