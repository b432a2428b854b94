"""One short iteration of every benchmark, so ``make bench`` cannot rot unnoticed."""

from __future__ import annotations

import json
import shutil

import pytest

from bench.__main__ import READS_BASELINE, main
from tests.support.servers import check_redis


def test_bench_smoke_run_measures_every_figure(tmp_path, capsys):
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed. Install it with: apt-get install -y wrk", pytrace=False)
    check_redis()

    assert main(["--smoke", "--out", str(tmp_path)]) == 0

    [written] = tmp_path.glob("smoke-*.json")
    results = json.loads(written.read_text())
    figures = {row["what"]: row for row in results["rows"]}
    for what in (
        "login req/s (bcrypt 4)",
        "GET /users/me req/s",
        "GET /users/me req/s, metrics on (vs off)",
        "TokenVerifier.verify (us)",
        "register -> profile p50 (ms)",
        "logout -> refused at user service p50 (ms)",
        "pipeline drain msg/s (100)",
        "auth web worker RSS (MB, max)",
        "scale login req/s (2,000 vs 100)",
        "scale refresh req/s (2,000 vs 100)",
        "scale list ?after=<page 1000> req/s (2,000 vs 100)",
        "scale drain msg/s (2,000 vs 100)",
        "workers.relay auth RSS (MB)",
        "  workers.mailer PSS (MB)",
        "make run total RSS (MB)",
        "  make run total PSS (MB)",
    ):
        assert figures[what]["figure"] > 0, what
    # No PEM parse per request, whatever the machine's speed.
    # The make run system is every Procfile process under honcho, gunicorn's workers too.
    run = results["run_memory_mb"]
    assert "honcho" in run and "gunicorn auth_app" in run and "workers.janitor user" in run
    assert any(name.startswith("gunicorn user_app/worker-") for name in run)
    assert results["verify"]["pem_parses_in_requests"] == 0
    assert results["verify"]["pem_parses_building_app"] >= 1
    assert "| what | figure | ceiling | ratio | target |" in capsys.readouterr().out
    # The metrics cost is the same read with METRICS_ENABLED false as its ceiling.
    cost = figures["GET /users/me req/s, metrics on (vs off)"]
    assert cost["ceiling"] > 0 and cost["ratio"] is not None
    assert results["metrics_cost"]["off_runs"] and results["metrics_cost"]["on_runs"]
    # Reads are served by the old commit's code too, beside the current code, in the same run.
    old = figures[f"GET /users/me req/s (vs {READS_BASELINE})"]
    assert old["figure"] > 0 and old["ceiling"] > 0 and old["ratio"] is not None
    assert results["read_baseline"]["baseline_runs"] and results["read_baseline"]["runs"]


def test_a_row_passes_or_misses_on_its_ratio_and_its_target():
    from bench.report import Row

    assert Row("reads", 90, ceiling=100, ratio_target=0.8).verdict == "PASS"
    assert Row("reads", 70, ceiling=100, ratio_target=0.8).verdict == "MISS"
    assert Row("p99", 25, target=20, lower_is_better=True).verdict == "MISS"
    assert Row("verify", 50, ceiling=40, ratio_target=1.5, lower_is_better=True).verdict == "PASS"
    assert Row("info", 3).verdict == ""
    assert Row("no ceiling", 3, ceiling=0, ratio_target=1).to_dict()["ratio"] is None


def test_runs_combine_into_the_median_of_each_figure_with_every_error_counted():
    from bench.load import LoadResult, median_result

    runs = [
        LoadResult(requests=1000, seconds=10.0, errors=0, non_2xx=0, p50_ms=5, p99_ms=20),
        LoadResult(requests=3000, seconds=10.0, errors=2, non_2xx=1, p50_ms=3, p99_ms=90),
        LoadResult(requests=2000, seconds=10.0, errors=0, non_2xx=0, p50_ms=9, p99_ms=70),
    ]
    combined = median_result(runs)
    assert combined.rate == 200
    # Each figure its own median, not the figures of the run with the median rate.
    assert (combined.p50_ms, combined.p99_ms) == (5, 70)
    assert (combined.errors, combined.non_2xx) == (2, 1)


def test_wrk_output_without_a_result_line_is_a_clear_error():
    from bench.load import parse_wrk_output
    from bench.system import BenchError

    with pytest.raises(BenchError, match="no result line"):
        parse_wrk_output("Running 1s test\n")


def test_memory_growth_leaves_out_warm_up_and_needs_enough_samples():
    from bench.memory import growth

    assert growth([{"a": 1.0}] * 3) == {}
    samples = [{"a": 50.0}] * 2 + [{"a": 60.0}] * 4 + [{"a": 61.0}] * 2
    assert growth(samples) == {"a": 1.0}


def test_percentiles_are_nearest_rank():
    from bench.__main__ import percentile

    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
