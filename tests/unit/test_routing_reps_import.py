"""Importing reps from CSV: cells to profiles, every bad row reported by number, all rows stored or none."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from services import cli
from services.routing import reps_import_api, store
from services.routing.app import create_app
from services.routing.reps_import import (
    InvalidRoster,
    RowError,
    import_reps,
    parse_out_of_office,
    parse_reps_csv,
    parse_working_hours,
)
from services.routing.settings import Settings
from shared.uow import UnitOfWork
from tests.support.inprocess import ADMIN_KEY, offline_settings, running
from tests.unit.fakes import migrated_unit_of_work

HEADER = (
    "rep_id,name,email,team,manager,languages,skills,territories,segments,weight,max_open,max_per_day,timezone,"
    "working_hours,out_of_office,active\n"
)
GOOD = HEADER + (
    "rep-a,Aiko Sato,AIKO@example.com,apac,mgr@example.com,ja;en,saas|fintech,jp;kr,smb,3,40,10,Asia/Tokyo,"
    '"mon-fri 09:00-12:00,13:00-18:00; sat 10:00-14:00",2026-12-24T00:00+09:00/2026-12-27T00:00+09:00,true\n'
    "rep-b,Ben Okafor,ben@example.com,,,,,,,,,,,,,\n"
    ",,,,,,,,,,,,,,,\n"
    ',Cleo Park,cleo@example.com,emea,,,,,,,,,Europe/Paris,"{""mon"": [[""08:00"", ""17:00""]]}",,no\n'
)


@pytest.fixture
async def uow(engine: AsyncEngine) -> UnitOfWork:
    return await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="routing")


def test_a_good_file_becomes_reps_with_lists_hours_absences_and_defaults() -> None:
    aiko, ben, cleo = parse_reps_csv(GOOD)
    assert (aiko.rep_id, aiko.name, str(aiko.email), aiko.team) == ("rep-a", "Aiko Sato", "AIKO@example.com", "apac")
    assert (aiko.languages, aiko.skills, aiko.territories) == (["ja", "en"], ["saas", "fintech"], ["JP", "KR"])
    assert (aiko.weight, aiko.max_open, aiko.max_per_day, aiko.timezone) == (3, 40, 10, "Asia/Tokyo")
    assert aiko.working_hours is not None
    assert aiko.working_hours["fri"] == [["09:00", "12:00"], ["13:00", "18:00"]]
    assert aiko.working_hours["sat"] == [["10:00", "14:00"]]
    assert "sun" not in aiko.working_hours
    assert aiko.out_of_office[0].start.isoformat() == "2026-12-24T00:00:00+09:00"
    assert (ben.team, ben.languages, ben.weight, ben.timezone, ben.working_hours, ben.active) == (
        None, [], 1, "UTC", None, True)  # fmt: skip
    assert (cleo.rep_id, cleo.active, cleo.working_hours) == (None, False, {"mon": [["08:00", "17:00"]]})


def test_working_hours_ranges_wrap_past_sunday_and_24_00_ends_a_day() -> None:
    evenings = {day: [["18:00", "00:00"]] for day in ("fri", "sat", "sun", "mon")}
    assert parse_working_hours("fri-mon 18:00-24:00") == evenings
    assert parse_working_hours("mon,wed 09:00-17:00") == {"mon": [["09:00", "17:00"]], "wed": [["09:00", "17:00"]]}
    with pytest.raises(ValueError, match="unknown weekday 'mnday'"):
        parse_working_hours("mnday 09:00-17:00")
    with pytest.raises(ValueError, match="not a time span"):
        parse_working_hours("mon 9-5")
    with pytest.raises(ValueError, match="<start>/<end>"):
        parse_out_of_office("2026-12-24T00:00+09:00")


def test_every_bad_row_is_reported_with_its_row_number_and_field() -> None:
    text = HEADER + (
        "rep-a,Aiko,aiko@example.com,,,,,,,,,,,,,\n"
        "rep-b,Ben,not-an-email,,,,,,,0,,,Mars/Olympus,,,\n"
        "rep-c,Cleo,cleo@example.com,,,,,,,,,,,mon 17:00-09:00,2026-12-27T00:00+09:00/2026-12-24T00:00+09:00,\n"
        "rep-a,Dan,AIKO@example.com,,,,,,,,,,,tues 09:00-17:00,,maybe\n"
    )
    with pytest.raises(InvalidRoster) as refused:
        parse_reps_csv(text)
    found = {(error.row, error.field) for error in refused.value.errors}
    assert found == {
        (3, "email"), (3, "weight"), (3, "timezone"),
        (4, "working_hours"), (4, "out_of_office.0"),
        (5, "working_hours"), (5, "active"), (5, "rep_id"), (5, "email"),
    }  # fmt: skip
    assert RowError(5, "rep_id", "rep-a is also on row 2") in refused.value.errors
    assert [error.row for error in refused.value.errors] == sorted(error.row for error in refused.value.errors)
    assert refused.value.errors[0].as_problem()["field"].startswith("row 3.")


def test_a_header_without_name_or_with_unknown_columns_is_refused_as_row_1() -> None:
    with pytest.raises(InvalidRoster) as refused:
        parse_reps_csv("rep_id,email,colour\nrep-a,a@example.com,red\n")
    assert {(error.row, error.field) for error in refused.value.errors} == {(1, "colour"), (1, "name")}


async def test_nothing_is_stored_when_any_row_is_bad(uow: UnitOfWork) -> None:
    with pytest.raises(InvalidRoster):
        await import_reps(uow, GOOD + "rep-z,Zed,zed-at-nowhere,,,,,,,,,,,,,\n")
    async with uow.read() as session:
        assert await store.list_reps(session) == []


async def test_importing_creates_then_updates_the_same_reps_matched_by_id_or_email(uow: UnitOfWork) -> None:
    assert await import_reps(uow, GOOD) == {"created": 3, "updated": 0}
    assert await import_reps(uow, GOOD.replace("Cleo Park", "Cleo Park-Lee")) == {"created": 0, "updated": 3}
    async with uow.read() as session:
        reps = {row["email"]: row for row in await store.list_reps(session)}
    assert len(reps) == 3
    assert reps["cleo@example.com"]["name"] == "Cleo Park-Lee"
    assert reps["aiko@example.com"]["working_hours"]["mon"] == [["09:00", "12:00"], ["13:00", "18:00"]]


async def test_post_reps_import_stores_a_csv_or_answers_422_naming_each_row(tmp_path: Path) -> None:
    settings = offline_settings(Settings, tmp_path)

    def with_import(settings: Settings) -> FastAPI:
        app = create_app(settings)
        app.include_router(reps_import_api.router)
        return app

    async with running(with_import, settings) as (_, client):
        admin = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "text/csv"}
        bad = await client.post("/v1/reps/import", content=HEADER + ",Nobody,nope,,,,,,,,,,,,,\n", headers=admin)
        good = await client.post("/v1/reps/import", content=GOOD.encode(), headers=admin)
        as_json = {"Authorization": admin["Authorization"]}
        json_body = await client.post("/v1/reps/import", json={"reps": []}, headers=as_json)
        anonymous = await client.post("/v1/reps/import", content=GOOD, headers={"Content-Type": "text/csv"})
        listed = await client.get("/v1/reps", headers=admin)
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["errors"] == [{"field": "row 2.email", "message": bad.json()["errors"][0]["message"]}]
    assert (good.status_code, good.json()) == (200, {"created": 3, "updated": 0})
    assert json_body.status_code == 415
    assert anonymous.status_code == 401
    assert {"rep-a", "rep-b"} <= {rep["rep_id"] for rep in listed.json()}


def test_the_cli_prints_counts_or_exits_1_with_each_problem_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BATON_ROUTING_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'routing.db'}")
    good, bad = tmp_path / "reps.csv", tmp_path / "bad.csv"
    good.write_text(GOOD, encoding="utf-8")
    bad.write_text(HEADER + "rep-x,X,x-at-nowhere,,,,,,,,,,,,,\n", encoding="utf-8")
    cli.main(["reps", "import", str(good)])
    assert capsys.readouterr().out.strip() == f"{good}: 3 created, 0 updated"
    with pytest.raises(SystemExit) as exited:
        cli.main(["reps", "import", str(bad)])
    assert exited.value.code == 1
    assert f"{bad}: row 2, email:" in capsys.readouterr().err
