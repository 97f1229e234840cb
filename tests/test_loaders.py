"""engine/loaders.py: workers per process from this node's CPUs, fixed validation batches; train.py's guard
against a run that never steps; resuming with another number of GPUs."""
import numpy as np
import pytest
import torch

import train
from engine import loaders
from utils import seed as seeds
from utils.distributed import DistInfo
from utils.io import run_cli


class Cfg:
    num_workers = 8


@pytest.mark.parametrize("env, affinity, world, local, expected", [
    ({"SLURM_CPUS_PER_TASK": "32"}, 32, 8, 4, 8),  # 2 nodes x 4 GPUs, 32 CPUs per node: 8 each, not 32 // 8 = 4
    ({"SLURM_CPUS_PER_TASK": "4"}, 64, 1, 1, 4),  # SLURM's allocation, not the node's 64 cores
    ({"SLURM_CPUS_PER_TASK": "6"}, 64, 4, 4, 1),
    ({}, 64, 1, 1, 8),  # capped at 8
    ({}, 12, 4, 4, 3),  # the affinity mask split over the node's 4 processes
    ({}, 2, 1, 1, 2),
    ({}, 2, 4, 4, 0),  # fewer CPUs than processes: load in-process
])
def test_workers_per_process_come_from_this_node(monkeypatch, env, affinity, world, local, expected):
    monkeypatch.setattr(loaders.os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    info = DistInfo(rank=0, world_size=world, local_world_size=local)
    assert loaders.n_workers(Cfg, info, environ=env) == expected
    small = type("Small", (), {"num_workers": 2})
    assert loaders.n_workers(small, info, environ=env) == min(expected, 2)


def test_only_the_training_loader_keeps_its_workers(monkeypatch):
    monkeypatch.setattr(loaders.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    info = DistInfo()
    assert loaders.worker_args(Cfg, info) == {"num_workers": 4, "persistent_workers": True, "prefetch_factor": 4}
    assert loaders.worker_args(Cfg, info, persistent=False) == {"num_workers": 4}


@pytest.mark.parametrize("n, batch", [(7, 3), (10, 4), (1, 5), (64, 16), (5, 1)])
def test_validation_batches_are_the_same_for_any_world_size(n, batch):
    """The batches every rank's loader cuts from its rows are the global batches [0, b), [b, 2b), ..."""
    expected = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
    for world in (1, 2, 3, 4):
        parts = [loaders.val_rows(n, batch, DistInfo(rank=r, world_size=world)) for r in range(world)]
        assert np.concatenate(parts).tolist() == list(range(n))  # rank order is row order, no row twice
        cut = [p[i:i + batch].tolist() for p in parts for i in range(0, len(p), batch)]
        assert cut == expected


def test_a_run_that_would_never_step_stops_before_training(tiny_data, tmp_path, capsys):
    argv = ["-C", "cfg_2a", "--fold", "0", "--seed", "1", "--data_dir", str(tiny_data), "--output_dir",
            str(tmp_path / "out"), "--frontend_filters", "8", "--sq_dim", "16", "--sq_heads", "2", "--sq_layers", "1",
            "--num_workers", "0", "--neptune_mode", "off", "--batch_size", "2", "--epochs", "1",
            "--grad_accumulation", "4"]  # 6 training rows: 3 batches, never 4
    assert run_cli(train.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never step" in err[0] and "--grad_accumulation" in err[0], err
    assert not (tmp_path / "out").exists()
    assert run_cli(train.main, [*argv[:-1], "3"]) == 0  # 3 batches make one step: it trains


def test_cuda_random_states_of_more_gpus_than_this_process_sees(monkeypatch):
    """An 8-GPU run resumed in a one-GPU SLURM task: the states that fit are restored, and one line says so."""
    set_calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: set_calls.append(device))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(8, dtype=torch.uint8)] * 8)
    state = seeds.get_rng_state()
    assert len(state["cuda"]) == 8
    notes = []
    seeds.set_rng_state(state, warn=notes.append)
    assert set_calls == [0] and len(notes) == 1 and "8 GPU(s)" in notes[0] and "sees 1" in notes[0]
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(8, dtype=torch.uint8)])
    set_calls.clear()
    seeds.set_rng_state(seeds.get_rng_state(), warn=notes.append)
    assert set_calls == [0] and len(notes) == 1


def test_pending_gradients_restore_per_rank_or_as_their_mean_scaled_for_the_run():
    """Resume with the same number of processes: each rank its own; with another: the mean of the saved
    ranks (what their all-reduce would have applied); a parameter no rank has a gradient for stays None;
    an fp16 scaler multiplies them by its scale."""
    from engine.step import restore_pending_grads

    saved = [[torch.tensor([1.0, 2.0]), None, torch.tensor([4.0])],
             [torch.tensor([3.0, 6.0]), None, None]]
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    off = torch.amp.GradScaler("cpu", enabled=False)
    restore_pending_grads(params, saved, rank=1, world=2, scaler=off)
    assert params[0].grad.tolist() == [3.0, 6.0] and params[1].grad is None and params[2].grad is None
    restore_pending_grads(params, saved, rank=0, world=1, scaler=off)
    assert params[0].grad.tolist() == [2.0, 4.0] and params[1].grad is None and params[2].grad.tolist() == [2.0]
    fp16 = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    restore_pending_grads(params, saved, rank=0, world=2, scaler=fp16)
    assert params[0].grad.tolist() == [1024.0, 2048.0] and params[2].grad.tolist() == [4096.0]
