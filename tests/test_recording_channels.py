"""Channel names as labs write them (issue 19.1, 19.3): BCI2000 dots, reference suffixes, bipolar labels,
a user's --channel-map (CSV or JSON), repeated channels, and numbered cap layouts refused. Files are
written by edfio (EDF, BDF) and read back through MNE."""
import json

import numpy as np
import pytest

from data import channels, recording
from data.signal import EEG_COLUMNS, FS, MONTAGE_ELECTRODES
from utils.io import DataError, run_cli

from conftest import CLINICAL, synthetic, write_edf
from scripts import predict
from test_recording import score

REQUIRED = [EEG_COLUMNS[i] for i in MONTAGE_ELECTRODES]
TEN_TWENTY = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}
# the 64 channel names of the PhysioNet EEG Motor Movement/Imagery files (BCI2000), as MNE's tutorials load them
BCI2000 = ["Fc5.", "Fc3.", "Fc1.", "Fcz.", "Fc2.", "Fc4.", "Fc6.", "C5..", "C3..", "C1..", "Cz..", "C2..", "C4..",
           "C6..", "Cp5.", "Cp3.", "Cp1.", "Cpz.", "Cp2.", "Cp4.", "Cp6.", "Fp1.", "Fpz.", "Fp2.", "Af7.", "Af3.",
           "Afz.", "Af4.", "Af8.", "F7..", "F5..", "F3..", "F1..", "Fz..", "F2..", "F4..", "F6..", "F8..", "Ft7.",
           "Ft8.", "T7..", "T8..", "T9..", "T10.", "Tp7.", "Tp8.", "P7..", "P5..", "P3..", "P1..", "Pz..", "P2..",
           "P4..", "P6..", "P8..", "Po7.", "Po3.", "Poz.", "Po4.", "Po8.", "O1..", "Oz..", "O2..", "Iz.."]



def opened_error(path, **kw) -> str:
    with pytest.raises(DataError) as err:
        recording.open_recording(path, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# --- the normaliser ---------------------------------------------------------------------------------------
def test_bci2000_names_read_as_mne_standardize_names_them(tmp_path):
    """Each BCI2000 name reads as the electrode its name after mne.datasets.eegbci.standardize is (T7..
    -> T7 -> T3); a 160 Hz EDF with those 64 names (PhysioNet's rate) opens with all 16 electrodes, each
    read from its own channel."""
    import mne
    from mne.datasets import eegbci

    raw = mne.io.RawArray(np.zeros((len(BCI2000), 10)), mne.create_info(BCI2000, 160.0, "eeg"), verbose="error")
    eegbci.standardize(raw)
    for dotted, std in zip(BCI2000, raw.ch_names):
        expected = next((c for c in EEG_COLUMNS if c.upper() == TEN_TWENTY.get(std.upper(), std.upper())), None)
        assert channels.parse_label(dotted) == expected, (dotted, std)
    assert sum(channels.parse_label(d) in REQUIRED for d in BCI2000) == 16

    rng = np.random.default_rng(0)
    x = rng.normal(0, 20, (160 * 60, len(BCI2000)))
    edf = tmp_path / "S001R01.edf"
    write_edf(edf, x, BCI2000, 160)
    rec = recording.open_recording(edf)
    assert rec.channels.missing == [] and rec.channels.renamed["T3"] == "T7.." and rec.channels.renamed["Fp1"] == "Fp1."
    got = rec.read(0, rec.n_samples)
    assert rec.n_samples == 200 * 60
    for name in ("Fp1", "T3", "O2"):  # each channel from its own column: correlates with it alone
        col = x[:, BCI2000.index({"T3": "T7.."}.get(name, f"{name}." if len(name) == 3 else f"{name}.."))]
        src = recording.read_resampled(rec.source, [rec.channels.index[name]], 0, rec.n_samples)[:, 0]
        np.testing.assert_allclose(got[:, EEG_COLUMNS.index(name)], src, atol=1e-3)
        assert np.corrcoef(recording.resample_poly(col, 5, 4)[200:-200], src[200:-200])[0, 1] > 0.999


@pytest.mark.parametrize("label, parsed", [
    ("EEG Fp1-Ref", "Fp1"), ("Fp1-M2", "Fp1"), ("FP1-A2", "Fp1"), ("fp1-avg", "Fp1"), ("Fp1-LE", "Fp1"),
    ("EEG T7-Ref", "T3"), ("eeg t8-ref", "T4"), ("f3..", "F3"), ("T7..", "T3"), ("EEG O2-M1", "O2"),
    ("FP1-F7", ("Fp1", "F7")), ("EEG F7-FP1", ("F7", "Fp1")), ("T7-P7", ("T3", "T5")), ("T8-P8-1", ("T4", "T6")),
    ("EEG FP1-REF-0", "Fp1"), ("Fp1\u2013F7", ("Fp1", "F7")), ("FZ-CZ", ("Fz", "Cz")),
    ("Fcz.", None), ("E1", None), ("A1", None), ("001", None), ("Fp1-Fp1", None), ("EEG Photic-Ref", None)])
def test_label_variants(label, parsed):
    assert channels.parse_label(label) == parsed


def test_pairs_read_in_either_direction():
    assert channels.pair_of(("Fp1", "F7")) == (0, 1.0)
    assert channels.pair_of(("F7", "Fp1")) == (0, -1.0)
    assert channels.pair_of(("P4", "O2")) == (15, 1.0)
    assert channels.pair_of(("Fz", "Cz")) is None and channels.pair_of("Fp1") is None


def test_pairs_against_one_reference_are_referential():
    """Fp1-Cz, F3-Cz, ... (every channel against Cz) are the electrodes, referenced to Cz."""
    labels = [f"{e}-Cz" for e in EEG_COLUMNS[:19] if e != "Cz"]
    cmap = recording.match_channels(labels)
    assert cmap.mode == "referential" and cmap.missing == [] and cmap.index["T3"] == labels.index("T3-Cz")


# --- the user's channel map --------------------------------------------------------------------------------
ODD = [f"Kanal {i + 1}" for i in range(19)]  # a lab's own names, in EEG_COLUMNS[:19] order


def test_channel_map_csv_and_json_name_what_the_reader_cannot(tmp_path):
    x = synthetic(60, seed=1)
    edf = tmp_path / "odd.edf"
    write_edf(edf, x[:, :19], ODD, FS)
    msg = opened_error(edf)
    assert "electrode(s) Fp1, F3" in msg and "--channel-map FILE" in msg and "the file has: Kanal 1, Kanal 2" in msg

    csv_map = tmp_path / "map.csv"
    csv_map.write_text("channel,electrode\n" + "".join(f"{o},{e}\n" for o, e in zip(ODD, EEG_COLUMNS)))
    json_map = tmp_path / "map.json"
    modern = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
    json_map.write_text(json.dumps({o: modern.get(e, e) for o, e in zip(ODD, EEG_COLUMNS)}))
    a = recording.open_recording(edf, channel_map=csv_map)
    b = recording.open_recording(edf, channel_map=json_map)
    assert a.channels.index == b.channels.index == {e: i for i, e in enumerate(EEG_COLUMNS[:19])}
    np.testing.assert_array_equal(a.read(0, 2000), b.read(0, 2000))
    np.testing.assert_allclose(a.read(0, 2000)[:, :19], x[:2000, :19], atol=0.01)

    partial = tmp_path / "partial.csv"  # a map that leaves O2 out: the error names the map and --channel-map
    partial.write_text("".join(f"{o},{e}\n" for o, e in zip(ODD[:18], EEG_COLUMNS)))
    msg = opened_error(edf, channel_map=partial)
    assert f"odd.edf (after {partial}): electrode(s) O2 not found" in msg and "--channel-map FILE" in msg


def test_channel_map_wins_over_names_and_can_drop_a_channel(tmp_path):
    """A map entry beats a channel that reads as the same electrode by name; an empty target drops one."""
    labels = [*CLINICAL, "EEG T3-LE"]  # two channels read as T3: an error without the map
    with pytest.raises(DataError, match="'EEG T3-REF', 'EEG T3-LE' all read as electrode T3.*--channel-map"):
        recording.match_channels(labels)
    (tmp_path / "keep.csv").write_text("EEG T3-LE,T7\n")
    keep = channels.read_channel_map(tmp_path / "keep.csv")
    assert recording.match_channels(labels, user_map=keep).index["T3"] == len(CLINICAL)
    (tmp_path / "drop.json").write_text('{"eeg t3-le": null}')  # keys match ignoring case
    drop = channels.read_channel_map(tmp_path / "drop.json")
    assert recording.match_channels(labels, user_map=drop).index["T3"] == CLINICAL.index("EEG T3-REF")


def test_channel_map_files_that_are_wrong_are_one_line_errors(tmp_path):
    cases = {"bad_target.csv": ("Kanal 1,Fp1\nKanal 2,Frontal\n", "row 2: 'Frontal' is no 10-20 electrode"),
             "three.csv": ("Kanal 1,Fp1,x\n", "row 1 has 3 column(s)"),
             "twice.csv": ("Kanal 1,Fp1\nKanal 1,F3\n", "channel 'Kanal 1' is mapped twice"),
             "list.json": ('["Fp1"]', "a JSON channel map is one object"),
             "broken.json": ("{", "not valid JSON"),
             "empty.csv": ("# nothing\n", "channel map names no channel")}
    for name, (text, msg) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError) as err:
            channels.read_channel_map(tmp_path / name)
        assert msg in str(err.value) and "\n" not in str(err.value) and name in str(err.value)
    tsv = tmp_path / "map.tsv"
    tsv.write_text("Kanal 1\tFp1\nKanal 2\tF7-FP1\nKanal 3\t\n")
    assert channels.read_channel_map(tsv).targets == {"Kanal 1": "Fp1", "Kanal 2": ("F7", "Fp1"), "Kanal 3": None}


# --- repeated channels (CHB-MIT) ---------------------------------------------------------------------------
CHBMIT = ["FP1-F7", "F7-T7", "T7-P7", "P7-O1", "FP1-F3", "F3-C3", "C3-P3", "P3-O1", "FP2-F4", "F4-C4", "C4-P4",
          "P4-O2", "FP2-F8", "F8-T8", "T8-P8", "P8-O2", "FZ-CZ", "CZ-PZ", "P7-T7", "T7-FT9", "FT9-FT10", "FT10-T8",
          "T8-P8"]


def chbmit_signals(x) -> np.ndarray:
    """CHB-MIT's 23 channels from referential (T, 20) x: the double banana, Fz-Cz, Cz-Pz, P7-T7 (the
    negated T7-P7), three channels with FT9/FT10 (not in the data: noise), and T8-P8 again."""
    idx = {c: i for i, c in enumerate(EEG_COLUMNS)}
    rng = np.random.default_rng(1)
    cols = []
    for label in CHBMIT:
        a, b = (channels.parse_label(t) for t in label.split("-"))
        cols.append(x[:, idx[a]] - x[:, idx[b]] if a and b else rng.normal(0, 20, len(x)))
    return np.stack(cols, axis=1)


def test_chbmit_bipolar_names_with_a_repeated_channel(tmp_path):
    """CHB-MIT's EDFs hold T8-P8 twice (MNE renames them T8-P8-0, T8-P8-1) and P7-T7 beside T7-P7: the
    montage's direction wins, and the two identical T8-P8 are one channel (a note says so). Two T8-P8
    that differ are an error naming both."""
    x = synthetic(30, seed=2).astype(np.float64)
    y = chbmit_signals(x)
    edf = tmp_path / "chb01_01.edf"
    write_edf(edf, y, CHBMIT, FS)
    rec = recording.open_recording(edf)
    assert rec.bipolar and rec.source.labels[14] == "T8-P8-0" and rec.source.labels[22] == "T8-P8-1"
    assert rec.channels.pairs[4] == (CHBMIT.index("T7-P7"), 1.0)  # not P7-T7
    assert rec.channels.pairs[5] == (14, 1.0)
    assert any("'T8-P8-0', 'T8-P8-1' hold the same samples: 'T8-P8-0' is used" in n for n in rec.notes())

    y[:, 22] += 1.0
    other = tmp_path / "chb_other.edf"
    write_edf(other, y, CHBMIT, FS)
    msg = opened_error(other)
    assert "channels 'T8-P8-0', 'T8-P8-1' all read as pair T4-T6; keep one of them" in msg and "--channel-map" in msg


# --- numbered cap layouts ----------------------------------------------------------------------------------
BIOSEMI_128 = [f"{b}{i}" for b in "ABCD" for i in range(1, 33)]
BIOSEMI_256 = [f"{b}{i}" for b in "ABCDEFGH" for i in range(1, 33)]
EGI_129 = [f"E{i}" for i in range(1, 129)] + ["Cz"]


@pytest.mark.parametrize("labels, layout", [
    (BIOSEMI_128, "BioSemi (A1..H32)"), (BIOSEMI_256, "BioSemi (A1..H32)"), (EGI_129, "EGI (E1..E256)"),
    ([str(i) for i in range(1, 33)], "numbered (1..N)"), ([f"EEG {i:03d}" for i in range(1, 65)], "numbered (1..N)"),
    ([*CLINICAL[:10], *BIOSEMI_128[:40]], "BioSemi (A1..H32)")])
def test_numbered_layouts_are_refused_in_one_line(labels, layout):
    """C3, C4, A1, A2, F3 ... exist in a BioSemi cap's names but are not the 10-20 electrodes: refused, even
    with --allow-missing, unless a channel map says which channel is which."""
    with pytest.raises(DataError) as err:
        recording.match_channels(labels, "cap.bdf", allow_missing=True)
    msg = str(err.value)
    assert msg.startswith(f"cap.bdf: channel names follow a numbered cap layout, not 10-20 ({layout}: ")
    assert "--channel-map FILE" in msg and "\n" not in msg


def test_ten_twenty_files_with_a_few_numbered_names_are_not_refused():
    """Sleep recordings' eye channels E1/E2, ear references A1/A2 and F3/F4/C3/C4/F7/F8 are 10-20 files."""
    labels = [*CLINICAL, "E1-M2", "E2-M1", "A1", "A2", "EEG 1", "EEG 2", "Chin1", "C5", "F9"]
    assert channels.numbered_layout(labels) is None
    assert recording.match_channels(labels).missing == []


def test_a_biosemi_bdf_is_refused_then_scored_with_a_channel_map(small_ensemble, tmp_path, capsys):
    """A 24-bit BDF (edfio) from a 64-channel BioSemi cap named A1..B32: predict.py refuses it in one line;
    with a JSON map naming 16 of its channels (none of them its own C3/C4/A1: BioSemi's C3 is not used as
    C3) it is scored, each electrode from the channel the map names."""
    import edfio

    x = synthetic(60, seed=4).astype(np.float64)
    labels = BIOSEMI_128[:64]
    where = {e: labels[10 + 3 * k] for k, e in enumerate(REQUIRED)}  # B-bank positions and some A ones
    assert "C3" not in where.values() and "A1" not in where.values()
    data = np.random.default_rng(0).normal(0, 20, (len(x), 64))
    for e, lab in where.items():
        data[:, labels.index(lab)] = x[:, EEG_COLUMNS.index(e)]
    bdf = tmp_path / "cap64.bdf"
    edfio.Bdf([edfio.BdfSignal(data[:, i], FS, label=lab, physical_dimension="uV") for i, lab in enumerate(labels)]
              ).write(bdf)
    args = ["--recording", str(bdf), "--output-dir", str(small_ensemble), "--out-dir", str(tmp_path / "p"),
            "--cache-dir", str(tmp_path / "c"), "--num-workers", "0"]
    assert run_cli(predict.main, [*args, "--allow-missing"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "numbered cap layout, not 10-20 (BioSemi (A1..H32): A3, A4, A5, ..." in err

    cmap = tmp_path / "cap64.json"
    cmap.write_text(json.dumps({lab: e for e, lab in where.items()}))  # file's name -> 10-20 name
    rec = recording.open_recording(bdf, channel_map=cmap)
    assert rec.channels.index == {e: labels.index(lab) for e, lab in where.items()}
    got = rec.read(0, len(x))
    np.testing.assert_allclose(got[:, MONTAGE_ELECTRODES], x[:, MONTAGE_ELECTRODES], atol=1e-3)  # 24 bits
    assert np.isnan(got[:, EEG_COLUMNS.index("Cz")]).all()  # BioSemi's own names are not read as 10-20
    table = score([bdf], small_ensemble, tmp_path, "--channel-map", str(cmap))[bdf.name]
    assert len(table) == 2


def test_a_changed_channel_map_decodes_the_file_again(small_ensemble, tmp_path):
    """The decoded cache is keyed by the file; the same file under another channel map decodes to other
    columns, so each map's decoding has its own cache folder (named by what the map says)."""
    x = synthetic(60, seed=5)
    edf = tmp_path / "odd2.edf"
    write_edf(edf, x[:, :19], ODD, FS)
    right, swapped = dict(zip(ODD, EEG_COLUMNS)), dict(zip(ODD, EEG_COLUMNS))
    swapped[ODD[0]], swapped[ODD[7]] = "O1", "Fp1"  # Kanal 1 holds Fp1, Kanal 8 holds O1
    maps = {}
    for name, m in (("right", right), ("swapped", swapped)):
        maps[name] = tmp_path / f"{name}.json"
        maps[name].write_text(json.dumps(m))
        score([edf], small_ensemble, tmp_path, "--channel-map", str(maps[name]))
    folders = sorted((tmp_path / "cache").glob("channel-map_*"))
    assert len(folders) == 2
    for name, col in (("right", 0), ("swapped", 7)):
        (npy,) = (tmp_path / "cache" / f"channel-map_{channels.read_channel_map(maps[name]).digest()}").glob("*.npy")
        np.testing.assert_allclose(np.load(npy)[:, EEG_COLUMNS.index("Fp1")], x[:, col], atol=0.01)
