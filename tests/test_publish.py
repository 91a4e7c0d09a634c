"""`farm publish DIR` over results in a real Redis: every link resolves, every plot is a real image,
the index renders in headless Chromium, and the site holds with 1,000 results."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from farm.cli.main import app
from farm.results import synthetic as syn
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.settings import get_settings
from farm.spec import BenchSpec, Job

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
NIGHT0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
CPU = syn.machine("box-cpu")
GPU = syn.machine("box-h100", gpu="NVIDIA H100 80GB HBM3")


def night(run_id: str, n: int, specs: list[BenchSpec], slow_gpu: bool = False) -> list[JobResult]:
    """One night of a sweep over two machines: each spec on box-cpu's CPU and box-h100's GPU."""
    out, i = [], 0
    wobble = 1 + 0.004 * ((n * 7) % 5)
    for spec in specs:
        k = spec.batch
        cpu = {"init": [1.2], "forward": [0.5 * k * wobble * (1 + j / 200) for j in range(5)],
               "train": [1.6 * k * wobble * (1 + j / 200) for j in range(5)]}  # fmt: skip
        f = 2.0 if slow_gpu else 1.0
        gpu = {"init": [1.5], "forward": [0.01 * k * f * wobble * (1 + j / 200) for j in range(5)],
               "train": [0.05 * k * wobble * (1 + j / 200) for j in range(5)]}  # fmt: skip
        when = NIGHT0 + timedelta(days=n, seconds=i)
        out.append(syn.result(run_id, i, "cpu", cpu, spec=spec, fingerprint=CPU, finished_at=when))
        out.append(syn.result(run_id, i + 1, "cuda", gpu, spec=spec, fingerprint=GPU, finished_at=when))
        i += 2
    return out


def store_results(store: ResultStore, results: list[JobResult]) -> None:
    runs: dict[str, list[JobResult]] = {}
    for r in results:
        runs.setdefault(r.run_id, []).append(r)
    for run_id, rs in runs.items():
        jobs = [Job(job_id=r.job_id, run_id=run_id, device=r.device, spec=r.spec) for r in rs]
        store.create_run(run_id, [], jobs, name="nightly", state="done")
        for r in rs:
            assert store.put_result(r)


@pytest.fixture()
def store(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> ResultStore:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    return ResultStore.from_url(redis_url)


def links_and_images(root: Path) -> tuple[list[tuple[Path, str]], list[bytes]]:
    links, images = [], []
    for page in root.rglob("*.html"):
        text = page.read_text()
        links += [(page, href) for href in re.findall(r'href="([^"]+)"', text)]
        images += [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', text)]
    return links, images


def assert_site_holds(root: Path) -> int:
    import matplotlib.image

    links, images = links_and_images(root)
    assert links
    for page, href in links:
        assert not href.startswith(("http:", "https:", "//")), f"{page.name} links out: {href}"
        target = (page.parent / href.split("#")[0]).resolve()
        assert target.is_file(), f"{page.relative_to(root)}: broken link {href}"
    for png in images:
        img = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert img.shape[0] > 50 and img.shape[1] > 50 and img.std() > 0.01  # a drawn plot, not a blank
    return len(images)


def test_publish_two_machines_three_nights(store: ResultStore, tmp_path: Path) -> None:
    specs = [BenchSpec(model="gpt2", batch=b, seq=128) for b in (1, 2)]
    store_results(store, [r for n in range(3) for r in night(f"nightly-2026110{n + 1}", n, specs)])
    site = tmp_path / "site"
    res = CliRunner().invoke(app, ["publish", str(site)])
    assert res.exit_code == 0, res.output
    said = " ".join(res.stderr.split())
    assert "wrote" in said and "(12 results, 2 specs, 3 run pages" in said
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    assert "index.html" in pages and "regressions.html" in pages
    assert sum(p.startswith("runs/") for p in pages) == 3
    assert sum(p.startswith("specs/") for p in pages) == 2 * 3  # two specs x init, forward, train
    assert assert_site_holds(site) >= 6  # history plots of the spec pages, bars of the run pages
    index = (site / "index.html").read_text()
    # The seed's question first: the GPU against the CPU of the newest run, with its interval.
    compare = index[index.index('id="compare"') : index.index('id="regressions"')]
    assert "nightly-20261103" in compare and "speedup vs cpu" in compare
    assert re.search(r"\d+× \[\d", compare), compare[:2000]


def test_publish_marks_a_regression_and_renders_in_chromium(store: ResultStore, tmp_path: Path) -> None:
    specs = [BenchSpec(model="gpt2", batch=1, seq=128)]
    store_results(store, [r for n in range(8) for r in night(f"n{n}", n, specs, slow_gpu=n == 7)])
    site = tmp_path / "site"
    assert CliRunner().invoke(app, ["publish", str(site), "--runs", "2"]).exit_code == 0
    assert len(list((site / "runs").glob("*.html"))) == 2  # only the newest runs get pages...
    assert_site_holds(site)  # ...and nothing links to the others
    regressions = (site / "regressions.html").read_text()
    assert "regression" in regressions and "box-h100" in regressions and "n7" in regressions
    assert "regression" in (site / "index.html").read_text()
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    profile = tmp_path / "profile"
    for page in (site / "index.html", next((site / "specs").glob("*-forward.html"))):
        dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert dom.returncode == 0, dom.stderr[-1000:]
        assert "<table" in dom.stdout and "<a href=" in dom.stdout
    shot = tmp_path / "index.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                    "--window-size=1200,1600", (site / "index.html").as_uri()],
                   capture_output=True, timeout=120, check=False)  # fmt: skip
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.std() > 0.02  # text and tables drawn, not a blank page


def test_publish_holds_with_a_thousand_results(store: ResultStore, tmp_path: Path) -> None:
    specs = [BenchSpec(model="gpt2", batch=b, seq=s) for b in (1, 2, 4, 8) for s in (128, 256)]  # 8 specs
    results = [r for n in range(63) for r in night(f"night-{n:03d}", n, specs)][:1000]
    store_results(store, results)
    site = tmp_path / "site"
    res = CliRunner().invoke(app, ["publish", str(site)])
    assert res.exit_code == 0, res.output
    assert "(1000 results, 8 specs, 30 run pages" in " ".join(res.stderr.split())
    assert len(list((site / "runs").glob("*.html"))) == 30  # the default: newest 30 runs
    assert len(list((site / "specs").glob("*.html"))) == 8 * 3
    assert_site_holds(site)


def test_a_schedule_firing_republishes_the_site(
    store: ResultStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With FARM_PUBLISH_DIR, `farm schedule run` (what `farm beat` has a worker do) republishes the
    site after the firing: last night's results are on it; tonight's run is queued."""
    import yaml

    store_results(store, night("nightly-20261101", 0, [BenchSpec(model="gpt2", batch=1, seq=128)]))
    site = tmp_path / "site"
    monkeypatch.setenv("FARM_PUBLISH_DIR", str(site))
    get_settings.cache_clear()
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(yaml.safe_dump({"name": "tiny", "model": "gpt2-tiny", "phases": ["forward"], "seq": 16}))
    runner = CliRunner()
    assert runner.invoke(app, ["schedule", "add", "tiny", "--every", "3600", "--sweep", str(sweep)]).exit_code == 0
    assert not site.exists()  # adding a schedule publishes nothing
    res = runner.invoke(app, ["schedule", "run", "tiny"])
    assert res.exit_code == 0, res.output
    index = (site / "index.html").read_text()
    assert "from 2 stored results" in index and "nightly-20261101" in index
    assert_site_holds(site)


def test_publish_escapes_hostile_text(store: ResultStore, tmp_path: Path) -> None:
    """Text from data (a CPU model, a run name) is escaped on every page of the site."""
    evil = "<script>alert(1)</script>\x1b[31m"
    box = syn.machine("box-evil").model_copy(update={"cpu_model": evil})
    spec = BenchSpec(model="gpt2", batch=1, seq=128)
    res = syn.result("evil-run", 0, "cpu", {"forward": [0.5, 0.51, 0.49, 0.5, 0.52]}, spec=spec, fingerprint=box)
    jobs = [Job(job_id=res.job_id, run_id="evil-run", device="cpu", spec=spec)]
    store.create_run("evil-run", [], jobs, name=evil, state="done")
    assert store.put_result(res)
    site = tmp_path / "site"
    assert CliRunner().invoke(app, ["publish", str(site)]).exit_code == 0
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert "<script>" not in text and "\x1b" not in text, page.name
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (site / "index.html").read_text()
