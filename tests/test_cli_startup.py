"""The CLI starts without the heavy libraries (issue 27): `import farm.cli.main`, `farm --version` and
`--help` load none of scipy, matplotlib, pandas, torch, numpy, celery, redis; the commands that need
them import them when they run (farm.cli.lazy). Timings: benchmarks/cli_startup.py (none asserted here).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from farm import __version__
from farm.cli import lazy, output

HEAVY = ("scipy", "matplotlib", "pandas", "torch", "numpy", "celery", "kombu", "redis")
FARM = Path(sys.executable).parent / "farm"


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter (nothing imported yet), its output."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )


def _loaded_after(argv: list[str]) -> tuple[list[str], str]:
    """The heavy modules loaded by running `farm ARGV` (Typer's real main) in a fresh interpreter, and its stdout."""
    proc = _fresh(f"""
        import sys
        sys.argv = ["farm", *{argv!r}]
        from farm.cli.main import main
        try:
            main()
        except SystemExit:
            pass
        print("LOADED:" + ",".join(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert proc.returncode == 0, proc.stderr
    head, _, loaded = proc.stdout.rpartition("LOADED:")
    return [m for m in loaded.strip().split(",") if m], head


def test_import_loads_no_heavy_library() -> None:
    proc = _fresh(f"""
        import sys
        import farm.cli.main
        print(",".join(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"import farm.cli.main loaded {proc.stdout.strip()}"


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["status", "--help"], ["results", "--help"]])
def test_version_and_help_load_no_heavy_library(argv: list[str]) -> None:
    loaded, stdout = _loaded_after(argv)
    assert loaded == [], f"farm {' '.join(argv)} loaded {loaded}"
    assert stdout.strip(), "nothing printed"
    if argv == ["--version"]:
        assert stdout == f"farm {__version__}\n"


def test_version_through_the_console_script_and_python_m() -> None:
    for cmd in ([str(FARM), "--version"], [sys.executable, "-m", "farm.cli.main", "--version"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"farm {__version__}\n" and proc.stderr == ""


def test_a_command_that_needs_a_library_still_imports_it() -> None:
    """`farm schema result` needs the result model (numpy through farm.results): it loads when the command runs."""
    loaded, stdout = _loaded_after(["schema", "result"])
    assert "numpy" in loaded and '"title": "farm result"' in stdout


def test_constants_shown_in_help_agree_with_the_library() -> None:
    """The defaults that --help shows are copied into the CLI (importing their modules would cost the
    start-up): each copy equals the library's value."""
    from farm.cli import farm_cmds, publish, repair_cmds, report_cmds
    from farm.cluster import controller
    from farm.reports import publish as site
    from farm.reports import series
    from farm.results.store import base

    assert farm_cmds.UNSERVED_AFTER_S == controller.UNSERVED_AFTER_S
    assert publish.MAX_RUN_PAGES == site.MAX_RUN_PAGES
    assert report_cmds.SERIES_THRESHOLD == series.SERIES_THRESHOLD
    assert logging.getLogger(repair_cmds.STORE_LOGGER) is base.log


def test_term_skips_only_text_it_would_not_change() -> None:
    """`output.term` returns printable text as it is, without farm.reports.cells: every character
    that cells.term escapes is non-printable, so for printable text the two agree."""
    from farm.reports import cells

    escaped = [chr(c) for c in range(sys.maxunicode + 1) if cells.UNSAFE.match(chr(c))]
    assert escaped and not any(ch.isprintable() for ch in escaped)
    for text in ("farm 0.1.0", "a\x1bb", "x\u202ey", "tab\there", "é ü 日本", "line\nnext", "\u2028", ""):
        assert output.term(text) == cells.term(text)


def test_publish_hook_is_installed_once_the_schedules_are_imported() -> None:
    """`farm CMD` installs the publish hook (FARM_PUBLISH_DIR) as soon as farm.nightly.schedule runs:
    after the command starts (here: a --help) and before anything can fire; not by importing scipy first."""
    proc = _fresh("""
        import sys
        sys.argv = ["farm", "status", "--help"]
        from farm.cli.main import main
        try:
            main()
        except SystemExit:
            pass
        print("scipy before:", "scipy" in sys.modules)
        from farm.nightly.schedule import AFTER_FIRE
        from farm.reports.publish import publish_after_fire
        print("hooked:", AFTER_FIRE.count(publish_after_fire))
    """)
    assert proc.returncode == 0, proc.stderr
    assert "scipy before: False" in proc.stdout and "hooked: 1" in proc.stdout, proc.stdout


def test_publish_hook_is_installed_at_once_when_the_schedules_are_already_imported() -> None:
    proc = _fresh("""
        import sys
        from farm.nightly.schedule import AFTER_FIRE
        from farm.cli.main import app
        from typer.testing import CliRunner
        for _ in range(2):
            CliRunner().invoke(app, ["status", "--help"])
        from farm.reports.publish import publish_after_fire
        print("hooked:", AFTER_FIRE.count(publish_after_fire))
    """)
    assert proc.returncode == 0, proc.stderr
    assert "hooked: 1" in proc.stdout, proc.stdout


def test_lazy_module_runs_on_first_use_and_is_the_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazy_probe_ok.py").write_text("RUNS = []\nRUNS.append(1)\nVALUE = 42\n")
    (tmp_path / "lazy_probe_bad.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("lazy_probe_ok", "lazy_probe_bad"):
        monkeypatch.setitem(sys.modules, name, None)  # removed again when the test ends
        del sys.modules[name]
    ran: list[str] = []
    mod = lazy.lazy_module("lazy_probe_ok")
    lazy.when_imported("lazy_probe_ok", lambda m: ran.append(m.__name__))
    assert ran == []
    import lazy_probe_ok  # type: ignore[import-not-found]  # an import runs it, once

    assert lazy_probe_ok is mod and mod.VALUE == 42 and mod.RUNS == [1] and ran == ["lazy_probe_ok"]
    lazy.when_imported("lazy_probe_ok", lambda m: ran.append("again"))  # already run: called at once
    assert ran == ["lazy_probe_ok", "again"]
    bad = lazy.lazy_module("lazy_probe_bad")
    for _ in range(2):  # a failed run leaves no half module: the next use runs it again, as an import would
        with pytest.raises(RuntimeError, match="broken at import"):
            _ = bad.anything
    (tmp_path / "lazy_probe_bad.py").write_text("FIXED = 'now it imports'\n")
    import lazy_probe_bad  # type: ignore[import-not-found]

    assert lazy_probe_bad is bad and bad.FIXED == "now it imports"
