"""Bulk import: CSV rows validated and deduped as POST /v1/leads does, streamed in batches, safe to re-run."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.lead_intake import import_api, store
from services.lead_intake.domain import Lead
from services.lead_intake.importer import (
    MAX_ROW_BYTES,
    CsvRefused,
    ImportSummary,
    Oversized,
    RecordSplitter,
    RowError,
    import_csv_file,
    import_rows,
    read_csv,
    submission_fields,
)
from services.lead_intake.settings import Settings
from shared.problems import PROBLEM_JSON, install_problem_handlers
from shared.uow import UnitOfWork
from tests.unit.fakes import migrated_unit_of_work, outbox_events

ADMIN_KEY = "test-admin-key"
LEADS_CSV = (
    "Email, First Name ,company,Plan,interests\n"
    'ada@acme.example,Ada,Acme,pro,"ai; crm,  data"\n'
    "not-an-email,Bob,Bobco,free,\n"
    "\n"
    "carol@initech.example,Carol,Initech,,\n"
    ",Nobody,,,\n"
)


@pytest.fixture
async def uow(engine: AsyncEngine) -> UnitOfWork:
    return await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="lead_intake")


async def _import(uow: UnitOfWork, text: str, *, batch_size: int = 500) -> tuple[ImportSummary, list[RowError]]:
    errors: list[RowError] = []
    summary = await import_rows(uow, read_csv([text.encode()]), batch_size=batch_size, on_error=errors.append)
    return summary, errors


async def _stored(uow: UnitOfWork) -> dict[str, Lead]:
    async with uow.read() as session:
        emails = list((await session.scalars(select(store.leads.c.email))).all())
        return await store.find_leads_by_email(session, emails=emails)


def _counts(summary: ImportSummary) -> tuple[int, int, int, int, int]:
    return summary.rows, summary.captured, summary.merged, summary.unchanged, summary.rejected


async def test_valid_rows_are_captured_and_invalid_ones_rejected_with_their_line(uow: UnitOfWork) -> None:
    summary, errors = await _import(uow, LEADS_CSV)

    assert _counts(summary) == (4, 2, 0, 0, 2)  # the blank line 4 is no row
    assert set(await _stored(uow)) == {"ada@acme.example", "carol@initech.example"}
    assert [(error.line, error.email, [e["field"] for e in error.errors]) for error in errors] == [
        (3, "not-an-email", ["email"]),
        (6, None, ["email"]),
    ]


async def test_columns_match_fields_loosely_and_unknown_columns_become_attributes(uow: UnitOfWork) -> None:
    await _import(uow, LEADS_CSV)

    ada = (await _stored(uow))["ada@acme.example"]
    assert (ada.first_name, ada.company, ada.interests) == ("Ada", "Acme", ("ai", "crm", "data"))
    assert ada.attributes == {"Plan": "pro"}
    assert (await _stored(uow))["carol@initech.example"].attributes == {}


def test_blank_cells_are_absent_and_interests_split_on_commas_or_semicolons() -> None:
    fields = submission_fields({"EMAIL": "a@b.example", "city": " ", "Interests": "ai;;crm, ", "Source list": "x"})
    assert fields == {
        "email": "a@b.example",
        "city": " ",
        "interests": ["ai", "crm"],
        "attributes": {"Source list": "x"},
    }


async def test_reimporting_the_same_rows_changes_nothing_and_emits_nothing(uow: UnitOfWork) -> None:
    await _import(uow, LEADS_CSV)
    events_before = await outbox_events(uow, store.metadata)

    summary, _ = await _import(uow, LEADS_CSV)

    assert _counts(summary) == (4, 0, 0, 2, 2)
    assert await outbox_events(uow, store.metadata) == events_before


async def test_a_reimported_row_with_new_values_merges_into_the_lead(uow: UnitOfWork) -> None:
    await _import(uow, "email,company\nada@acme.example,Acme\n")

    summary, _ = await _import(uow, "email,job_title\nADA@acme.example,CTO\n")

    assert _counts(summary) == (1, 0, 1, 0, 0)
    ada = (await _stored(uow))["ada@acme.example"]
    assert (ada.company, ada.job_title) == ("Acme", "CTO")


async def test_duplicate_emails_within_the_file_make_one_lead(uow: UnitOfWork) -> None:
    text = "email,company,job_title\nada@acme.example,Acme,\nAda@Acme.example,,CTO\nada@acme.example,Acme,\n"

    summary, _ = await _import(uow, text, batch_size=2)

    assert _counts(summary) == (3, 1, 1, 1, 0)
    assert list(await _stored(uow)) == ["ada@acme.example"]
    assert (await _stored(uow))["ada@acme.example"].job_title == "CTO"


async def test_rows_are_captured_in_batches(uow: UnitOfWork) -> None:
    text = "email\n" + "".join(f"lead{n}@acme.example\n" for n in range(5))
    seen: list[int] = []

    summary = await import_rows(
        uow, read_csv([text.encode()]), batch_size=2, on_progress=lambda progress: seen.append(progress.captured)
    )

    assert _counts(summary) == (5, 5, 0, 0, 0)
    assert seen == [2, 4, 5]
    assert len(await _stored(uow)) == 5


async def test_a_file_without_an_email_column_is_refused_before_any_row(uow: UnitOfWork) -> None:
    with pytest.raises(CsvRefused, match="no email column") as refused:
        await _import(uow, "name,company\nAda,Acme\n")
    assert refused.value.field == "email"
    assert await _stored(uow) == {}


async def test_a_column_given_twice_is_refused(uow: UnitOfWork) -> None:
    with pytest.raises(CsvRefused, match="both give 'first_name'"):
        await _import(uow, "email,first_name,First Name\n")


async def test_an_excel_byte_order_mark_is_not_part_of_the_first_column(uow: UnitOfWork) -> None:
    summary = await import_rows(uow, read_csv([b"\xef\xbb\xbfEmail\r\nada@acme.example\r\n"]))
    assert summary.captured == 1


async def test_unreadable_rows_are_rejected_and_the_rest_imported(uow: UnitOfWork) -> None:
    huge = "x" * (MAX_ROW_BYTES + 1)
    text = f'email,notes\n"too@long.example","{huge}\n{huge}"\nok@acme.example,fine\nextra@acme.example,a,b\n'
    chunks = [text.encode()[start : start + 1000] for start in range(0, len(text), 1000)]
    chunks.insert(3, b"")
    errors: list[RowError] = []

    summary = await import_rows(uow, read_csv(chunks), on_error=errors.append)

    assert _counts(summary) == (3, 1, 0, 0, 2)
    assert [(error.line, error.errors[0]["message"].split(" ")[:2]) for error in errors] == [
        (2, ["row", "of"]),
        (4, ["row", "has"]),
    ]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64])
async def test_records_split_across_chunks_read_as_the_csv_module_reads_the_whole_text(chunk_size: int) -> None:
    text = (
        'email,notes\r\na@x.example,"line one\nline ""two"", still"\r\n'
        'b@x.example,plain "quote\n"c@x.example",\n\nd@x.example,"'
    )
    data = text.encode()
    splitter = RecordSplitter()
    records: list[bytes | Oversized] = []
    for start in range(0, len(data), chunk_size):
        records += splitter.feed(data[start : start + chunk_size])
    records += splitter.finish()

    assert all(isinstance(record, bytes) for record in records)
    parsed = [next(csv.reader([record.decode()]), []) for record in records if isinstance(record, bytes)]
    assert parsed == list(csv.reader(io.StringIO(text, newline="")))


async def test_a_csv_file_is_imported_with_rejected_rows_written_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(LEADS_CSV, encoding="utf-8")
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}")

    summary = await import_csv_file(settings, path, batch_size=2)

    assert _counts(summary) == (4, 2, 0, 0, 2)
    with (tmp_path / "leads.csv.errors.csv").open(encoding="utf-8", newline="") as errors:
        rows = list(csv.DictReader(errors))
    assert [(row["line"], row["email"]) for row in rows] == [("3", "not-an-email"), ("6", "")]
    assert rows[0]["errors"].startswith("email: value is not a valid email address")
    out, err = capsys.readouterr()
    assert "4 rows: 2 captured, 0 merged, 0 unchanged, 2 rejected" in out
    assert "\r100.0%" in err


async def test_a_clean_import_leaves_no_errors_file(tmp_path: Path) -> None:
    path, errors = tmp_path / "leads.csv", tmp_path / "rejected.csv"
    path.write_text("email\nada@acme.example\n", encoding="utf-8")
    errors.write_text("stale\n", encoding="utf-8")
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}")

    summary = await import_csv_file(settings, path, errors_path=errors)

    assert (summary.captured, summary.rejected) == (1, 0)
    assert not errors.exists()


# --- POST /v1/leads/import ---------------------------------------------------------------------------------------


def _import_app(uow: UnitOfWork) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(import_api.router)
    app.state.admin_key = ADMIN_KEY
    app.state.runtime = SimpleNamespace(uow=uow)
    return app


async def _post(uow: UnitOfWork, body: bytes, content_type: str = "text/csv; charset=utf-8") -> httpx.Response:
    async def in_small_chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 5):
            yield body[start : start + 5]

    transport = httpx.ASGITransport(app=_import_app(uow))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(
            "/v1/leads/import",
            content=in_small_chunks(),
            headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": content_type},
        )


async def test_posting_a_csv_imports_it_and_reports_rejected_rows(uow: UnitOfWork) -> None:
    response = await _post(uow, LEADS_CSV.encode())

    assert response.status_code == 200
    report = response.json()
    assert {key: report[key] for key in ("rows", "captured", "merged", "unchanged", "rejected")} == {
        "rows": 4,
        "captured": 2,
        "merged": 0,
        "unchanged": 0,
        "rejected": 2,
    }
    assert [(error["line"], error["email"]) for error in report["errors"]] == [(3, "not-an-email"), (6, None)]
    assert report["errors_truncated"] is False
    assert set(await _stored(uow)) == {"ada@acme.example", "carol@initech.example"}


async def test_posting_lists_only_the_first_hundred_rejected_rows(uow: UnitOfWork) -> None:
    body = ("email\n" + "bad\n" * 101).encode()

    report = (await _post(uow, body)).json()

    assert (report["rejected"], len(report["errors"]), report["errors_truncated"]) == (101, 100, True)


async def test_posting_another_media_type_is_a_415_problem(uow: UnitOfWork) -> None:
    response = await _post(uow, b'{"email": "ada@acme.example"}', content_type="application/json")
    assert response.status_code == 415
    assert response.headers["content-type"] == PROBLEM_JSON


async def test_posting_a_csv_without_an_email_column_is_a_422_problem_naming_it(uow: UnitOfWork) -> None:
    response = await _post(uow, b"name\nAda\n")
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    assert [error["field"] for error in response.json()["errors"]] == ["email"]


async def test_posting_without_a_key_is_a_401_problem(uow: UnitOfWork) -> None:
    transport = httpx.ASGITransport(app=_import_app(uow))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/v1/leads/import", content=b"email\n", headers={"Content-Type": "text/csv"})
    assert response.status_code == 401


async def test_reimporting_a_row_with_marketing_consent_changes_nothing(uow: UnitOfWork) -> None:
    text = "email,consent_marketing,consent_wording_version\nada@acme.example,yes,v1\n"
    await _import(uow, text)

    summary, _ = await _import(uow, text)

    assert _counts(summary) == (1, 0, 0, 1, 0)
