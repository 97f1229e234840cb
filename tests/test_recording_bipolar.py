"""Bipolar input (issue 19.2): a file holding the 16 double-banana pairs and no referential electrodes is
scored from its pairs, with the same windows, outputs and (within float precision) probabilities as
the referential file it was derived from, at 200 Hz and at 256 Hz. EDF files written by edfio."""
import numpy as np
import pandas as pd
import pytest
from scipy.signal import resample_poly

from data import channels, recording
from data.signal import EEG_COLUMNS, FS, LABEL_COLS, MONTAGE, MONTAGE_A, MONTAGE_B, MONTAGE_ELECTRODES, to_bipolar
from utils.io import DataError

from conftest import CLINICAL, make_run, synthetic
from inference import blend
from test_recording import score

P = 1000.0  # uV: every signal's physical range is -P..P over digital -32767..32767, so a sample is d * P / 32767
GAIN = P / 32767
T_NAMES = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}


@pytest.fixture
def ensemble(tmp_path):
    """Two configs (the 2D cfg_5a, the 1D cfg_2a), one run each, and a blend: both datasets' montages."""
    out = tmp_path / "out"
    make_run(out, "cfg_5a", 0, 1), make_run(out, "cfg_2a", 1, 3)
    blend.save_blend(out / blend.BLEND_FILE, ["cfg_5a", "cfg_2a"], [0.7, 0.4], [0.1, -0.2, 0.0, 0.3, -0.1, 0.05], {})
    return out


def write_digital_edf(path, digits, labels, sfreq) -> None:
    """An EDF (edfio) of integer samples on the common grid GAIN: what a file holds is exactly d * GAIN."""
    import edfio

    sigs = [edfio.EdfSignal.from_digital(np.ascontiguousarray(digits[:, i], dtype=np.int16), sfreq, label=lab,
                                         physical_dimension="uV", physical_range=(-P, P), digital_range=(-32767, 32767))
            for i, lab in enumerate(labels)]
    edfio.Edf(sigs).write(path)


def pair_labels(style: str) -> list:
    """The 16 pairs as labs name them: CHB-MIT's (T7/P7, upper case) or an 'EEG ' prefixed T3 naming with two
    pairs written reversed."""
    out = []
    for a, b in MONTAGE:
        if style == "chbmit":
            out.append(f"{T_NAMES.get(a, a)}-{T_NAMES.get(b, b)}".upper())
        else:
            out.append(f"EEG {b}-{a}" if (a, b) in (("Fp1", "F7"), ("T3", "T5")) else f"EEG {a}-{b}")
    return out


def bipolar_digits(d: np.ndarray, labels) -> np.ndarray:
    """The pairs of referential digits, each as its label says (a reversed label holds the negated pair)."""
    out = d[:, MONTAGE_A] - d[:, MONTAGE_B]
    for k, lab in enumerate(labels):
        if channels.pair_of(channels.parse_label(lab))[1] < 0:
            out[:, k] = -out[:, k]
    return out


def test_pairs_to_potentials_is_the_minimum_norm_inverse_of_the_montage():
    """Independent of the code's pseudo-inverse: for pairs from a referential x, the potentials are x less
    its hemisphere's mean; for pairs that do not close, the montage gives them back less an eighth of each
    loop's sum on each of its 8 channels (the least-squares fit), with the loop's signs."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 30, (500, 20))
    y = to_bipolar(x)
    e = channels.electrodes_from_pairs(y)
    left = [EEG_COLUMNS.index(c) for c in ("Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1")]
    me = list(MONTAGE_ELECTRODES)
    for side in (left, [EEG_COLUMNS.index(c) for c in ("Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2")]):
        cols = [me.index(i) for i in side]
        np.testing.assert_allclose(e[:, cols], x[:, side] - x[:, side].mean(axis=1, keepdims=True), atol=1e-9)
    assert channels.loop_mismatch(y) == pytest.approx([0, 0], abs=1e-12)

    y2 = y + rng.normal(0, 5, y.shape)  # pairs that do not come from one referential recording
    full = np.full((len(y2), 20), np.nan)
    full[:, me] = channels.electrodes_from_pairs(y2)
    temporal_minus_parasagittal = {0: 1, 2: 1, 4: 1, 6: 1, 8: -1, 10: -1, 12: -1, 14: -1}
    expected = y2.copy()
    for side in (0, 1):
        signs = np.zeros(16)
        for k, sg in temporal_minus_parasagittal.items():
            signs[k + side] = sg
        expected -= np.outer(y2 @ signs, signs) / 8
    np.testing.assert_allclose(to_bipolar(full), expected, atol=1e-9)
    y2[3, 5] = np.nan  # a NaN pair (right hemisphere) makes that sample's right potentials NaN, not the left
    e2 = channels.electrodes_from_pairs(y2)
    right = [me.index(EEG_COLUMNS.index(c)) for c in ("Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2")]
    assert np.isnan(e2[3, right]).all() and np.isfinite(np.delete(e2[3], right)).all()


def test_bipolar_edf_scores_as_the_referential_edf_it_was_derived_from(ensemble, tmp_path, capsys):
    """Referential EDFs (clinical names) and bipolar EDFs derived from their very samples (CHB-MIT naming
    at 200 Hz; 'EEG ' prefixed T3 naming with two pairs reversed at 256 Hz): the decoded montage and the
    windows' probabilities agree within float precision (the decoded cache is float32; measured: 7e-8 at
    200 Hz, 3e-8 at 256 Hz)."""
    x = synthetic(60, seed=8).astype(np.float64)
    x256 = resample_poly(x, 32, 25, axis=0)
    files, bip = {}, {}
    for rate, sig, style in ((FS, x, "chbmit"), (256, x256, "eeg")):
        d = np.round(sig / GAIN).astype(np.int64)
        d[:, 19] = 0  # EKG: not in the bipolar file; kept small
        assert np.abs(d[:, :19]).max() < 32767 // 2  # pairs of them stay in 16 bits
        ref, pairs = tmp_path / f"ref{rate}.edf", tmp_path / f"bip{rate}.edf"
        write_digital_edf(ref, d[:, :19], CLINICAL, rate)
        labels = pair_labels(style)
        write_digital_edf(pairs, bipolar_digits(d, labels), labels, rate)
        files[rate], bip[rate] = ref, pairs
        a, b = recording.open_recording(ref), recording.open_recording(pairs)
        assert not a.bipolar and b.bipolar and b.loop_mismatch() == pytest.approx([0, 0], abs=1e-12)
        assert "the 16 double-banana pairs (bipolar)" in b.describe() and b.notes() == []
        ma, mb = (to_bipolar(r.read(0, r.n_samples).astype(np.float64)) for r in (a, b))
        assert a.n_samples == b.n_samples == 60 * FS
        np.testing.assert_allclose(mb, ma, rtol=0, atol=2e-4)  # float32 potentials of up to ~500 uV
    order = [files[FS], bip[FS], files[256], bip[256]]
    tables = score(order, ensemble, tmp_path)
    for rate in (FS, 256):
        ta, tb = tables[files[rate].name], tables[bip[rate].name]
        pd.testing.assert_frame_equal(ta.drop(columns=LABEL_COLS), tb.drop(columns=LABEL_COLS))
        np.testing.assert_allclose(tb[LABEL_COLS].to_numpy(), ta[LABEL_COLS].to_numpy(), rtol=0, atol=1e-5)
        assert len(ta) == 2
    # and the 256 Hz bipolar file still scores as the 200 Hz original, within the resampling filters' ripple
    np.testing.assert_allclose(tables[bip[256].name][LABEL_COLS].to_numpy(),
                               tables[files[FS].name][LABEL_COLS].to_numpy(), atol=2e-3)
    out = capsys.readouterr().out
    assert "bip256.edf: EDF/EDF+, 256 Hz -> 200 Hz, 00:01:00, the 16 double-banana pairs (bipolar) " \
           "(EEG F7-Fp1->Fp1-F7, EEG Fp2-F8->Fp2-F8, EEG F7-T3->F7-T3, EEG F8-T4->F8-T4, +12)" in out


def test_pairs_that_do_not_close_are_scored_with_a_warning(tmp_path, capsys):
    """A bipolar file whose P3-O1 is not Fp1-F7 + F7-T3 + T3-T5 + T5-O1 - Fp1-F3 - F3-C3 - C3-P3: its
    loops do not close (independent amplifiers, or a broken channel): scored, with a note on the left."""
    x = synthetic(60, seed=9).astype(np.float64)
    d = np.round(x / GAIN).astype(np.int64)
    labels = pair_labels("chbmit")
    y = bipolar_digits(d, labels)
    y[:, 14] = np.round(np.random.default_rng(0).normal(0, 800, len(y)))  # P3-O1 replaced by noise (~25 uV)
    f = tmp_path / "loose.edf"
    write_digital_edf(f, y, labels, FS)
    rec = recording.open_recording(f)
    left, right = rec.loop_mismatch()
    assert left > 0.2 and right < 1e-9
    notes = rec.notes()
    assert len(notes) == 1 and notes[0].startswith("loose.edf: the left bipolar pairs do not close")


def test_a_bipolar_file_short_of_a_pair_is_a_one_line_error(tmp_path):
    labels = pair_labels("chbmit")
    with pytest.raises(DataError) as err:
        recording.match_channels([lab for lab in labels if lab != "P4-O2"], "bip.edf", allow_missing=True)
    msg = str(err.value)
    assert msg.startswith("bip.edf: bipolar pair(s) P4-O2 not found (a bipolar recording needs all 16 pairs")
    assert "--allow-missing applies to referential electrodes only" in msg and "--channel-map FILE" in msg
    assert "\n" not in msg
    # with every referential electrode present, the referential channels are used, whatever pairs are there
    both = recording.match_channels([*labels, *CLINICAL])
    assert both.mode == "referential" and both.index["Fp1"] == len(labels)
