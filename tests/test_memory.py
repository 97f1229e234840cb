"""engine/cpu_cost.py: the CPU cost estimate train.py prints before a real-size config, and its way out."""
import shlex

import pytest

from configs.demo import demo_overrides
from engine import cpu_cost as memory
from utils.config import apply_overrides, available_configs, load_config


@pytest.mark.parametrize("name", available_configs())
def test_every_real_config_has_an_estimate_that_grows_with_the_batch(name):
    cfg = load_config(name)
    gb, minutes = memory.estimate_train_memory_gb(cfg), memory.estimate_step_minutes(cfg)
    assert memory.measured_twin(cfg) in memory.CPU_MEASURED and gb > 0.5 and minutes > 0
    cfg.batch_size *= 2
    assert memory.estimate_train_memory_gb(cfg) > gb and memory.estimate_step_minutes(cfg) > 1.5 * minutes


def test_twins_share_figures_and_the_biggest_zoom_costs_most():
    est = {n: memory.estimate_train_memory_gb(load_config(n)) for n in ("cfg_5a", "cfg_5b", "cfg_5c", "cfg_5d", "cfg_4")}
    assert est["cfg_5a"] == est["cfg_5b"] == est["cfg_5c"]
    assert memory.measured_twin(load_config("cfg_2b")) == "cfg_2a"
    per_sample = {n: memory.estimate_train_memory_gb(load_config(n)) / load_config(n).batch_size for n in ("cfg_4", "cfg_5a", "cfg_5d")}
    assert per_sample["cfg_4"] < per_sample["cfg_5a"] < per_sample["cfg_5d"]  # zoom widths 351 < 601 < 1201 frames


@pytest.mark.parametrize("name", ["cfg_5a", "cfg_2a", "cfg_1"])
def test_warning_names_cost_and_a_cpu_sized_run_that_parses(name):
    cfg = load_config(name)
    line = memory.cpu_warning(cfg, n_train_rows=5000)
    assert "\n" not in line and f"{name} is sized for a GPU" in line and "GB" in line and "h per epoch" in line
    assert f"min per batch of {cfg.batch_size}" in line
    suggested = line.split("add ", 1)[1]
    small = apply_overrides(load_config(name), shlex.split(suggested))
    assert small.batch_size == 8 and small.pretrained is False
    assert memory.measured_twin(small) is None and memory.cpu_warning(small) is None  # no warning once small


def test_no_warning_for_the_demo_sizes():
    for name in available_configs():
        cfg = apply_overrides(load_config(name), demo_overrides(name))
        assert memory.estimate_train_memory_gb(cfg) is None and memory.cpu_warning(cfg) is None
