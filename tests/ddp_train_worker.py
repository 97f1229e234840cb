"""tests/test_ddp.py's worker under torchrun (not a test itself).

    torchrun --nproc_per_node 2 tests/ddp_train_worker.py train OUT_DIR train.py-args...
        train.py's own build() and train_epoch() under DDP; each rank saves its initial parameters and, after
        every epoch, its parameters and the (epoch, row) keys its loader handed out (rank<r>_epoch<e>.pt)
    torchrun --nproc_per_node 2 tests/ddp_train_worker.py validate OUT_DIR JOBS.pt
        for each (name, cfg, state_dict, rows) job: train.py's validation (predict_logits) over the ranks;
        rank 0 saves the gathered logits (val_<name>.pt)
"""
import sys
from pathlib import Path

import torch

import train
from engine.build import build_dataset, build_model
from engine.evaluate import predict_logits
from engine.loaders import make_train_loader
from engine.precision import autocast_ctx
from engine.tracking import Tracker
from utils import distributed as dist_utils


def train_and_record(out: Path, argv: list[str], info) -> None:
    cfg, opts = train.parse_args(argv)
    run = train.build(cfg, opts, info, lambda *a, **k: None)
    run.tracker = Tracker(cfg, out, enabled=False)
    net = torch.nn.parallel.DistributedDataParallel(run.model) if info.distributed else run.model
    torch.save([p.detach().clone() for p in run.model.parameters()], out / f"rank{info.rank}_init.pt")
    for epoch in range(cfg.epochs):
        if run.loader is None:
            run.loader = make_train_loader(cfg, run.train_df, info, epoch)
        run.loader.sampler.set_epoch(epoch)
        keys = list(run.loader.sampler)
        train.train_epoch(run, net, epoch)
        torch.save({"params": [p.detach().clone() for p in run.model.parameters()], "keys": keys,
                    "scale": run.scaler.get_scale() if run.scaler.is_enabled() else 1.0},
                   out / f"rank{info.rank}_epoch{epoch}.pt")


def validate(out: Path, jobs_file: str, info) -> None:
    for name, cfg, state, rows in torch.load(jobs_file, weights_only=False):
        model = build_model(cfg)
        model.load_state_dict(state)
        logits, _ = predict_logits(model, build_dataset(rows, cfg, mode="val"), cfg, info,
                                         autocast_ctx("float32", info.device))
        if info.is_main:
            torch.save(torch.from_numpy(logits), out / f"val_{name}.pt")


def main(mode: str, out: str, *rest: str) -> None:
    info = dist_utils.setup()
    (train_and_record if mode == "train" else validate)(Path(out), list(rest) if mode == "train" else rest[0], info)
    dist_utils.barrier(info)
    dist_utils.cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:])
