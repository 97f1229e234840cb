"""mdl_2: stage shapes, parameter counts, the shared GeM, dropouts, rotary attention, the weighted loss,
gradients, bf16 autocast."""
import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from data.ds_2 import CustomDataset
from models.layers import GeM, kl_loss
from models.mdl_2 import Net, weighted_kl_loss
from models.squeezeformer import RotaryAttention, RotaryEmbedding, apply_rotary
from utils.config import load_config


def make_net(**kw):
    cfg = load_config("cfg_2a")
    for k, v in kw.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    return Net(cfg)


def n_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_stage_shapes_for_a_50s_window():
    net = make_net().eval()
    x = torch.randn(2, 10_000, 16)
    with torch.no_grad():
        fe = net.frontend(x.transpose(1, 2).unsqueeze(1))
        assert fe.shape == (2, 128, 14, 312)
        seq = net.pool(fe).transpose(1, 2)
        assert seq.shape == (2, 312, 128)
        cos, sin = net.rotary(312)
        for block in net.blocks:
            seq = block(seq, cos, sin)
            assert seq.shape == (2, 312, 128)
        pooled = net.pool(seq.transpose(1, 2))
        assert pooled.shape == (2, 128)
        logits = net.head(pooled)
        torch.testing.assert_close(net({"input": x})["logits"], logits)  # forward = these stages
    assert logits.shape == (2, 6)


def test_parameter_counts():
    without = make_net(rotary_trainable=False)
    assert n_trainable(without) == 668_825
    assert sum(p.numel() for p in without.parameters()) == 668_825  # nothing frozen
    net = make_net(rotary_trainable=True)
    assert n_trainable(net) == 708_825
    assert n_trainable(make_net(rotary_trainable=True, extra_dropouts=True)) == 708_825
    assert net.rotary.cos.shape == net.rotary.sin.shape == (625, 32) and net.rotary.cos.requires_grad
    assert "rotary.cos" in net.state_dict() and "rotary.cos" not in make_net(rotary_trainable=False).state_dict()


def small_net(**kw):
    return make_net(frontend_filters=8, sq_dim=16, sq_heads=2, sq_layers=1, rotary_trainable=False, **kw)


def test_one_gem_pools_rows_and_time_and_gets_both_gradients():
    net = small_net().eval()  # eval: no dropout, so the two computations below see the same function
    gems = [m for m in net.modules() if isinstance(m, GeM)]
    assert len(gems) == 1 and gems[0] is net.pool
    assert [n for n, _ in net.named_parameters() if n.endswith(".p")] == ["pool.p"]
    calls = []
    net.pool.register_forward_hook(lambda m, i, o: calls.append(i[0].dim()))
    torch.manual_seed(2)
    batch = {"input": torch.randn(2, 2000, 16), "target": torch.softmax(torch.randn(2, 6), 1)}
    (g_shared,) = torch.autograd.grad(net(batch)["loss"], net.pool.p)
    assert calls == [4, 3]  # (B, C, rows, T') then (B, C, T')
    # the same forward with the row pool's p as a separate copy: the shared grad is the sum of both
    rows_gem = copy.deepcopy(net.pool)
    seq = rows_gem(net.frontend(batch["input"].transpose(1, 2).unsqueeze(1))).transpose(1, 2)
    cos, sin = net.rotary(seq.shape[1])
    for block in net.blocks:
        seq = block(seq, cos, sin)
    logits = net.head(net.pool(seq.transpose(1, 2)))
    torch.testing.assert_close(logits, net(batch)["logits"])
    g_rows, g_time = torch.autograd.grad(kl_loss(logits, batch["target"]), [rows_gem.p, net.pool.p])
    assert g_rows.abs() > 0 and g_time.abs() > 0
    torch.testing.assert_close(g_shared, g_rows + g_time)


def count_dropouts(net):
    return sum(isinstance(m, torch.nn.Dropout) for m in net.modules())


def test_dropouts_as_the_reference_applies_them():
    for name in ("cfg_2a", "cfg_2b"):
        cfg = load_config(name)
        assert cfg.extra_dropouts is False
        net = Net(cfg)
        assert count_dropouts(net) == 15  # 3 blocks x (2 FF x 2 + conv 1)
        assert {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}
    assert count_dropouts(make_net(extra_dropouts=True)) == 19  # + input dropout + 3 on attention
    # no dropout hidden outside modules: with the module dropouts at 0, training mode is deterministic
    batch = {"input": torch.randn(2, 2000, 16)}
    net = small_net(sq_dropout=0.0, channel_dropout_p=0.0).train()
    torch.testing.assert_close(net(batch)["logits"], net(batch)["logits"])
    net = small_net(sq_dropout=0.0, channel_dropout_p=0.0, extra_dropouts=True).train()
    assert not torch.allclose(net(batch)["logits"], net(batch)["logits"])


def test_attention_dropout_acts_on_the_probabilities():
    torch.manual_seed(0)
    attn = RotaryAttention(dim=32, heads=2, dropout=0.5).train()
    x = torch.randn(1, 20, 32)
    cos, sin = RotaryEmbedding(16, 625)(20)
    torch.manual_seed(1)
    out = attn(x, cos, sin)
    with torch.no_grad():
        probs, values = [], []
        for h in range(2):
            sl = slice(16 * h, 16 * h + 16)
            q = apply_rotary(x @ attn.q.weight[sl].T, cos, sin)
            k = apply_rotary(x @ attn.k.weight[sl].T, cos, sin)
            probs.append(torch.softmax(q @ k.transpose(1, 2) / 4, dim=-1))
            values.append(x @ attn.v.weight[sl].T)
        torch.manual_seed(1)
        mask = F.dropout(torch.ones(1, 2, 20, 20), 0.5)  # the same random stream as the module's
        ref = torch.cat([(probs[h] * mask[:, h]) @ values[h] for h in range(2)], -1) @ attn.o.weight.T
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert RotaryAttention(dim=32, heads=2).drop is None  # the default, as in the reference


def test_rotary_is_a_rotation_with_relative_positions():
    rot = RotaryEmbedding(head_dim=32, max_len=625, base=10000.0)
    cos, sin = rot(625)
    # Llama's tables: angle(t, i) = t / base^(2i/d), the half-frequencies repeated
    assert cos[3, 5].item() == pytest.approx(math.cos(3 / 10000 ** (10 / 32)), abs=1e-6)
    assert torch.equal(cos[:, :16], cos[:, 16:])
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(32, generator=g), torch.randn(32, generator=g)
    rq = apply_rotary(q.expand(625, 32), cos, sin)
    rk = apply_rotary(k.expand(625, 32), cos, sin)
    torch.testing.assert_close(rq.norm(dim=1), q.norm().expand(625), rtol=1e-5, atol=1e-5)
    for delta in (0, 7, -40):
        dots = torch.stack([rq[m] @ rk[m - delta] for m in (50, 120, 300, 500)])
        torch.testing.assert_close(dots, dots[:1].expand(4), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(rq[100] @ rk[90], rq[100] @ rk[80])  # but it does depend on m - n


@pytest.mark.parametrize("dropout", [0.0, 0.2])  # fused SDPA path / explicit path (evaluation: no dropout)
def test_attention_equals_plain_softmax_attention(dropout):
    torch.manual_seed(0)
    attn = RotaryAttention(dim=128, heads=4, dropout=dropout).eval()
    x = torch.randn(2, 50, 128)
    cos, sin = RotaryEmbedding(32, 625)(50)
    with torch.no_grad():
        out = attn(x, cos, sin)
        wq, wk, wv, wo = (m.weight for m in (attn.q, attn.k, attn.v, attn.o))
        heads = []
        for h in range(4):  # plain per-head computation
            sl = slice(32 * h, 32 * h + 32)
            q = apply_rotary(x @ wq[sl].T, cos, sin)
            k = apply_rotary(x @ wk[sl].T, cos, sin)
            heads.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(32), dim=-1) @ (x @ wv[sl].T))
        ref = torch.cat(heads, dim=-1) @ wo.T
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_weighted_loss_sums_per_weight_batchmeans():
    torch.manual_seed(0)
    logits = torch.randn(7, 6)
    target = torch.softmax(torch.randn(7, 6), dim=1)
    w = torch.tensor([0.3, 1.0, 0.3, 0.5, 1.0, 1.0, 0.3])
    by_hand = 0.0
    for value in (0.3, 0.5, 1.0):
        rows = w == value
        by_hand += value * F.kl_div(F.log_softmax(logits[rows], 1), target[rows], reduction="batchmean")
    torch.testing.assert_close(weighted_kl_loss(logits, target, w), by_hand)
    torch.testing.assert_close(weighted_kl_loss(logits, target, torch.ones(7)), kl_loss(logits, target))
    # the net uses it only in training; evaluation gives plain KL
    net = make_net(rotary_trainable=False)
    batch = {"input": torch.randn(2, 2000, 16), "target": target[:2], "label_weight": torch.tensor([0.3, 1.0])}
    net.eval()
    with torch.no_grad():
        out = net(batch)
    torch.testing.assert_close(out["loss"], kl_loss(out["logits"], target[:2]))
    net.train()
    torch.manual_seed(3)
    out = net(batch)
    torch.testing.assert_close(out["loss"], weighted_kl_loss(out["logits"], target[:2], batch["label_weight"]))


def test_finite_loss_and_gradients_everywhere():
    net = make_net(rotary_trainable=True).train()
    torch.manual_seed(1)
    batch = {"input": torch.randn(2, 2000, 16), "target": torch.softmax(torch.randn(2, 6), 1),
             "label_weight": torch.tensor([0.5, 1.0])}
    out = net(batch)
    assert out["logits"].shape == (2, 6) and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert net.rotary.cos.grad.abs().sum() > 0 and net.pool.p.grad.abs() > 0
    net.eval()
    with torch.no_grad():  # no dropout of any kind in evaluation
        torch.testing.assert_close(net(batch)["logits"], net(batch)["logits"])


def test_bfloat16_autocast_on_dataset_input(tiny_data):
    cfg = load_config("cfg_2a")
    cfg.data_dir, cfg.cache_dir = str(tiny_data), str(tiny_data / "cache")
    ds = CustomDataset(pd.read_csv(tiny_data / cfg.train_df), cfg, mode="train")
    torch.manual_seed(0)
    batch = torch.utils.data.default_collate([ds[0], ds[5]])
    assert batch["input"].abs().max() > 1  # realistic amplitudes reach the model
    net = Net(cfg).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(batch)
    assert torch.isfinite(out["logits"].float()).all() and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
