"""The mel front-end (models/layers.py): equal to torchaudio's MelSpectrogram + AmplitudeToDB for every
config, traced by torch.compile without a graph break, compiled by Inductor equal to eager, and loading
checkpoints of the torchaudio version."""
import pytest
import torch

from models.layers import MelFrontEnd
from scripts.bench_model import LegacyMel as TorchaudioMel  # the front-end before the rewrite: the reference
from engine.build import build_model
from utils.config import available_configs, load_config

MEL_CONFIGS = [n for n in available_configs() if load_config(n).spec_args is not None]
CASES = [(n, key) for n in MEL_CONFIGS for key in ("spec_args", "spec_args_center")
         if getattr(load_config(n), key, None) is not None]


def signal(length, b=2, c=16, seed=0):
    """Random channels at very different levels, so that top_db floors some of them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, length, generator=g)
    return x * torch.logspace(-4, 3, b * c).reshape(b, c, 1)


@pytest.mark.parametrize("name,key", CASES)
@pytest.mark.parametrize("top_db", [None, 100.0])
def test_equals_torchaudio_for_every_config(name, key, top_db):
    cfg = load_config(name)
    length = cfg.window_len if key == "spec_args" else cfg.enlarge_len
    x = signal(length)
    with torch.no_grad():
        new, ref = MelFrontEnd(getattr(cfg, key), top_db)(x), TorchaudioMel(getattr(cfg, key), top_db)(x)
    assert new.shape == ref.shape and new.dtype == torch.float32
    torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-5)
    if top_db is not None:  # the floor is the max of the whole batch minus top_db
        assert torch.isclose(new.min(), new.max() - top_db) and (new[1] > new[1].min()).any()


def test_top_db_floor_is_one_value_for_the_whole_batch_as_torchaudio_on_3d():
    spec_args = load_config("cfg_5a").spec_args
    x = signal(4000)
    with torch.no_grad():
        together = MelFrontEnd(spec_args, 100.0)(x)
        alone = MelFrontEnd(spec_args, 100.0)(x[:1])
    assert torch.equal(together.amin(dim=(1, 2, 3)), together.amax() - 100 + torch.zeros(2))
    assert not torch.allclose(together[0], alone[0])  # sample 0 is floored by sample 1's maximum


@pytest.mark.parametrize("top_db", [None, 100.0])
def test_compiles_without_graph_breaks_and_equals_eager(top_db):
    mel = MelFrontEnd(load_config("cfg_4").spec_args_center, top_db)
    x = signal(2800)
    explained = torch._dynamo.explain(mel)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    torch.testing.assert_close(mel(x), TorchaudioMel(load_config("cfg_4").spec_args_center, top_db)(x),
                               rtol=1e-5, atol=1e-5)


def test_float32_under_autocast():
    mel = MelFrontEnd(load_config("cfg_3").spec_args)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            out = mel(signal(2000).to(dtype))
        assert out.dtype == torch.float32


def test_loads_state_dicts_of_the_torchaudio_version_and_back():
    for top_db in (None, 100.0):
        old, new = TorchaudioMel(load_config("cfg_1").spec_args, top_db), MelFrontEnd(load_config("cfg_1").spec_args, top_db)
        assert sorted(old.state_dict()) == sorted(new.state_dict()) == ["mel.mel_scale.fb", "mel.spectrogram.window"]
        for key, value in old.state_dict().items():
            assert torch.equal(new.state_dict()[key], value), key
        new.load_state_dict(old.state_dict(), strict=True)
        old.load_state_dict(new.state_dict(), strict=True)


def test_model_checkpoint_of_the_torchaudio_version_loads(monkeypatch):
    import models.mdl_4 as mdl_4
    import models.mdl_1 as mdl_1

    cfg = load_config("cfg_4")
    cfg.pretrained, cfg.backbone = False, "test_efficientnet"
    torch.manual_seed(0)
    monkeypatch.setattr(mdl_1, "MelFrontEnd", TorchaudioMel)
    monkeypatch.setattr(mdl_4, "MelFrontEnd", TorchaudioMel)
    old = build_model(cfg).eval()
    monkeypatch.undo()
    new = build_model(cfg).eval()
    assert isinstance(new.mel, MelFrontEnd) and isinstance(old.mel, TorchaudioMel)
    new.load_state_dict(old.state_dict(), strict=True)
    batch = {"input": signal(10_000, c=16).transpose(1, 2), "center": torch.tensor([3000, 6000])}
    with torch.no_grad():
        torch.testing.assert_close(new(batch)["logits"], old(batch)["logits"], rtol=1e-5, atol=1e-5)


def test_rejects_arguments_it_does_not_implement():
    with pytest.raises(ValueError, match="window_fn"):
        MelFrontEnd(dict(sample_rate=200, n_fft=256, window_fn=torch.hamming_window))
    with pytest.raises(ValueError, match="power"):
        MelFrontEnd(dict(sample_rate=200, n_fft=256, power=1.0))


@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex operators")
def test_inductor_compiled_equals_eager():
    """torch.compile with Inductor equals eager within 1e-4 dB: its generated C++ kernels run (on torch 2.11 they
    do the padding and window, the power and the dB with its floor; the FFT, the complex abs and the mel
    product stay ATen calls), not only a dynamo trace. A short input and few mels keep the compile short."""
    from torch._inductor.utils import run_and_get_code

    mel = MelFrontEnd(dict(sample_rate=200, n_fft=64, win_length=32, hop_length=8, n_mels=8, f_min=0.5, f_max=40.0),
                      top_db=100.0)
    x = signal(400, c=3)
    torch._dynamo.reset()
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):
        got, code = run_and_get_code(torch.compile(mel, backend="inductor", fullgraph=True), x)
        want = mel(x)
    assert any("cpp_fused" in c for c in code), "Inductor generated no C++ kernel"
    assert got.shape == want.shape == (2, 3, 8, 51) and (got == got.amax() - 100).any()  # the floor is in play
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
