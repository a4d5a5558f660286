"""`responder bench detect`'s scoring (pure): the confusion matrix and the incident latencies."""

from __future__ import annotations

from responder.drill.detect_bench import score


def test_score_counts_false_incidents_and_misses_and_spreads_latencies():
    cases = [{"case": "owner", "expected": "routine", "decided": "routine", "writes": 0},
             {"case": "restart", "expected": "routine", "decided": "incident", "writes": 2},
             {"case": "crd", "expected": "incident", "decided": "incident", "detection_latency_ms": 4.0,
              "first_write_after_detection_ms": 2.0, "saved_share": 1.0},
             {"case": "burst", "expected": "incident", "decided": "incident", "detection_latency_ms": 10.0,
              "first_write_after_detection_ms": 6.0, "saved_share": 0.98},
             {"case": "late", "expected": "incident", "decided": "routine"}]
    result = score(cases)
    assert result["confusion"] == {"incident": {"incident": 2, "routine": 1}, "routine": {"incident": 1, "routine": 1}}
    assert result["false_incidents"] == 1 and result["missed"] == 1 and result["writes_in_routine_cases"] == 2
    assert result["detection_latency_ms"] == {"median": 7.0, "max": 10.0}
    assert result["first_write_after_detection_ms"] == {"median": 4.0, "max": 6.0}
    assert result["saved_share_min"] == 0.98


def test_score_counts_namespaces_recovery_left_without_their_live_tenant():
    cases = [{"case": "rebuilt", "expected": "incident", "decided": "incident", "saved_share": 1.0,
              "recovery": {"readopt": "finished"}, "alive_of_case": 20, "owned_by_live_tenant": 18},
             {"case": "late-start", "expected": "incident", "decided": "incident", "saved_share": 1.0,
              "recovery": {"readopt": "finished"}, "alive_of_case": 20, "owned_by_live_tenant": 20},
             {"case": "crd", "expected": "incident", "decided": "incident", "saved_share": 1.0}]
    assert score(cases)["not_owned_after_recovery"] == 2
