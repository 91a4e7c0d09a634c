"""The HTML report in headless Chromium: the DOM has the tables and plots; the screenshot is not blank."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from farm.reports.html import render_html
from farm.reports.report import build_report
from farm.results import synthetic as syn
from farm.results.records import records_from_results
from farm.spec import BenchSpec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _html(tmp_path: Path) -> Path:
    cpu = {"init": [1.2], "forward": [0.5, 0.51, 0.49, 0.5, 0.52], "train": [1.6, 1.62, 1.58, 1.61, 1.59]}
    gpu = {"init": [1.5], "forward": [0.005, 0.0051, 0.0049, 0.005, 0.005], "train": [0.02, 0.03, 0.021, 0.026, 0.019]}
    bad = {"init": [1.5], "forward": [1e-6, 1.1e-6, 1e-6], "train": [0.03, 0.031, 0.029]}
    big = BenchSpec(model="gpt2-medium", batch=1, seq=128)
    results = [
        syn.result("r1", 0, "cpu", cpu),
        syn.result("r1", 1, "cuda", gpu),
        syn.result("r1", 2, "cuda:a100", bad, fingerprint=syn.machine("gpu2", gpu="NVIDIA A100-SXM4-40GB")),
        syn.result("r1", 3, "cpu", {k: [t * 3 for t in v] for k, v in cpu.items()}, spec=big),
        syn.result("r1", 4, "cuda", {k: [t * 3 for t in v] for k, v in gpu.items()}, spec=big),
    ]
    report = build_report(records_from_results(results))
    extra = [("History", '<p id="history-hook">nightly history goes here</p>')]
    path = tmp_path / "report.html"
    path.write_text(render_html(report, extra_sections=extra), encoding="utf-8")
    return path


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    import matplotlib.image

    page = _html(tmp_path)
    profile = tmp_path / "profile"
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count('<table class="results">') == 2  # one per spec
    assert html.count('<img class="plot"') >= 5  # bars and speedups per spec, and the scaling plot
    assert "flag-invalid" in html and "INVALID" in html
    assert 'id="history-hook"' in html  # the extra_sections hook
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    assert pixels[..., :3].std() > 0.05  # not a blank page: text, tables and plots
    # The plots themselves reached the screen: many distinct colours, not only text on white.
    assert len({tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3)}) > 50
