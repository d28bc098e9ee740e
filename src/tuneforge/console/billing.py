"""The billing banner: what is costing money right now, shown on every console page.

Two kinds of thing bill: a provisioned throughput costs its model units by the hour from creation
to deletion whether or not anyone calls it, and a custom model deployment costs its tokens (nothing
while idle). The banner names both, with the hourly rate of the one and this month's spend of the
other, so a forgotten deployment is in sight on every page until it is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy import select

from tuneforge.db.tables import CustomModelDeployment, ProvisionedModel
from tuneforge.services import Services

BILLING_STATUSES = ("Creating", "InService", "Updating")
"""Provisioned throughput bills from creation to deletion, whatever it is doing meanwhile."""

LIVE_DEPLOYMENT_STATUSES = ("Creating", "Active")
"""A custom model deployment bills the tokens it serves for as long as it exists and has not failed."""


@dataclass(frozen=True)
class Billing:
    kind: str
    name: str
    href: str
    rate: str


def billing_now(services: Services) -> list[Billing]:
    """Every provisioned throughput (with its hourly rate) and every live deployment (per token, with
    this month's spend, counting tokens the meter has not flushed to the ledger yet)."""
    price = services.settings.price_per_model_unit_hour
    with services.db.session() as session:
        throughputs = session.scalars(
            select(ProvisionedModel)
            .where(ProvisionedModel.status.in_(BILLING_STATUSES))
            .order_by(ProvisionedModel.created_at)
        ).all()
        deployments = session.scalars(
            select(CustomModelDeployment)
            .where(
                CustomModelDeployment.deleted_at.is_(None),
                CustomModelDeployment.status.in_(LIVE_DEPLOYMENT_STATUSES),
            )
            .order_by(CustomModelDeployment.created_at)
        ).all()
        items = [
            Billing(
                "Provisioned throughput",
                row.name,
                f"/console/throughput/{quote(row.name, safe='')}",
                f"${row.model_units * price:,.2f}/hour",
            )
            for row in throughputs
        ]
        named = [(row.id, row.name) for row in deployments]
    return items + [
        Billing(
            "Deployment",
            name,
            f"/console/deployments/{quote(name, safe='')}",
            f"per token, ${services.meter.month_to_date_cost(deployment_id):,.4f} this month",
        )
        for deployment_id, name in named
    ]
