import pytest

from hfprune import ConfigError, ConstantSchedule, CubicSchedule, LinearSchedule


def test_constant_returns_final_at_every_step():
    schedule = ConstantSchedule()
    assert [schedule(step, 0.7) for step in (0, 1, 10_000)] == [0.7, 0.7, 0.7]


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        # s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3 with s_i=0.1, s_f=0.9, t0=100, t1=500, every=1.
        (0, 0.1),  # warm-up holds the initial sparsity
        (100, 0.1),
        (200, 0.9 - 0.8 * 0.75**3),  # = 0.5625
        (300, 0.9 - 0.8 * 0.5**3),  # = 0.8
        (400, 0.9 - 0.8 * 0.25**3),  # = 0.8875
        (500, 0.9),
        (10_000, 0.9),
    ],
)
def test_cubic_matches_zhu_gupta_by_hand(step, expected):
    schedule = CubicSchedule(initial=0.1, start_step=100, end_step=500)
    assert schedule(step, 0.9) == pytest.approx(expected)


def test_cubic_updates_only_every_n_steps():
    schedule = CubicSchedule(start_step=0, end_step=1000, every=100)
    # Steps 100..199 share the value of step 100 (pruning frequency).
    assert schedule(150, 0.8) == schedule(100, 0.8) == pytest.approx(0.8 * (1 - 0.9**3))
    assert schedule(199, 0.8) != schedule(200, 0.8)


def test_linear_by_hand():
    schedule = LinearSchedule(initial=0.0, start_step=0, end_step=10)
    assert [schedule(step, 0.5) for step in (0, 2, 5, 10, 11)] == pytest.approx([0.0, 0.1, 0.25, 0.5, 0.5])


def test_override_below_initial_never_overshoots():
    schedule = CubicSchedule(initial=0.5, start_step=0, end_step=10)
    assert schedule(0, 0.2) == pytest.approx(0.2)
    assert schedule(10, 0.2) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start_step": 10, "end_step": 10}, "start_step < end_step"),
        ({"every": 0}, "every"),
        ({"initial": 1.0}, r"\[0, 1\)"),
    ],
)
def test_bad_schedule_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CubicSchedule(**kwargs)
