"""The demo's resources and scenarios: realistic names, always the same for the same count.

Names follow what teams do with Prefect limits: a global limit (or a tag) per thing that must
not be used twice at once, named `resource:<kind>:<thing>`. Prefect refuses `/`, `%`, `&`, `<`
and `>` in limit names, so a table is `resource:table:analytics.daily_sales`, not a path.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

NAME_RULE = re.compile(r"^[^/%&><]+$")  # Prefect's rule for limit, flow and task names

GLOBAL = "global"
TAG = "tag"


@dataclass(frozen=True)
class Resource:
    kind: str  # GLOBAL or TAG
    resource: str  # the GCL's name, or the tag
    limit: int = 1

    @property
    def limit_name(self) -> str:
        return f"tag:{self.resource}" if self.kind == TAG else self.resource


# --- scenarios -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Held:
    """A flow that holds a global limit for a while, lets go, and comes back later."""

    resource: str
    flow: str
    task: str
    run: str  # flow run names are "<run>-<month><day>-<hour><minute>"


HELD = (
    Held("resource:db:orders-primary", "nightly-orders-etl", "load-orders", "orders-etl"),
    Held(
        "resource:warehouse:snowflake-reporting",
        "refresh-dashboards",
        "refresh-sales-dashboard",
        "dashboards",
    ),
    Held("resource:api:stripe-account-3", "sync-stripe-payouts", "fetch-payouts", "stripe-payouts"),
    Held("resource:search:products-index", "rebuild-search-index", "reindex-products", "reindex"),
)

# One tag limit with a holder and a queue of two: whoever gets in first holds, the others wait.
CONTENDED_TAG = "resource:table:finance.ledger"
CONTENDED_FLOWS = (
    ("close-books", "post-journal-entries", "close-books"),
    ("reconcile-ledger", "match-bank-lines", "reconcile"),
    ("ledger-audit-export", "export-ledger", "audit-export"),
)

# A holder whose process is killed with SIGKILL: Prefect keeps its runs Running forever.
CRASHED = ("resource:sftp:partner-uploads", "upload-partner-files", "push-files", "partner-upload")

# A slot taken with the lease-less REST `increment` by an old script and never given back.
LEAKED = "resource:db:legacy-crm"

# `with tags(tag): outer()` where outer calls inner with the same tag: waits on itself forever.
DEADLOCKED = (
    "resource:table:analytics.daily_sales",
    "rebuild-daily-sales",
    "aggregate-sales",
    "write-partition",
    "daily-sales-rebuild",
)

# A deployment with concurrency_limit=1 and two runs at a time: one runs, one waits its turn.
DEPLOYMENT = ("monthly-invoices", "export-invoices")


def scenario_resources() -> list[Resource]:
    """The limits the scenarios need (the deployment's limit comes with its deployment)."""
    return [
        *(Resource(GLOBAL, held.resource) for held in HELD),
        Resource(TAG, CONTENDED_TAG),
        Resource(TAG, CRASHED[0]),
        Resource(GLOBAL, LEAKED),
        Resource(TAG, DEADLOCKED[0]),
    ]


# --- the rest: resources nobody is using right now -----------------------------------------
_DATABASES = (
    "orders",
    "billing",
    "inventory",
    "customers",
    "payments",
    "shipping",
    "catalog",
    "reviews",
    "loyalty",
    "fraud",
    "crm",
    "hr",
    "ledger",
    "auth",
    "pricing",
    "returns",
)
_DB_ROLES = ("primary", "replica-1", "replica-2", "staging")
_SCHEMAS = ("analytics", "finance", "marketing", "sales", "ops", "product")
_TABLES = (
    "daily_sales",
    "weekly_revenue",
    "customer_ltv",
    "churn_scores",
    "inventory_snapshot",
    "ad_spend",
    "web_sessions",
    "refunds",
    "invoices",
    "forecasts",
    "cohorts",
    "funnel_events",
)
_BUCKETS = (
    "raw-events",
    "clickstream",
    "exports",
    "ml-features",
    "backups",
    "invoices-archive",
    "partner-drops",
    "logs-archive",
    "product-images",
    "reports",
)
_REGIONS = ("eu-west-1", "us-east-1", "ap-southeast-2")
_APIS = (
    *(f"stripe-account-{n}" for n in range(1, 13)),
    *(f"shopify-store-{n}" for n in range(1, 9)),
    *(f"hubspot-portal-{n}" for n in range(1, 5)),
    *(f"google-ads-customer-{n}" for n in range(1, 7)),
    *(f"twilio-subaccount-{n}" for n in range(1, 5)),
    "salesforce-prod",
    "salesforce-sandbox",
    "netsuite-prod",
    "netsuite-sandbox",
    "zendesk",
    "sendgrid",
    "mailchimp",
    "quickbooks",
    "adyen-merchant-eu",
    "adyen-merchant-us",
)
_WAREHOUSES = (
    "snowflake-loading",
    "snowflake-transform",
    "snowflake-adhoc",
    "bigquery-reporting",
    "bigquery-ml",
    "redshift-etl",
    "redshift-legacy",
    "databricks-jobs",
)
_SFTP = (
    "partner-acme",
    "partner-globex",
    "partner-initech",
    "partner-umbrella",
    "bank-statements",
    "edi-inbound",
    "edi-outbound",
    "payroll-provider",
)
_TOPICS = ("orders-events", "payments-events", "inventory-changes", "user-signups", "audit-log")
_MISC = (
    "resource:gpu:a100-node-{n}",
    "resource:search:{name}-index",
    "resource:lock:{name}-month-end",
    "resource:dbt:{name}-marts",
)
_MISC_NAMES = ("products", "customers", "orders", "finance", "marketing", "support")


def _families() -> list[Iterator[tuple[str, int]]]:
    """(name, limit) generators, one per kind of resource; shared pools get limits above 1."""
    return [
        ((f"resource:db:{db}-{role}", 1) for db in _DATABASES for role in _DB_ROLES),
        ((f"resource:table:{schema}.{table}", 1) for table in _TABLES for schema in _SCHEMAS),
        ((f"resource:s3:{bucket}-{region}", 1) for bucket in _BUCKETS for region in _REGIONS),
        ((f"resource:api:{api}", 1 + n % 3) for n, api in enumerate(_APIS)),
        ((f"resource:warehouse:{name}", 1 + n % 2) for n, name in enumerate(_WAREHOUSES)),
        ((f"resource:sftp:{name}", 1) for name in _SFTP),
        ((f"resource:kafka:{topic}-partition-{p}", 1) for p in range(8) for topic in _TOPICS),
        (
            (pattern.format(n=n + 1, name=name), 2 if "gpu" in pattern else 1)
            for n, name in enumerate(_MISC_NAMES)
            for pattern in _MISC
        ),
    ]


def filler(count: int, taken: set[str]) -> list[Resource]:
    """`count` resources (about one in seven a tag limit), skipping names in `taken`."""
    found: list[Resource] = []
    seen = set(taken)
    families = _families()
    numbered = (f"resource:batch:job-{n:04d}" for n in itertools.count(1))
    while len(found) < count:
        progressed = False
        for family in families:
            item = next(family, None)
            if item is None:
                continue
            progressed = True
            name, limit = item
            if name in seen:
                continue
            seen.add(name)
            # Tag limits guard what tasks touch (tables, buckets) and are always of 1.
            kind = TAG if len(found) % 7 == 3 and ":api:" not in name else GLOBAL
            found.append(Resource(kind, name, 1 if kind == TAG else limit))
            if len(found) == count:
                break
        if not progressed:
            name = next(numbered)
            if name not in seen:
                seen.add(name)
                found.append(Resource(GLOBAL, name))
    return found


def resources(total: int, prefix: str = "") -> list[Resource]:
    """The scenarios' resources first, then filler up to `total` (never fewer than the first)."""
    scenario = scenario_resources()
    rest = filler(max(0, total - len(scenario)), {r.resource for r in scenario})
    return [Resource(r.kind, prefix + r.resource, r.limit) for r in [*scenario, *rest]]
