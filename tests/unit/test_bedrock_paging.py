"""Keyset pagination (issue 9, item 5): signed cursors, stable under creates and deletes between pages."""

from __future__ import annotations

import base64
import stat
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tuneforge.catalog.custom import CustomModelFilter
from tuneforge.db.listing import Cursor, Page, PageTokens
from tuneforge.db.tables import CustomModel, ProvisionedModel, utcnow
from tuneforge.errors import ValidationException
from tuneforge.jobs.service import CreateJobRequest, JobFilter
from tuneforge.services import Services
from tuneforge.serving.throughput import ThroughputFilter
from tuneforge.settings import Settings

BASE = "tuneforge.forge-micro-v1:0:512"
BASE_ARN = f"arn:aws:bedrock:us-east-1::foundation-model/{BASE}"


@pytest.fixture
def services(fast_tmp: Path, db_url: str | None) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data", database_url=db_url))
    yield created
    created.close()


# -- tokens ------------------------------------------------------------------------------------


def test_token_round_trips_the_cursor_within_its_scope(services: Services) -> None:
    cursor = Cursor(utcnow(), "abcdefghij12")
    token = services.page_tokens.encode("ListCustomModels:{}", cursor)
    assert token is not None
    assert services.page_tokens.decode("ListCustomModels:{}", token) == cursor
    assert services.page_tokens.encode("scope", None) is None
    assert services.page_tokens.decode("scope", None) is None


def _flip(token: str, index: int) -> str:
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1 :]


def test_tampered_token_is_an_invalid_pagination_token(services: Services) -> None:
    token = services.page_tokens.encode("scope", Cursor(utcnow(), "abcdefghij12"))
    assert token is not None
    for index in (0, len(token) // 2, len(token) - 2):
        with pytest.raises(ValidationException, match=r"^Invalid pagination token$"):
            services.page_tokens.decode("scope", _flip(token, index))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!!",
        "abc",
        "not a token at all",
        base64.urlsafe_b64encode(b'{"offset": 2}').decode(),
        base64.urlsafe_b64encode(b'["2024-01-01T00:00:00+00:00", "x"]' + b"\0" * 16).decode(),
        "A" * 3000,
    ],
)
def test_garbage_or_offset_token_is_an_invalid_pagination_token(services: Services, token: str) -> None:
    with pytest.raises(ValidationException, match=r"^Invalid pagination token$"):
        services.page_tokens.decode("scope", token)


def test_token_of_another_query_is_refused(services: Services) -> None:
    token = services.page_tokens.encode("ListModelCustomizationJobs:{nameContains: a}", Cursor(utcnow(), "x"))
    assert token is not None
    with pytest.raises(ValidationException, match="Invalid pagination token"):
        services.page_tokens.decode("ListModelCustomizationJobs:{nameContains: b}", token)


def test_key_is_private_kept_across_restarts_and_differs_between_servers(fast_tmp: Path) -> None:
    path = fast_tmp / "data" / "pagination.key"
    first = PageTokens.from_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = first.encode("scope", Cursor(utcnow(), "abc"))
    assert token is not None
    assert PageTokens.from_key_file(path).decode("scope", token) is not None
    with pytest.raises(ValidationException, match="Invalid pagination token"):
        PageTokens.from_key_file(fast_tmp / "other" / "pagination.key").decode("scope", token)


# -- keyset paging under creates and deletes -----------------------------------------------------


def add_custom_model(services: Services, name: str, created: Any = None) -> str:
    model_id = name.replace("-", "")[:12].ljust(12, "0")
    arn = services.arns.custom_model(BASE, model_id)
    with services.db.session() as session:
        session.add(
            CustomModel(
                id=model_id,
                arn=arn,
                name=name,
                base_model_id=BASE,
                base_model_arn=BASE_ARN,
                customization_type="FINE_TUNING",
                hyperparameters={},
                training_data={},
                validation_data={},
                output_data={},
                weights_path=str(services.settings.models_dir / "custom" / model_id),
                created_at=created or utcnow(),
            )
        )
    return name


def add_throughput(services: Services, name: str, created: Any = None) -> str:
    pid = name.replace("-", "")[:12].ljust(12, "0")
    now = created or utcnow()
    with services.db.session() as session:
        session.add(
            ProvisionedModel(
                id=pid,
                arn=services.arns.provisioned_model(pid),
                name=name,
                request_fingerprint="x",
                model_units=1,
                model_arn=BASE_ARN,
                desired_model_arn=BASE_ARN,
                foundation_model_arn=BASE_ARN,
                status="InService",
                price_per_model_unit_hour=1.0,
                created_at=now,
                updated_at=now,
            )
        )
    return name


def add_job(services: Services, name: str, created: Any = None) -> str:
    services.jobs.create(
        CreateJobRequest(
            job_name=name,
            custom_model_name=f"{name}-model",
            role_arn="arn:aws:iam::123456789012:role/BedrockRole",
            base_model_identifier=BASE,
            customization_type="FINE_TUNING",
            training_uri="s3://bucket/train.jsonl",
            output_uri="s3://bucket/out/",
        )
    )
    return name


Lister = Callable[[Services, bool, Cursor | None, int], Page[Any]]
Adder = Callable[[Services, str, Any], str]

LISTS: dict[str, tuple[Adder, Lister, Callable[[Services, str], None] | None]] = {
    "jobs": (
        add_job,
        lambda s, desc, after, limit: s.jobs.list_jobs(JobFilter(sort_descending=desc), after, limit),
        None,
    ),
    "custom-models": (
        add_custom_model,
        lambda s, desc, after, limit: s.custom_models.list_models(
            CustomModelFilter(sort_descending=desc), after, limit
        ),
        lambda s, name: s.custom_models.delete(name),
    ),
    "provisioned-throughputs": (
        add_throughput,
        lambda s, desc, after, limit: s.throughput.list_throughputs(
            ThroughputFilter(sort_descending=desc), after, limit
        ),
        lambda s, name: s.throughput.delete(name),
    ),
}


@pytest.mark.parametrize("descending", [True, False], ids=["descending", "ascending"])
@pytest.mark.parametrize("kind", list(LISTS))
def test_paging_with_creates_and_deletes_between_pages_repeats_and_misses_nothing(
    services: Services, kind: str, descending: bool
) -> None:
    add, list_page, delete = LISTS[kind]
    names = [add(services, f"item-{i:02d}", None) for i in range(7)]
    seen: list[str] = []
    deleted: set[str] = set()
    after: Cursor | None = None
    for round_ in range(20):
        page = list_page(services, descending, after, 2)
        seen += [item.name for item in page.items]
        if page.next_cursor is None:
            break
        after = page.next_cursor
        add(services, f"new-{round_:02d}", None)
        if delete is not None and round_ < 2:
            # One item already listed and one not listed yet: neither may shift the pages.
            unseen = [name for name in names if name not in seen and name not in deleted]
            for victim in (seen[round_], unseen[-1]):
                delete(services, victim)
                deleted.add(victim)
    assert len(seen) == len(set(seen)), f"repeated: {seen}"
    missed = {name for name in names if name not in deleted} - set(seen)
    assert not missed, f"missed: {missed}"


@pytest.mark.parametrize("descending", [True, False], ids=["descending", "ascending"])
def test_rows_created_in_the_same_instant_page_by_id(services: Services, descending: bool) -> None:
    instant = utcnow() - timedelta(minutes=1)
    names = [add_custom_model(services, f"same-{i}", instant) for i in range(5)]
    seen: list[str] = []
    after: Cursor | None = None
    while True:
        page = services.custom_models.list_models(CustomModelFilter(sort_descending=descending), after, 2)
        seen += [model.name for model in page.items]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    assert sorted(seen) == sorted(names) and len(seen) == 5
