"""plot_sample: any 50 s window of a long recording (Kaggle eeg or your own file), the zoom of mdl_4 marked."""
import pytest
import torch

from data.signal import FS, WINDOW
from engine.build import build_model
from utils.io import DataError, run_cli

from conftest import CLINICAL, make_run, synthetic, tiny_cfg, write_edf
from scripts import plot_sample


def test_any_window_of_a_long_train_eeg(tiny_data, tmp_path):
    # eeg 1003 is 135 s long with rows at offsets 0 and 42 s
    row, mode, labelled = plot_sample.find_row(tiny_data, 1003, start=70.0)
    assert mode == "val" and not labelled and float(row["eeg_label_offset_seconds"].iloc[0]) == 70.0
    assert plot_sample.find_row(tiny_data, 1003, start=42.0)[2]  # a labelled row's own offset: its votes apply
    out = tmp_path / "s.png"
    make_run(tmp_path / "runs", "cfg_5a", 0, 1)
    assert run_cli(plot_sample.main, ["--eeg-id", "1003", "--data-dir", str(tiny_data), "--start", "70", "--out",
                                      str(out), "--output-dir", str(tmp_path / "runs")]) == 0
    assert out.stat().st_size > 20_000


def test_window_of_an_edf_recording_and_clear_errors(tmp_path, capsys):
    edf = tmp_path / "rec.edf"
    write_edf(edf, synthetic(120, seed=4)[:, :19], CLINICAL, FS)
    out = tmp_path / "r.png"
    assert run_cli(plot_sample.main, ["--recording", str(edf), "--start", "95", "--config", "cfg_2a",
                                      "--out", str(out)]) == 0  # the last 25 s: zero-padded as in scoring
    assert out.stat().st_size > 20_000
    assert run_cli(plot_sample.main, ["--recording", str(edf), "--start", "130", "--out", str(out)]) == 2
    assert "--start 130 s is outside the recording (0 to 120.0 s)" in capsys.readouterr().err


def test_zoom_columns_are_the_spliced_zoom():
    cfg = tiny_cfg("cfg_5a")
    cfg.pretrained = False
    model = build_model(cfg).eval()
    x = torch.randn(1, WINDOW, 16)
    for center in (WINDOW // 2, 3 * FS):
        batch = {"input": x, "center": torch.tensor([center])}
        a, b = plot_sample.zoom_columns(model, batch)
        with torch.no_grad():
            zoom = model.mel_center(model.crop_center(x.transpose(1, 2), batch["center"]))
            spec = model.spectrogram(batch)
        assert b - a == zoom.shape[-1]
        torch.testing.assert_close(spec[..., a:b], zoom)
    assert plot_sample.zoom_columns(build_model(tiny_cfg("cfg_2a")), batch) is None


def test_start_past_the_end_of_a_kaggle_eeg(tiny_data):
    with pytest.raises(DataError, match="past the recording's end"):
        plot_sample.main(["--eeg-id", "1003", "--data-dir", str(tiny_data), "--start", "500", "--config", "cfg_2a",
                          "--out", str(tiny_data / "x.png")])
