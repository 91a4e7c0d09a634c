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


# -- suspect, too noisy, the change needed (docs/sweeps.md "Disturbed nights and noisy series") -------
@pytest.fixture()
def mixed(stored: ResultStore) -> ResultStore:
    """Beside box7 (a regression at n014) and box8 (quiet): `busy`, whose n014 ran 2x slower beside
    another process (contended), and `noisy`, whose history spreads 25% per repeat."""
    from farm.results.host import HostLoad
    from farm.results.synthetic import flagged

    rng = random.Random(21)
    busy = [night_result(i, noisy_times(rng, 1.0), tag="busy") for i in range(14)]
    hogged = night_result(14, noisy_times(rng, 2.0), tag="busy")
    load = HostLoad(other_cpu_s=1.9, wall_s=1.0, contended=True, reason="other processes used 1.90 CPU s in 1.00 s")
    busy.append(flagged(hogged, "forward", host=load))
    noisy = [night_result(i, noisy_times(rng, 1.0, cv=0.25), tag="noisy") for i in range(14)]
    noisy.append(night_result(14, [1.35, 1.3, 1.4, 1.32, 1.36], tag="noisy"))
    for suffix, results in (("-002", busy), ("-003", noisy)):
        for r in results:
            r.job_id = r.job_id.replace("-000", suffix)
            stored.create_run(r.run_id, [r.spec], [], name="nightly")
            assert stored.put_result(r)
    return stored


def test_max_threshold_default_matches_the_detector() -> None:
    from farm.cli.sweep_cmds import MAX_THRESHOLD_PCT
    from farm.nightly.regress import RegressConfig

    assert RegressConfig().max_threshold == MAX_THRESHOLD_PCT / 100


def test_check_shows_each_kind_with_the_change_it_needed(mixed: ResultStore) -> None:
    res = CliRunner().invoke(app, ["check", "n014", "--no-notify"], env={"COLUMNS": "200"})
    assert res.exit_code == 1  # box7's regression
    text = res.stdout
    assert "1 regression(s)" in text and "1 suspect" in text and "1 too noisy to gate" in text
    rows = {line.split()[3]: line for line in text.splitlines() if line.startswith("\u2502 ")}  # by machine
    assert set(rows) == {"box7", "box8", "busy", "noisy"}
    for row, kind in (("box7", "regression"), ("box8", "unchanged"), ("busy", "suspect"), ("noisy", "too-noisy")):
        assert kind in rows[row] and "\u00b1" in rows[row]  # every verdict: the change it needed
    assert "needs: the change a verdict needs at the series' spread" in text  # the column, explained below
    assert "conf." not in text and "confidence" not in text  # no confidence column, nor beside unchanged
    assert "suspect: busy" in res.stderr and "too noisy: noisy" in res.stderr  # why they are not judged
    res = CliRunner().invoke(app, ["check", "n014", "--no-notify", "--json"])
    doc = json.loads(res.stdout)  # the reasons of the suspect and the too-noisy series are on stderr
    assert doc["counts"] == {
        "regression": 1,
        "improvement": 0,
        "suspect": 1,
        "unchanged": 1,
        "too-noisy": 1,
        "no-verdict": 0,
    }
    for v in doc["verdicts"]:
        assert v["needed"] > 0 and "needs \u00b1" in v["reason"]
        assert (v["confidence"] is None) == (v["kind"] in ("unchanged", "too-noisy"))


def test_check_a_suspect_passes_but_not_with_require_verdict(mixed: ResultStore) -> None:
    res = CliRunner().invoke(app, ["check", "n014", "--no-notify", "--machine", "busy"])
    assert res.exit_code == 0, res.output  # a disturbed night raises no regression
    assert "suspect:" in res.stderr and "contended" in res.stderr and "would be a regression" in res.stderr
    assert "awaiting a clean night" in res.stderr
    res = CliRunner().invoke(app, ["check", "n014", "--no-notify", "--machine", "busy", "--require-verdict"])
    assert res.exit_code == 6 and "suspect and too-noisy count as no verdict" in res.stderr


def test_check_too_noisy_to_gate_and_max_threshold(mixed: ResultStore) -> None:
    res = CliRunner().invoke(app, ["check", "n014", "--no-notify", "--machine", "noisy", "--json"])
    assert res.exit_code == 0
    (v,) = json.loads(res.stdout)["verdicts"]
    assert v["kind"] == "too-noisy" and v["needed"] > 0.10 and v["confidence"] is None
    assert "too noisy:" in res.stderr and "above the 10.0% bound" in res.stderr
    res = CliRunner().invoke(app, ["check", "n014", "--no-notify", "--machine", "noisy", "--require-verdict"])
    assert res.exit_code == 6
    wide = f"{v['needed'] * 100 + 5:.0f}"
    res = CliRunner().invoke(
        app, ["check", "n014", "--no-notify", "--machine", "noisy", "--require-verdict", "--max-threshold", wide]
    )
    assert res.exit_code == 0 and "unchanged" in res.stdout, res.output


def test_regressions_lists_suspects_apart_and_counts_the_too_noisy(mixed: ResultStore) -> None:
    code, text = cli("regressions", "--json", "--no-notify")
    assert code == 0
    assert sorted((v["machine"], v["kind"]) for v in json.loads(text)) == [("box7", "regression"), ("busy", "suspect")]
    code, text = cli("regressions", "--no-notify")
    assert "1 regressions in 4 judged series points; 1 suspect" in text and "1 too noisy to gate" in text
