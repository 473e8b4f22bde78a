"""The learning-rate schedule equals transformers.get_cosine_schedule_with_warmup at every step."""

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from alpaca_plw.train import plan, trainer
from alpaca_plw.train.schedule import lr_factor, make_scheduler


def _lrs(make, steps, lr=2e-5):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make(optimizer)
    seen = []
    for _ in range(steps):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("total,warmup_ratio", [(10, 0.0), (10, 0.03), (10, 0.3), (1, 0.0),
                                                (1, 0.5), (7, 0.2), (1218, 0.03), (4, 0.99)])
def test_lr_at_every_step_equals_hugging_face_cosine_with_warmup(total, warmup_ratio):
    warmup = math.ceil(warmup_ratio * total)  # what the trainer's plan and HF TrainingArguments use
    ours = _lrs(lambda o: make_scheduler(o, warmup, total), total)
    theirs = _lrs(lambda o: get_cosine_schedule_with_warmup(o, warmup, total), total)
    assert ours == theirs  # exactly, step by step


def test_resumed_schedule_continues_exactly():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, 3, 12)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = make_scheduler(fresh_opt, 3, 12)
    resumed.load_state_dict(state)
    assert resumed.get_last_lr() == scheduler.get_last_lr() == [lr_factor(5, 3, 12)]


def test_trainer_and_plan_use_the_one_schedule():
    assert trainer.lr_factor is plan.lr_factor is lr_factor
    assert lr_factor(0, 2, 10) == 0.0  # warmup starts at 0, as in the recipe
