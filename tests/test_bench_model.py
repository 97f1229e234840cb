"""scripts/bench_model.py: one row in-process, a table of fresh-process rows, the legacy (torchaudio) variant."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_model  # noqa: E402

TINY_2D = ["--backbone", "test_efficientnet", "--spec_args",
           "{'sample_rate': 200, 'n_fft': 256, 'win_length': 128, 'hop_length': 256, 'n_mels': 16, 'f_min': 0.53, 'f_max': 30.0}"]


def test_one_row_reports_speed_and_memory(capsys):
    bench_model.main(["-C", "cfg_3", "--batch-size", "2", "--steps", "2", "--channels-last", "--json", *TINY_2D])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(bench_model.JSON_TAG)][-1]
    row = json.loads(line[len(bench_model.JSON_TAG):])
    assert row["config"] == "cfg_3" and row["batch"] == 2 and row["channels_last"] and not row["compile"]
    assert row["amp"] == "fp32" and row["samples_s"] > 0 and row["peak_mib"] > 100 and row["memory"] == "max RSS"


def test_table_runs_each_variant_in_a_fresh_process(capsys):
    bench_model.main(["-C", "cfg_2a", "cfg_3", "--table", "--variants", "default", "legacy", "bf16+cl",
                      "--batch-size", "2", "--steps", "1", "--warmup", "0", *TINY_2D])
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| cfg_")]
    # cfg_2a: default, legacy (bf16+cl skipped: no 2D backbone); cfg_3: all three
    assert [r.split("|")[4].strip() for r in rows] == ["default", "legacy", "default", "legacy", "bf16+cl"]
    assert [r.split("|")[5].strip() for r in rows] == ["fp32", "fp32", "fp32", "fp32", "bf16"]
    assert "failed" not in out


def test_legacy_code_is_the_torchaudio_mel(monkeypatch):
    from models import mdl_1, mdl_3, mdl_4
    from models.layers import MelFrontEnd

    for mod, name in ((mdl_1, "MelFrontEnd"), (mdl_4, "MelFrontEnd"), (mdl_3, "three_views")):
        monkeypatch.setattr(mod, name, getattr(mod, name))  # restored after the test
    bench_model.use_legacy_code()
    assert mdl_1.MelFrontEnd is bench_model.LegacyMel and mdl_4.MelFrontEnd is bench_model.LegacyMel
    assert MelFrontEnd is not bench_model.LegacyMel


def test_unknown_variant_token_is_an_error():
    with pytest.raises(bench_model.ConfigError, match="fp8"):
        bench_model.variant_flags("fp8+cl")
