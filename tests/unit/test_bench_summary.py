"""`responder bench contain`'s summary: medians over trials and the ratio to the httpx baseline."""

from responder.bench import summarize


def _run(variant, trial, rate, first_ms, saved=1000):
    return {"variant": variant, "trial": trial, "detach_per_second": rate,
            "first_write_after_detection_ms": first_ms, "saved": saved, "seeded": 1000}


def test_medians_ranges_and_ratio_to_the_baseline_measured_in_the_same_run():
    runs = [_run("pool-c16", 1, 400.0, 9.0), _run("httpx-h2-c1-64", 1, 150.0, 12.0),
            _run("pool-c16", 2, 500.0, 7.0, saved=998), _run("httpx-h2-c1-64", 2, 170.0, 10.0),
            _run("pool-c16", 3, 450.0, 30.0), _run("httpx-h2-c1-64", 3, 160.0, 11.0)]
    pool, httpx = summarize(runs, ["pool-c16", "httpx-h2-c1-64"])
    assert pool["detach_per_second"] == {"median": 450.0, "min": 400.0, "max": 500.0}
    assert pool["first_write_after_detection_ms"] == {"median": 9.0, "max": 30.0}
    assert pool["saved_min"] == 998 and pool["trials"] == 3
    assert httpx["detach_per_second"]["median"] == 160.0
    assert pool["vs_baseline"] == round(450 / 160, 2) and httpx["vs_baseline"] == 1.0


def test_cpu_medians_when_the_runs_measured_them():
    runs = [dict(_run("pool-c16", t, 400.0, 9.0), cpu_ms_per_namespace={"responder": r},
                 control_plane_cpu_ms_per_namespace=cp, ceiling_per_second_with_a_free_client=round(2000 / cp))
            for t, (r, cp) in enumerate([(1.0, 4.0), (1.4, 5.0), (1.2, 4.5)], 1)]
    (pool,) = summarize(runs, ["pool-c16"])
    assert pool["responder_cpu_ms_per_namespace"] == {"median": 1.2}
    assert pool["control_plane_cpu_ms_per_namespace"] == {"median": 4.5}
    assert pool["ceiling_per_second_with_a_free_client"] == {"median": 444}


def test_no_baseline_variant_means_no_ratio():
    (pool,) = summarize([_run("pool-c8", 1, 300.0, 5.0)], ["pool-c8"])
    assert "vs_baseline" not in pool
