"""The billing banner: what is costing money right now, shown on every console page."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from tuneforge.db.tables import ProvisionedModel
from tuneforge.services import Services

BILLING_STATUSES = ("Creating", "InService", "Updating")
"""Provisioned throughput bills from creation to deletion, whatever it is doing meanwhile."""


@dataclass(frozen=True)
class Billing:
    kind: str
    name: str
    href: str
    rate: str


def billing_now(services: Services) -> list[Billing]:
    """Every provisioned throughput that bills by the hour, with its rate."""
    price = services.settings.price_per_model_unit_hour
    with services.db.session() as session:
        rows = session.scalars(
            select(ProvisionedModel)
            .where(ProvisionedModel.status.in_(BILLING_STATUSES))
            .order_by(ProvisionedModel.created_at)
        ).all()
        return [
            Billing(
                "Provisioned throughput",
                row.name,
                f"/console/throughput/{row.id}",
                f"${row.model_units * price:,.2f}/hour",
            )
            for row in rows
        ]
