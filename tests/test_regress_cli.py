"""`farm regressions`, `farm check`, the webhook and the history page on a stored synthetic history."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_regress import history, night_result, noisy_times, webhook_server  # noqa: F401 (fixture)
from typer.testing import CliRunner

from farm.cli.main import app
from farm.results.store import ResultStore
from farm.settings import get_settings


@pytest.fixture()
def stored(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ResultStore]:
    """15 nights on box7 with a 20% slowdown on the last; 15 quiet nights on box8."""
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    store = ResultStore.from_url(redis_url)
    rng = random.Random(11)
    quiet = [night_result(i, noisy_times(rng, 2.0), tag="box8") for i in range(15)]
    for r in quiet:
        r.job_id = r.job_id.replace("-000", "-001")
    for r in [*history(15, step_at=14), *quiet]:
        store.create_run(r.run_id, [r.spec], [], name="nightly")
        assert store.put_result(r)
    yield store


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def test_regressions_lists_the_injected_slowdown_only(stored: ResultStore) -> None:
    code, text = cli("regressions", "--json", "--no-notify")
    assert code == 0, text
    (v,) = json.loads(text)
    assert v["kind"] == "regression" and v["machine"] == "box7" and v["run_id"] == "n014"
    assert 0.12 < v["change"] < 0.28 and v["confidence"] > 0.99
    code, text = cli("regressions", "--all", "--no-notify")
    assert code == 0 and "1 regressions in 2 judged" in text and "unchanged" in text
    code, text = cli("regressions", "--all", "--no-notify", "--machine", "box8", "--json")
    assert code == 0 and [(v["machine"], v["kind"]) for v in json.loads(text)] == [("box8", "unchanged")]


def test_regressions_since_judges_every_night_in_the_window(stored: ResultStore) -> None:
    code, text = cli("regressions", "--since", "2026-11-10", "--json", "--all", "--no-notify")
    verdicts = json.loads(text)
    assert code == 0 and len(verdicts) == 2 * 6  # nights 9..14 on two machines
    assert [v["run_id"] for v in verdicts if v["kind"] != "unchanged"] == ["n014"]


def test_check_exits_1_on_a_regressed_run(stored: ResultStore) -> None:
    assert cli("check", "n014", "--no-notify")[0] == 1
    code, text = cli("check", "n013", "--json", "--no-notify")
    assert code == 0 and {v["kind"] for v in json.loads(text)["verdicts"]} == {"unchanged"}
    assert cli("check", "nope")[0] == 4


def test_webhook_receives_the_regression(
    stored: ResultStore,
    webhook_server: tuple[str, list[dict]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, received = webhook_server
    monkeypatch.setenv("FARM_WEBHOOK_URL", url)
    get_settings.cache_clear()
    assert cli("check", "n014")[0] == 1
    assert len(received) == 1 and received[0]["body"]["verdict"]["run_id"] == "n014"


def test_history_page(stored: ResultStore, tmp_path: Path) -> None:
    page = tmp_path / "history.html"
    code, text = cli("regressions", "--html", str(page), "--no-notify")
    assert code == 0, text
    doc = page.read_text()
    assert doc.count("<img") == 2 and "data:image/png;base64," in doc
    assert doc.index("box7") < doc.index("box8")  # the series with a regression comes first
    assert "1 regressions" in doc


def test_history_section_goes_into_the_html_report_through_its_hook(stored: ResultStore) -> None:
    from farm.reports.history import TITLE, results_section
    from farm.reports.html import render_html
    from farm.reports.report import Selection, select

    report = select(stored, Selection(runs=("n014",)), history=True)
    assert report.history is not None
    section = results_section(report.history)
    assert section is not None and section[0] == TITLE
    assert section[1].count("<img") == 2  # both series of run n014, each with its 15 nights
    page = render_html(report)
    assert TITLE in page and "box7 cpu" in page


def test_farm_report_html_carries_the_history_view(stored: ResultStore, tmp_path: Path) -> None:
    from farm.reports.history import TITLE

    page = tmp_path / "report.html"
    code, text = cli("report", "n014", "--format", "html", "-o", str(page))
    assert code == 0, text
    doc = page.read_text()
    assert TITLE in doc and "box7 cpu" in doc


def test_render_html_of_a_report_with_history_is_the_cli_page(stored: ResultStore, tmp_path: Path) -> None:
    from farm.reports.formats import render
    from farm.reports.history import TITLE
    from farm.reports.report import Selection, select

    report = select(stored, Selection(runs=("n014",)), history=True)
    assert report.history
    page = render(report, "html")
    assert TITLE in page and page.count("<img") >= 2
    assert TITLE not in render(select(stored, Selection(runs=("n014",))), "html")  # not asked for: none
