"""The published site's index and series pages, against a real Redis and in headless Chromium: the flags
beside every status (a contended `ok` is not shown as a plain `ok`), a chart per spec above its table
(device against device, the CPU the baseline, CIs as error bars), phases in the order they run, and the
series page's history with its disturbed nights drawn apart from the clean line."""

from __future__ import annotations

import base64
import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_publish import CHROMIUM, assert_site_holds, night, store_results
from test_publish import FLAGS as CHROME_FLAGS
from test_publish import store as store  # the fixture, by its name
from typer.testing import CliRunner

from farm.cli.main import app
from farm.reports.plots import DISTURBED_COLOUR
from farm.results import synthetic as syn
from farm.results.host import HostLoad
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.spec import BenchSpec

BUSY = HostLoad(lock_wait_s=0.0, load_avg_1m=3.1, other_cpu_s=2.2, contended=True, reason="a CPU hog ran beside it")
SPECS = [BenchSpec(model="gpt2", batch=b, seq=128) for b in (1, 2)]
DISTURBED_NIGHTS = (4, 7)  # the CPU's forward ran beside a hog on these nights; 7 is the newest


def _nights() -> list[JobResult]:
    out = []
    for n in range(8):
        for res in night(f"n{n}", n, SPECS):
            if n in DISTURBED_NIGHTS and res.device == "cpu":  # the hog made the forward 1.8x slower
                times = {k: [t * (1.8 if k == "forward" else 1.0) for t in ph.times_s] for k, ph in res.phases.items()}
                index = int(res.job_id.rsplit("-", 1)[1])
                res = syn.result(res.run_id, index, "cpu", times, spec=res.spec, fingerprint=res.machine,
                                 finished_at=res.finished_at)  # fmt: skip
                res = syn.flagged(res, "forward", host=BUSY)
            if n == 7 and res.device == "cuda":
                res = syn.flagged(res, "train", outlier=True)
            out.append(res)
    return out


@pytest.fixture()
def site(store: ResultStore, tmp_path: Path) -> Path:
    store_results(store, _nights())
    root = tmp_path / "site"
    res = CliRunner().invoke(app, ["publish", str(root)])
    assert res.exit_code == 0, res.output
    assert_site_holds(root)
    return root


def _pngs(html: str) -> list[np.ndarray]:
    import matplotlib.image

    return [
        matplotlib.image.imread(io.BytesIO(base64.b64decode(m)), format="png")
        for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    ]


def _has_colour(img: np.ndarray, hex_colour: str, tol: float = 0.06) -> bool:
    want = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return bool((np.abs(img[..., :3] - want).max(axis=-1) < tol).sum() > 20)


def test_index_flags_chart_and_phase_order(site: Path) -> None:
    index = (site / "index.html").read_text()
    compare = index[index.index('id="compare"') : index.index('id="regressions"')]
    sections = re.findall(r'<section class="spec">(.*?)</section>', compare, re.S)
    assert len(sections) == len(SPECS)
    for sec in sections:
        # the chart first, then the table; the chart a real image of several colours (bars, error bars)
        assert sec.index('<img class="plot"') < sec.index("<table")
        (chart,) = _pngs(sec)
        assert chart.shape[0] > 200 and chart.shape[1] > 300
        assert len({tuple(p) for p in (chart[::3, ::3, :3] * 255).astype(int).reshape(-1, 3)}) > 20
        alt = re.search(r'alt="([^"]+)"', sec)
        assert alt is not None and "median time per phase and device" in alt[1]
        # phases in the order they run: init, forward, train (not alphabetical)
        phases = re.findall(r'<a href="specs/[^"]+-(\w+)\.html">', sec)
        assert list(dict.fromkeys(phases)) == ["init", "forward", "train"]
        # flags beside every status: the newest night's CPU forward ran beside a hog
        rows = re.findall(r"<tr>(.*?)</tr>", sec, re.S)
        cpu_fwd = next(r for r in rows if "-forward.html" in r and "<td>cpu</td>" in r)
        assert re.search(r'<span class="status">ok</span> <span class="flag flag-contended"', cpu_fwd), cpu_fwd
        gpu_fwd = next(r for r in rows if "-forward.html" in r and "<td>cuda:h100</td>" in r)
        assert "flag-baseline" in gpu_fwd  # its speedup's baseline was contended: said beside its status
        gpu_train = next(r for r in rows if "-train.html" in r and "<td>cuda:h100</td>" in r)
        assert "flag-outlier" in gpu_train
        cpu_init = next(r for r in rows if "-init.html" in r and "<td>cpu</td>" in r)
        assert cpu_init.endswith('<span class="status">ok</span></td>')  # a clean ok stays a plain ok
    # the list of spec pages: per spec, its phases in the order they run
    listed = re.findall(r'<a href="specs/(\w+)-(\w+)\.html">', index[index.index('id="specs"') :])
    for h in dict.fromkeys(h for h, _ in listed):
        assert [p for hh, p in listed if hh == h] == ["init", "forward", "train"]


def test_series_page_draws_disturbed_nights_apart(site: Path) -> None:
    spec = SPECS[0].spec_hash()
    page = (site / "specs" / f"{spec}-forward.html").read_text()
    figures = re.findall(r"<figure>(.*?)</figure>", page, re.S)
    cpu = next(f for f in figures if "box-cpu · cpu:" in f)
    gpu = next(f for f in figures if "box-h100 · cuda:" in f)
    assert "8 results" in cpu and "2 disturbed (2 contended), drawn apart from the line" in cpu
    assert "disturbed" not in gpu
    (cpu_png,), (gpu_png,) = _pngs(cpu), _pngs(gpu)
    assert _has_colour(cpu_png, DISTURBED_COLOUR) and not _has_colour(gpu_png, DISTURBED_COLOUR)
    # every result's table: the flags beside the status
    rows = re.findall(r"<tr>(.*?)</tr>", page, re.S)
    flagged = [r for r in rows if 'class="flag flag-contended"' in r]
    assert len(flagged) == len(DISTURBED_NIGHTS) and all("box-cpu" in r for r in flagged)
    assert page.index('<section class="history">') < page.index("<h2>Every result</h2>")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_index_and_series_page_render_in_headless_chromium(site: Path, tmp_path: Path) -> None:
    import matplotlib.image

    assert CHROMIUM is not None
    profile = tmp_path / "profile"
    spec_page = site / "specs" / f"{SPECS[0].spec_hash()}-forward.html"
    for page in (site / "index.html", spec_page):
        dom = subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert dom.returncode == 0, dom.stderr[-1000:]
        assert dom.stdout.count('<img class="plot"') >= len(SPECS) if page.name == "index.html" else 2
        assert "flag-contended" in dom.stdout
        shot = tmp_path / f"{page.stem}.png"
        run = subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                              "--window-size=1280,1800", page.as_uri()],
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert run.returncode == 0 and shot.exists(), run.stderr[-1000:]
        pixels = matplotlib.image.imread(str(shot))
        assert pixels.shape[0] > 500 and pixels.shape[1] > 500
        assert pixels[..., :3].std() > 0.05  # not a blank page
        # the charts reached the screen: many distinct colours, not only text on white
        assert len({tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3)}) > 50
        if page == spec_page:
            assert _has_colour(pixels, DISTURBED_COLOUR, tol=0.08)  # the disturbed nights, drawn apart
