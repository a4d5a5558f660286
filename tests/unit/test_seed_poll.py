from responder.lab.seed import poll_interval


def test_small_seeds_poll_at_the_base_interval():
    assert poll_interval(20, 0.5) == 0.5
    assert poll_interval(5, 0.2) == 0.2


def test_large_seeds_poll_less_often_up_to_ten_seconds():
    assert poll_interval(100, 0.5) == 2.0
    assert poll_interval(500, 0.5) == 10.0
    assert poll_interval(5000, 0.5) == 10.0
