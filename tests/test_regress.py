"""Regression detection on synthetic histories, and the webhook against a local HTTP server."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from farm.nightly.regress import RegressConfig, assess, changes, check_run, detect, mann_whitney_p
from farm.nightly.webhook import notify
from farm.results.machine import MachineFingerprint
from farm.results.result import JobResult, measured_phase
from farm.spec import BenchSpec

SPEC = BenchSpec(model="gpt2-tiny", batch=1, seq=64, devices=("cpu",), phases=("forward",))
T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def machine(tag: str = "box7") -> MachineFingerprint:
    return MachineFingerprint(
        hostname=tag,
        machine_tag=tag,
        os="Linux",
        python="3.11",
        cpu_model="synthetic",
        cpu_arch="x86_64",
        physical_cores=2,
        logical_cores=4,
        memory_bytes=8 << 30,
        farm_version="0.1.0",
    )


def night_result(night: int, times: list[float], tag: str = "box7", spec: BenchSpec = SPEC) -> JobResult:
    """A stored-like result of one nightly run with the given raw forward times."""
    when = T0 + timedelta(days=night)
    tokens = spec.batch * spec.seq  # a repeat's tokens, as the read check recounts them from the spec
    ph = measured_phase("forward", times, [], flops=0, min_flops=0, tokens=tokens, peak=None)
    return JobResult(
        job_id=f"n{night:03d}-000",
        run_id=f"n{night:03d}",
        device="cpu",
        spec=spec,
        spec_hash=spec.spec_hash(),
        model_name=spec.model_name,
        machine=machine(tag),
        phases={"forward": ph},
        started_at=when,
        finished_at=when + timedelta(minutes=5),
    )


def noisy_times(rng: random.Random, level: float, n: int = 5, cv: float = 0.03) -> list[float]:
    return [level * (1 + rng.gauss(0, cv)) for _ in range(n)]


def history(nights: int, step_at: int | None = None, step: float = 1.2, seed: int = 1) -> list[JobResult]:
    """`nights` results around 1.0 s with 3% noise; from `step_at` on, times are x `step`."""
    rng = random.Random(seed)
    out = []
    for i in range(nights):
        level = 1.0 * (step if step_at is not None and i >= step_at else 1.0)
        out.append(night_result(i, noisy_times(rng, level)))
    return out


def test_a_real_20_percent_step_is_found() -> None:
    v = detect(history(15, step_at=14))
    assert len(v) == 1
    assert v[0].kind == "regression"
    assert v[0].change is not None and 0.12 < v[0].change < 0.28
    assert v[0].confidence is not None and v[0].confidence > 0.99
    assert v[0].n_history == 10


@pytest.mark.parametrize("seed", range(20))
def test_noise_alone_is_not_flagged(seed: int) -> None:
    """3% noise per repeat: never a change; a window whose spread needs more than 10% says so (too-noisy)."""
    verdicts = detect(history(30, seed=seed), since=T0 + timedelta(days=10))
    assert verdicts and all(v.kind in ("unchanged", "too-noisy") for v in verdicts)
    for v in verdicts:
        assert v.needed is not None and (v.kind == "too-noisy") == (v.needed > 0.10)
        assert v.confidence is None and "needs \u00b1" in v.reason  # the change it needed, no confidence


def test_too_little_history_gives_no_verdict() -> None:
    v = detect(history(5, step_at=4, step=2.0))  # 4 earlier nights: below min_history 5
    assert [x.kind for x in v] == ["no-verdict"]
    assert "4 earlier results" in v[0].reason


def test_improvement_is_reported_as_such() -> None:
    v = detect(history(12, step_at=11, step=0.7))
    assert v[0].kind == "improvement" and v[0].change is not None and v[0].change < -0.2


def test_small_change_below_min_rel_is_not_flagged_even_on_a_quiet_history() -> None:
    rng = random.Random(3)
    hist = [[1.0 + rng.gauss(0, 0.001) for _ in range(5)] for _ in range(10)]
    a = assess([1.03 + rng.gauss(0, 0.001) for _ in range(5)], hist)
    assert a.kind == "unchanged"  # 3% is above 4 x spread but below the 5% minimum
    assert a.threshold_s == pytest.approx(0.05 * a.baseline_s)  # type: ignore[operator]


def test_one_outlier_night_in_history_does_not_hide_a_step() -> None:
    rng = random.Random(5)
    hist = [noisy_times(rng, 1.0) for _ in range(10)]
    hist[4] = noisy_times(rng, 3.0)  # a noisy neighbour, one night
    a = assess(noisy_times(rng, 1.25), hist)
    assert a.kind == "regression"


def test_single_raw_time_skips_the_rank_test_and_says_so() -> None:
    hist = [[1.0 + 0.01 * (i % 3)] for i in range(8)]
    a = assess([1.5], hist)
    assert a.kind == "regression" and a.p_value is None and "rank test skipped" in a.reason


def test_mann_whitney_p_values() -> None:
    assert mann_whitney_p([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert mann_whitney_p([10, 11, 12, 13, 14], list(range(50))) > 0.01  # inside the range
    assert mann_whitney_p([100, 101, 102, 103, 104], list(range(50))) < 0.001
    assert mann_whitney_p([5.0] * 4, [5.0] * 10) == 1.0  # all ties


def test_mann_whitney_is_exact_at_small_n() -> None:
    """5 new repeats all above 5 earlier ones: the exact two-sided p is 2 / C(10, 5) = 2/252.

    The normal approximation used before gave 0.012 here, half again too large, at the sample
    sizes a nightly check sees most (5 repeats against a short history)."""
    assert mann_whitney_p([100, 101, 102, 103, 104], [1, 2, 3, 4, 5]) == pytest.approx(2 / 252)
    assert mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(2 / 20)


def test_series_are_kept_apart_by_machine_and_failed_results_are_ignored() -> None:
    rng = random.Random(7)
    results = history(12)
    results += [night_result(i, noisy_times(rng, 2.0), tag="box8") for i in range(12)]
    broken = night_result(12, [9.0] * 5)
    broken.status = "failed"
    results.append(broken)
    v = detect(results)
    assert {x.machine for x in v} == {"box7", "box8"}
    assert all(x.kind == "unchanged" for x in v)


def test_check_run_judges_only_that_run() -> None:
    results = history(15, step_at=14)
    assert [x.kind for x in check_run(results, "n014")] == ["regression"]
    assert [x.kind for x in check_run(results, "n013")] == ["unchanged"]
    assert check_run(results, "nope") == []


def test_custom_config_min_history() -> None:
    v = detect(history(4, step_at=3, step=2.0), cfg=RegressConfig(min_history=3))
    assert v[0].kind == "regression"


# -- webhook ------------------------------------------------------------------------------
class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"ctype": self.headers["Content-Type"], "body": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def webhook_server() -> Iterator[tuple[str, list[dict]]]:
    _Collector.received = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", _Collector.received
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_posts_one_json_message_per_regression(webhook_server: tuple[str, list[dict]]) -> None:
    url, received = webhook_server
    results = [*history(15, step_at=14), night_result(14, [1.0] * 5, tag="box8")]
    verdicts = detect(results) + detect(history(12, step_at=11, step=0.7))
    deliveries = notify(url, verdicts)
    assert [d.ok for d in deliveries] == [True]  # one regression; improvement and no-verdict not sent
    assert len(received) == 1
    msg = received[0]["body"]
    assert received[0]["ctype"] == "application/json"
    assert msg["event"] == "farm.regression"
    assert msg["verdict"]["machine"] == "box7" and msg["verdict"]["phase"] == "forward"
    assert "slower" in msg["text"]


def test_webhook_down_is_reported_not_raised() -> None:
    from farm.cluster.redisproc import free_port

    v = changes(detect(history(15, step_at=14)))
    deliveries = notify(f"http://127.0.0.1:{free_port()}/hook", v, timeout=2)
    assert len(deliveries) == 1 and not deliveries[0].ok and "cannot reach" in deliveries[0].detail
    assert notify(None, v) == []
