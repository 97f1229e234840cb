"""One training step of a small mdl_3 under torchrun, for tests/test_cuda.py (not a test itself).

    torchrun --nproc_per_node N tests/ddp_step_worker.py OUT.pt

Every rank builds the same model and the same 4-row batch and takes its contiguous share of the rows;
rank 0 saves the parameters after one SGD step. Eval mode (no batch statistics, no dropout) and
float32, so N processes must make exactly the update one process makes with all rows.
"""
import sys

import torch
import torch.distributed as dist

from utils import distributed as dist_utils
from engine.build import build_model
from utils.config import load_config
from engine.step import backward, optimizer_step


def main(out: str) -> None:
    info = dist_utils.setup()  # NCCL on GPUs; gloo on the CPU (the test hides the GPUs for a CPU run)
    cfg = load_config("cfg_3")
    cfg.pretrained, cfg.backbone = False, "test_efficientnet"
    torch.manual_seed(0)
    model = build_model(cfg).to(info.device).eval()
    before = [p.detach().cpu().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(1)
    batch = {"input": torch.randn(4, cfg.window_len, 16, generator=g) * 3,
             "target": torch.softmax(torch.randn(4, 6, generator=g), 1)}
    rows = torch.arange(4).chunk(info.world_size)[info.rank]
    batch = {k: v[rows].to(info.device) for k, v in batch.items()}
    net = model
    if info.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler(info.device.type, enabled=False)
    backward(net(batch)["loss"], scaler, 1)
    optimizer_step(model.parameters(), opt, scaler, clip_grad=None)
    if info.is_main:
        torch.save({"params": [p.detach().cpu() for p in model.parameters()], "before": before,
                    "world_size": info.world_size,
                    "backend": dist.get_backend() if info.distributed else None}, out)
    dist_utils.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
