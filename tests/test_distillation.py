import math

import pytest
import torch

from hfprune import ConfigError
from hfprune.distillation import DistillationConfig, distillation_loss, hidden_state_loss, kd_loss


def test_kd_loss_matches_hand_computed_kl():
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0]])
    temperature = 2.0
    # softmax([0.5, 0]) and softmax([0, 0.5]) by hand.
    p_student = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    p_teacher = [p_student[1], p_student[0]]
    kl = sum(t * math.log(t / s) for t, s in zip(p_teacher, p_student, strict=True))
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(kl * temperature**2, rel=1e-5)


def test_kd_loss_is_zero_for_equal_logits_and_mse_for_regression():
    logits = torch.randn(4, 3)
    assert kd_loss(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [1.0]])).item() == pytest.approx((1 + 4) / 2)


def test_kd_loss_shape_mismatch_is_clear():
    with pytest.raises(ConfigError, match="same labels"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 2))


def test_weighted_sum_of_terms():
    config = DistillationConfig(temperature=1.0, alpha=0.75, hidden_weight=2.0, hidden_layers=[1])
    student_hidden = (torch.zeros(1, 2, 4), torch.ones(1, 2, 4))
    teacher_hidden = (torch.ones(1, 2, 4), torch.zeros(1, 2, 4))
    logits = torch.tensor([[0.3, -0.2]])
    terms = distillation_loss(torch.tensor(0.8), logits, logits, config, student_hidden, teacher_hidden)
    assert terms["hidden_loss"].item() == pytest.approx(1.0)
    assert terms["loss"].item() == pytest.approx(0.25 * 0.8 + 0.75 * 0.0 + 2.0 * 1.0, abs=1e-6)


def test_hidden_state_loss_checks_widths_and_indices():
    with pytest.raises(ConfigError, match="equal widths"):
        hidden_state_loss((torch.zeros(1, 2, 4),), (torch.zeros(1, 2, 8),), [0])
    with pytest.raises(ConfigError, match="out of range"):
        hidden_state_loss((torch.zeros(1, 2, 4),), (torch.zeros(1, 2, 4),), [3])


@pytest.mark.parametrize(("kwargs", "match"), [({"temperature": 0}, "temperature"), ({"alpha": 1.5}, "alpha")])
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DistillationConfig(**kwargs)


def test_config_round_trip(tmp_path):
    config = DistillationConfig(temperature=3.0, alpha=0.5, hidden_weight=0.1, hidden_layers=[2, 4])
    config.save_pretrained(tmp_path)
    assert DistillationConfig.from_pretrained(tmp_path) == config
