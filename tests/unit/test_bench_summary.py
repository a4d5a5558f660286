"""`responder bench contain`'s summary: medians over trials and the ratio to the httpx baseline."""

from responder.drill.bench import summarize


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


def _sample(at, jiffies, idle, **cpu):
    from responder.drill.bench import CpuSample
    return CpuSample(at, jiffies, idle, cpu)


def test_detach_window_cpu_cuts_to_the_window_and_reports_how_busy_the_machine_was():
    from responder.drill.bench import detach_window_cpu
    samples = [_sample(9.0, 0, 0, **{"kube-apiserver": 0.0, "responder": 0.0}),      # before: ignored
               _sample(10.0, 1000, 100, **{"kube-apiserver": 5.0, "responder": 1.0}),
               _sample(11.0, 1200, 110, **{"kube-apiserver": 6.6, "responder": 1.4}),
               _sample(12.0, 1400, 120, **{"kube-apiserver": 8.2, "responder": 1.8}),
               _sample(13.0, 9999, 9999, **{"kube-apiserver": 99.0, "responder": 99.0})]  # after: ignored
    out = detach_window_cpu(samples, 10.0, 12.0, detached=800, cores=2)
    assert out["machine_busy_share"] == round(1 - 20 / 400, 3)
    assert out["cpu_ms_per_namespace"] == {"kube-apiserver": 4.0, "responder": 1.0}
    assert out["control_plane_cpu_ms_per_namespace"] == 4.0 and out["ceiling_per_second_with_a_free_client"] == 500
    assert out["detach_window_s"] == 2.0


def test_detach_window_cpu_scales_samples_that_bracket_part_of_the_window_and_skips_gone_processes():
    from responder.drill.bench import detach_window_cpu
    samples = [_sample(10.5, 0, 0, **{"etcd": 1.0, "kube-apiserver": None}),
               _sample(11.5, 200, 0, **{"etcd": 1.5, "kube-apiserver": 3.0})]
    out = detach_window_cpu(samples, 10.0, 12.0, detached=1000, cores=2)
    assert out["cpu_ms_per_namespace"] == {"etcd": 1.0}  # 0.5 s over 1 s of a 2 s window, per 1,000
    assert out["machine_busy_share"] == 1.0
    assert detach_window_cpu(samples[:1], 10.0, 12.0, detached=1000, cores=2) == {}
    assert detach_window_cpu(samples, 10.0, 12.0, detached=0, cores=2) == {}


def test_detach_window_runs_from_the_first_detach_intent_to_its_last_answer():
    from responder.drill.bench import detach_window
    records = [{"seq": 1, "kind": "intent", "action": "scale", "ts": "2026-11-30T10:00:00.000Z"},
               {"seq": 2, "kind": "intent", "action": "detach", "ts": "2026-11-30T10:00:01.000Z"},
               {"seq": 3, "kind": "intent", "action": "detach", "ts": "2026-11-30T10:00:01.100Z"},
               {"seq": 4, "kind": "outcome", "intent": 1, "ts": "2026-11-30T10:00:05.000Z"},
               {"seq": 5, "kind": "outcome", "intent": 3, "ts": "2026-11-30T10:00:02.000Z"},
               {"seq": 6, "kind": "outcome", "intent": 2, "ts": "2026-11-30T10:00:03.500Z"}]
    start, end = detach_window(records)
    assert round(end - start, 3) == 2.5
    assert detach_window(records[:1]) is None
