"""Contract fuzzing: schemathesis (its default checks) against a live scenefin host, driven by docs/openapi.yaml.

Starts the host on loopback with the real .wasm components and an in-memory store, seeds one of everything through
the real APIs (a biller, a community, a school, a merchant and campaign, a referral programme, a channel, a
customer session), then runs `schemathesis run` authenticated as every kind of caller the spec declares: anonymous,
the operator, the customer session, each partner (HMAC-signed) and the payment gateway (Standard Webhooks). The
signing happens in hooks.py, on the exact bytes sent.

Usage: python tests/contract/run.py [--max-examples N (60)] [--seed N (1)] [extra schemathesis args...]
Run by `.ci/contract`, which builds what it needs and installs schemathesis in a venv under target/.
"""

import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "target" / "contract"
HOST = ROOT / "target" / "debug" / "scenefin-host"

OPERATOR_TOKEN = "op_" + secrets.token_hex(16)
SESSION_SECRET = secrets.token_hex(32)
IDENTITY_SECRET = secrets.token_hex(32)
GATEWAY_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
SEED_ID = "st1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assertion(subject: str, phone: str) -> str:
    payload = b64url(json.dumps({"provider": "phone", "subject": subject, "phone": phone, "iat": int(time.time())}).encode())
    mac = hmac.new(IDENTITY_SECRET.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{b64url(mac)}"


class Api:
    def __init__(self, base: str):
        self.base = base

    def call(self, method, path, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data if body is not None else None, method=method)
        req.add_header("content-type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                text = res.read()
                return res.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            text = e.read()
            return e.code, (json.loads(text) if text else None)

    def operator(self, method, path, body=None):
        return self.ok(method, path, self.call(method, path, body, {"authorization": f"Bearer {OPERATOR_TOKEN}"}))

    def partner(self, creds, method, path, body=None):
        text = b"" if body is None else json.dumps(body).encode()
        ts, nonce = str(int(time.time())), secrets.token_hex(12)
        canonical = f"{method}\n{path}\n{ts}\n{nonce}\n{hashlib.sha256(text).hexdigest()}"
        sig = hmac.new(creds["partner_secret"].encode(), canonical.encode(), hashlib.sha256).hexdigest()
        headers = {"x-partner-id": creds["partner_id"], "x-timestamp": ts, "x-nonce": nonce, "x-signature": sig}
        return self.ok(method, path, self.call(method, path, body, headers))

    @staticmethod
    def ok(method, path, result):
        status, body = result
        if status >= 300:
            raise SystemExit(f"seeding failed: {method} {path} -> {status} {body}")
        return body


def seed(api: Api) -> dict:
    """One of everything, all with the id `st1` so `{id}` path parameters reach real resources."""
    schedule = {"starts_at": "2026-01-01T00:00:00+08:00", "ends_at": "2030-01-01T00:00:00+08:00"}
    partners = {}
    biller = api.operator("POST", "/api/utility/billers", {
        "id": SEED_ID, "name": "Contract Water", "category": "water", "city": "shenzhen",
        "account_rule": {"min_len": 10, "max_len": 10, "charset": "digits"}, "exactness": "exact",
        "settlement_account": "6222000012345678",
    })
    partners["utility"] = biller
    api.partner(biller, "PUT", f"/api/utility/billers/{SEED_ID}/bills", {"bills": [{
        "bill_id": "B-1", "account_no": "8800112233", "period": "2026-11", "amount_fen": 12500,
        "due_date": "2030-01-31", "holder_name": "王小明"}]})
    partners["property"] = api.operator("POST", "/api/property/communities", {
        "id": SEED_ID, "name": "Contract Garden", "city": "shenzhen", "property_company": "Contract PM",
        "settlement_account": "6222000012345679"})
    school = api.operator("POST", "/api/campus/schools", {"id": SEED_ID, "name": "Contract University"})
    partners["campus"] = school
    api.partner(school, "PUT", f"/api/campus/schools/{SEED_ID}/members", {"members": [{
        "member_no": "M001", "kind": "student", "name": "李雷", "valid_until": "2030-07-31",
        "activation_code": "111111"}]})
    partners["coupons"] = api.operator("POST", "/api/coupons/merchants", {
        "merchant_id": SEED_ID, "name": "Contract Cafe", "district": "nanshan",
        "stores": [{"store_id": "s1", "name": "Main"}]})
    api.operator("POST", "/api/coupons/campaigns", {
        "id": SEED_ID, "title": "¥5 off", "kind": "daily", "merchant_ids": [SEED_ID],
        "coupon": {"type": "fixed_off", "amount_fen": 500, "min_spend_fen": 1500}, "validity": {"days_after_claim": 7},
        "schedule": schedule, "stock_total": 1000, "budget_fen": 500000})
    api.operator("POST", "/api/referrals/programs", {
        "id": SEED_ID, "title": "Bring a friend",
        "qualifying": {"event": "first_payment", "min_amount_fen": 1000, "within_days": 30}, "holding_days": 7,
        "tiers": [{"min_qualified": 1, "reward_per_referral": {"kind": "cash_fen", "amount": 500}}],
        "max_rewarded_per_referrer": 50, "budget_fen": 100000, "schedule": schedule})
    partners["campus/spend"] = api.partner(school, "POST", f"/api/campus/schools/{SEED_ID}/merchants", {
        "merchant_id": SEED_ID, "name": "Canteen", "kind": "canteen"})
    channel = api.operator("POST", "/api/channels", {"channel": "branch", "branch_id": "b1"})
    status, session = api.call("POST", "/api/sessions", {"assertion": assertion("contract-1", "13800000001")})
    if status >= 300:
        raise SystemExit(f"seeding failed: login -> {status} {session}")
    customer = {"authorization": f"Bearer {session['token']}"}
    # The customer's own card and order, so `{id}` of cards and orders reaches real ones.
    card = api.ok("POST", "bind", api.call("POST", "/api/campus/cards/bind", {
        "school_id": SEED_ID, "member_no": "M001", "activation_code": "111111"}, customer))
    quote = api.ok("POST", "quote", api.call("POST", "/api/utility/quotes", {
        "biller_id": SEED_ID, "account_no": "8800112233", "bill_ids": ["B-1"], "pay_with": "other"}, customer))
    order = api.ok("POST", "order", api.call("POST", "/api/utility/orders", {"quote_id": quote["quote_id"]},
                                             {**customer, "idempotency-key": "contract-order-1"}))
    return {"partners": partners, "channel": channel, "session": session, "card_id": card["card_id"],
            "order_id": order["order"]["order_id"]}


def main() -> int:
    args = sys.argv[1:]
    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ,
               SPIN_VARIABLE_OPERATOR_TOKEN=OPERATOR_TOKEN, SPIN_VARIABLE_SESSION_SECRET=SESSION_SECRET,
               SPIN_VARIABLE_STAFF_IDENTITY_SECRET=secrets.token_hex(32),
               SPIN_VARIABLE_PII_SECRET=secrets.token_hex(32),
               SPIN_VARIABLE_IDENTITY_SECRET=IDENTITY_SECRET, SPIN_VARIABLE_GATEWAY_SECRET=GATEWAY_SECRET)
    log = open(OUT / "host.log", "w")
    host = subprocess.Popen([str(HOST), "up", "--from", str(ROOT / "spin.toml"), "--listen", f"127.0.0.1:{port}",
                             "--kv", "memory"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.time() > deadline or host.poll() is not None:
                    raise SystemExit(f"the host did not start; see {OUT / 'host.log'}")
                time.sleep(0.3)
        api = Api(base)
        seeded = seed(api)
        session = seeded["session"]
        context = {
            "base": base, "operator_token": OPERATOR_TOKEN, "gateway_secret": GATEWAY_SECRET,
            "session_token": session.get("token") or session.get("session_token"),
            # By the path prefix they sign for (the longest prefix wins: a campus POS, else the school).
            "partners": {f"/api/{k}": {"partner_id": v["partner_id"], "secret": v["partner_secret"]}
                         for k, v in seeded["partners"].items()},
        }
        (OUT / "context.json").write_text(json.dumps(context, indent=2))
        customer_id = session.get("customer_id") or session.get("customer", {}).get("id")
        config = OUT / "schemathesis.toml"
        config.write_text(f"""
# Generated by tests/contract/run.py: path parameters point at what the run seeded.
[parameters]
"path.id" = "{SEED_ID}"
"path.biller_id" = "{SEED_ID}"
"path.account_no" = "8800112233"
"path.card" = "M001"
"path.tag" = "vip"
"path.code" = "{seeded['channel']['code']}"

# A schema-valid request may still be refused by the state of the world: a campaign not running, a wrong
# activation code, an account number this biller does not use. scenefin answers those 422 (400 is only for
# requests that break the contract), so 422 joins the statuses a schema-valid request may get.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

[[operations]]
include-path-regex = "^/api/ops/customers/"
parameters = {{ "path.id" = "{customer_id}" }}

[[operations]]
include-path-regex = "^/api/campus/cards/"
parameters = {{ "path.id" = "{seeded['card_id']}" }}

[[operations]]
include-path-regex = "^/api/utility/orders/"
parameters = {{ "path.id" = "{seeded['order_id']}" }}
""")
        # Bounded and repeatable by default (about three minutes on two cores); arguments override.
        defaults = [] if "--max-examples" in args else ["--max-examples", "60"]
        defaults += [] if "--seed" in args else ["--seed", "1"]
        cmd = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
               str(ROOT / "docs" / "openapi.yaml"), "--url", base, "--workers", "1",
               "--report", "junit", "--report-dir", str(OUT / "report"), *defaults, *args]
        env = dict(os.environ, SCHEMATHESIS_HOOKS="hooks", PYTHONPATH=str(Path(__file__).parent),
                   SCENEFIN_CONTRACT_CONTEXT=str(OUT / "context.json"))
        return subprocess.call(cmd, env=env)
    finally:
        host.terminate()
        try:
            host.wait(timeout=10)
        except subprocess.TimeoutExpired:
            host.kill()


if __name__ == "__main__":
    sys.exit(main())
