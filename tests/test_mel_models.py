"""mdl_1, mdl_3, mdl_4 (docs/solution.md §6): parameter counts, images, views, zoom splice, top_db quirk, dropout, weights.

Tests that are not about the real backbone swap in timm's tiny 'test_efficientnet' to stay fast.
"""
import math

import pytest
import timm
import torch

from models import backbone as backbone_mod
from models.layers import MelFrontEnd
from models.mdl_3 import LEFT_FIRST, PARTNERS, three_views
from engine.build import build_model
from utils.config import load_config


def cfg_of(name, tiny=True, **kw):
    cfg = load_config(name)
    cfg.pretrained = False
    if tiny:
        cfg.backbone = "test_efficientnet"
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def batch(b=2, seed=0, centers=None):
    g = torch.Generator().manual_seed(seed)
    return {"input": torch.randn(b, 10_000, 16, generator=g) * 3,
            "target": torch.softmax(torch.randn(b, 6, generator=g), 1),
            "center": torch.tensor(centers if centers is not None else [5000] * b)}


@pytest.mark.parametrize("name,count", [("cfg_1", 10_368_271), ("cfg_3", 5_801_475), ("cfg_4", 10_368_991),
                                        ("cfg_5a", 10_368_991), ("cfg_5b", 10_368_991), ("cfg_5c", 10_368_991),
                                        ("cfg_5d", 10_368_991)])
def test_trainable_parameter_counts(name, count):
    model = build_model(cfg_of(name, tiny=False))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count


@pytest.mark.parametrize("name,shape", [("cfg_1", (1, 2048, 257)), ("cfg_3", (3, 1024, 313)),
                                        ("cfg_4", (3, 1024, 313 - 62 + 351)), ("cfg_5a", (3, 1024, 852)),
                                        ("cfg_5d", (3, 1024, 313 - 62 + 1201))])
def test_image_shapes_and_float32_mel_under_autocast(name, shape):
    model = build_model(cfg_of(name)).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        img = model.make_image(batch())
    assert img.shape == (2, *shape) and img.dtype == torch.float32


@pytest.mark.parametrize("name", ["cfg_1", "cfg_3", "cfg_5a"])
def test_forward_backward_finite_loss_and_gradients(name):
    torch.manual_seed(0)
    model = build_model(cfg_of(name)).train()
    out = model(batch(centers=[300, 9000]))
    assert out["logits"].shape == (2, 6) and torch.isfinite(out["loss"])
    out["loss"].backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    stem = model.backbone.conv_stem.weight.grad
    assert stem.abs().sum() > 0 and model.pool.p.grad.abs() > 0 and model.head.weight.grad.abs().sum() > 0
    model.eval()
    assert "loss" not in model({k: v for k, v in batch().items() if k != "target"})


def test_eval_is_independent_of_dropout_and_train_is_not():
    torch.manual_seed(0)
    model = build_model(cfg_of("cfg_3", drop_rate=0.5))
    b = batch()
    model.eval()
    with torch.no_grad():
        a = model(b)["logits"]
        model.cfg.channel_dropout_p = 1.0  # read at forward time; must not matter in eval
        assert torch.equal(a, model(b)["logits"])
        model.train()
        t1, t2 = model.make_image(b), model.make_image(b)
    assert not torch.equal(t1, t2)  # channel dropout p 1 zeroes different channels per call


def test_views_partners_and_left_first_order():
    spec = torch.randn(2, 16, 4, 5)
    views = three_views(spec)
    for ch in range(16):
        others = [k for k in range(16) if k != ch]
        a, b = PARTNERS[ch]
        torch.testing.assert_close(views[:, ch, 0], spec[:, ch])
        torch.testing.assert_close(views[:, ch, 1], spec[:, ch] - spec[:, others].mean(1))
        torch.testing.assert_close(views[:, ch, 2], spec[:, ch] - (spec[:, a] + spec[:, b]) / 2)
    assert LEFT_FIRST == [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15]
    b = batch()
    for name, order in (("cfg_3", LEFT_FIRST), ("cfg_4", list(range(16)))):
        model = build_model(cfg_of(name)).eval()
        with torch.no_grad():
            img, spec = model.make_image(b), model.spectrogram(b)
        f = spec.shape[2]
        for row, ch in enumerate(order):
            torch.testing.assert_close(img[:, 0, row * f:(row + 1) * f], spec[:, ch])


def test_channel_dropout_zeroes_all_views_of_a_channel():
    torch.manual_seed(3)
    model = build_model(cfg_of("cfg_3", channel_dropout_p=1.0)).train()
    img = model.make_image(batch(b=4))
    blocks = img.reshape(4, 3, 16, 64, -1).abs().amax(dim=(3, 4))  # (B, view, channel)
    zero = blocks == 0
    assert zero.any(dim=2).all()  # p 1: every sample loses at least one channel
    assert (zero.all(dim=1) == zero.any(dim=1)).all()  # all three views or none
    assert zero[:, 0].sum(1).max() <= 8


def test_zoom_crop_and_splice_columns():
    model = build_model(cfg_of("cfg_5a")).eval()
    centers = torch.tensor([0, 1234, 5000, 9999])
    x = torch.arange(10_000.).repeat(4, 2, 1)  # value = time index
    crop = model.crop_center(x, centers)
    for i, c in enumerate(centers.tolist()):
        s = min(max(c - 1200, 0), 10_000 - 2400)
        torch.testing.assert_close(crop[i, 1], torch.arange(s, s + 2400.))
    w, wz = 313, 601
    main = torch.arange(w, dtype=torch.float32).repeat(4, 2, 3, 1)
    zoom = -1 - torch.arange(wz, dtype=torch.float32).repeat(4, 2, 3, 1)
    out = model.splice(main, zoom, centers, 10_000)
    assert out.shape == (4, 2, 3, 852)
    b = math.floor(w * 0.2) // 2
    assert b == 31
    for i, c in enumerate(centers.tolist()):
        s = min(max(math.floor(w * c / 10_000) - b, 0), w - 2 * b - 1)
        want = torch.cat([torch.arange(s), -1 - torch.arange(wz), torch.arange(s + 2 * b, w)]).float()
        torch.testing.assert_close(out[i, 1, 2], want)
    assert [int((out[i, 0, 0] < 0).nonzero()[0]) for i in range(4)] == [0, 7, 125, 250]  # floor(313 * c / 1e4) - 31, clamped to [0, 250]


def test_zoom_image_holds_the_center_mel():
    model = build_model(cfg_of("cfg_4")).eval()
    b = batch(centers=[2000, 7000])
    with torch.no_grad():
        spec = model.spectrogram(b)
        x = b["input"].transpose(1, 2)
        for i, c in enumerate([2000, 7000]):
            zoom = MelFrontEnd(model.cfg.spec_args_center, 100.0)(x[:, :, c - 1400:c + 1400])
            s = 313 * c // 10_000 - 31
            torch.testing.assert_close(spec[i, :, :, s:s + 351], zoom[i])


def test_top_db_floor_is_batch_wide():
    model = build_model(cfg_of("cfg_5a")).eval()
    g = torch.Generator().manual_seed(0)
    loud = torch.randn(1, 16, 10_000, generator=g) * 1e4
    quiet = torch.randn(1, 16, 10_000, generator=g) * 1e-3
    with torch.no_grad():
        alone = model.mel(quiet)
        both = model.mel(torch.cat([loud, quiet]))
    assert model.mel.top_db == 100
    top = both.max()
    assert torch.isclose(both[1].min(), top - 100)  # the quiet sample is floored by the loud one
    assert alone.min() < top - 100 - 1 and not torch.allclose(both[1], alone[0])


def test_pretrained_download_failure_says_how_to_run_offline(monkeypatch):
    real = timm.create_model

    def fake(name, pretrained=False, **kw):
        if pretrained and "pretrained_cfg_overlay" not in kw:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(backbone_mod.timm, "create_model", fake)
    monkeypatch.setattr(backbone_mod, "hub_reachable", lambda: True)  # reachable, yet the download fails
    cfg = cfg_of("cfg_3", pretrained=True)
    with pytest.raises(backbone_mod.PretrainedWeightsError) as err:
        build_model(cfg)
    msg = str(err.value)
    assert "test_efficientnet" in msg and "couldn't connect" in msg
    assert "--pretrained False" in msg and "--pretrained_weights" in msg


def test_local_weights_file_and_fresh_stem(tmp_path):
    src = timm.create_model("test_efficientnet", pretrained=False, num_classes=0, global_pool="")
    with torch.no_grad():
        for p in src.parameters():
            p.fill_(0.125)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model = build_model(cfg_of("cfg_3", pretrained=True, pretrained_weights=str(tmp_path / "w.pth")))
    assert torch.all(model.backbone.blocks[0][0].conv.weight == 0.125)
    stem = model.backbone.conv_stem
    assert stem.bias is None and stem.stride == (2, 2) and stem.padding == (1, 1) and stem.in_channels == 3
    assert not torch.all(stem.weight == 0.125)  # docs/solution.md §6: mdl_3/4 stems are freshly initialised
    with pytest.raises(backbone_mod.PretrainedWeightsError, match=r"nope\.pth: pretrained_weights file not found"):
        build_model(cfg_of("cfg_3", pretrained_weights=str(tmp_path / "nope.pth")))


def test_forward_copies_no_index_tensor_from_the_host(monkeypatch):
    """mdl_3/mdl_4 keep their index tensors as non-persistent buffers: the state dict is unchanged and a
    forward builds no tensor from a Python list (which would be a host-to-device copy per step on a GPU)."""
    for name in ("cfg_3", "cfg_5a"):
        model = build_model(cfg_of(name)).train()
        assert not {"left_first", "partners", "crop_offsets"} & set(model.state_dict())
        b = batch(centers=[300, 9000])

        def no_tensor(*args, **kwargs):
            raise AssertionError("torch.tensor called in forward")

        with monkeypatch.context() as m:
            m.setattr(torch, "tensor", no_tensor)
            out = model(b)
        assert torch.isfinite(out["loss"])
