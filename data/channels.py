"""Channel names as labs write them, read as the 10-20 electrodes and double-banana pairs the models take.

One normaliser, `parse_label`, for every format:
- case does not matter; BCI2000's dots padding a name to four characters (`Fp1.`, `F3..`, `T7..`: the
  PhysioNet EEG Motor Movement/Imagery files) are stripped, as MNE's `mne.datasets.eegbci.standardize`
  strips them;
- prefixes `EEG `/`POL ` and reference suffixes (`-REF`, `-LE`, `-AVG`, `-A1`, `-M2`, ...) are dropped;
- the 10-10 names T7/T8/P7/P8 are T3/T4/T5/T6 (and ECG is the EKG column);
- two electrode names joined by `-` (`FP1-F7`, `EEG F7-T7`) are a bipolar pair, in the file's order;
  a trailing `-0`, `-1` (MNE's suffix for a channel name a file repeats, e.g. CHB-MIT's two `T8-P8`)
  is dropped, so the repeats read as one name.
Channels of a numbered cap layout (BioSemi A1..H32, EGI E1..E256, plain numbers) are not 10-20
electrodes even where a name collides with one (a BioSemi cap's C3 is not 10-20 C3): `numbered_layout`
recognises such a file. A user's channel map (`--channel-map FILE`, CSV or JSON: the file's channel name
-> a 10-20 electrode or pair name, empty for "do not use") names what the normaliser cannot.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.signal import EEG_COLUMNS, MONTAGE, MONTAGE_A, MONTAGE_B, MONTAGE_ELECTRODES, MONTAGE_NAMES
from utils.io import DataError

PREFIXES = {"EEG", "POL"}
REF_SUFFIXES = {"REF", "LE", "RE", "LM", "AVG", "AVE", "AV", "AR", "CAR", "A1", "A2", "M1", "M2", "A1A2", "M1M2",
                "A12", "LINKED"}
ALIASES = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6", "ECG": "EKG"}  # modern 10-10 names -> 10-20
_CANON = {c.upper(): c for c in EEG_COLUMNS}
_SPLIT = re.compile(r"[\s\-_:\u2010-\u2015\u2212]+")  # blanks, hyphen, underscore, colon, Unicode dashes
PAIR_INDEX = {pair: k for k, pair in enumerate(MONTAGE)}  # (a, b) -> index of the double banana's channel a-b
COMMON_REF_MIN = 8  # this many pairs with the same second electrode (Fp1-Cz, F3-Cz, ...) are referential to it
NUMBERED_MIN = 8  # this many names of a numbered layout that are no 10-10 name make a file a numbered cap
MAP_HELP = "--channel-map FILE (CSV or JSON: the file's channel name -> 10-20 name) names channels by hand"


def _tokens(label) -> list[str]:
    tokens = [t.strip(".") for t in _SPLIT.split(str(label).strip().upper())]
    tokens = [t for t in tokens if t]
    while len(tokens) > 1 and tokens[0] in PREFIXES:
        tokens = tokens[1:]
    while len(tokens) > 1 and tokens[-1] in REF_SUFFIXES:
        tokens = tokens[:-1]
    return tokens


def _canonical(token: str) -> str | None:
    return _CANON.get(ALIASES.get(token, token))


def _parse_tokens(tokens: list[str]):
    names = [_canonical(t) for t in tokens]
    if len(names) == 1:
        return names[0]
    if len(names) == 2 and None not in names and names[0] != names[1]:
        return tuple(names)
    return None


def parse_label(label):
    """What a channel label names: an EEG_COLUMNS electrode ("EEG FP1-REF" -> "Fp1", "T7.." -> "T3"),
    a pair of them in the label's order ("EEG F7-FP1" -> ("F7", "Fp1")), or None."""
    tokens = _tokens(label)
    got = _parse_tokens(tokens)
    if got is None and len(tokens) > 1 and tokens[-1].isdigit():  # MNE's "-0", "-1" on a repeated name
        got = _parse_tokens(_tokens("-".join(tokens[:-1])))
    return got


def electrode_name(label) -> str | None:
    """The EEG_COLUMNS electrode a channel label names, or None (a bipolar label names no single electrode)."""
    got = parse_label(label)
    return got if isinstance(got, str) else None


def pair_of(name) -> tuple[int, float] | None:
    """(index of the double banana's channel, +1 or -1) for a parsed pair, reversed pairs negated."""
    if not isinstance(name, tuple):
        return None
    if name in PAIR_INDEX:
        return PAIR_INDEX[name], 1.0
    if name[::-1] in PAIR_INDEX:
        return PAIR_INDEX[name[::-1]], -1.0
    return None


# --- numbered cap layouts ----------------------------------------------------------------------------------
# single letter A-H + number that are 10-10 names (or the ear references): a 10-20 file may hold these
_TEN_TEN_AH = {"A1", "A2", *(f"C{i}" for i in range(1, 7)), *(f"F{i}" for i in range(1, 11))}
NUMBERED_LAYOUTS = [
    ("BioSemi (A1..H32)", re.compile(r"^[A-H]([1-9]|[12]\d|3[0-2])$"), _TEN_TEN_AH),
    ("EGI (E1..E256)", re.compile(r"^E\d{1,3}$"), set()),
    ("numbered (1..N)", re.compile(r"^(CH|CHAN|CHANNEL)?\d{1,3}$"), set()),
]


def numbered_layout(labels) -> str | None:
    """The numbered cap layout the channel names follow, or None: a layout whose names that are no 10-10
    name (BioSemi's A5, B12, ...; EGI's E17; 7) number at least NUMBERED_MIN. Such a file's C3, C4 or A1
    (BioSemi) are positions of that cap, not the 10-20 electrodes."""
    best = []
    for layout, pattern, ten_ten in NUMBERED_LAYOUTS:
        hits = []
        for label in labels:
            tokens = _tokens(label)
            if len(tokens) == 1 and pattern.match(tokens[0]) and tokens[0] not in ten_ten:
                hits.append(str(label).strip())
        if len(hits) >= NUMBERED_MIN and len(hits) > len(best):  # the layout most names follow
            best = [layout, *hits]
    if not best:
        return None
    return f"{best[0]}: {', '.join(best[1:4])}, ... ({len(best) - 1} such names)"


# --- the user's channel map ---------------------------------------------------------------------------------
@dataclass
class UserMap:
    """--channel-map: the file's channel label -> what it is (an electrode, a pair, or None: unused)."""
    path: Path
    targets: dict

    def lookup(self, label):
        """(True, target) for a label the map names (exactly, else ignoring case and blanks), else (False, None)."""
        label = str(label)
        if label in self.targets:
            return True, self.targets[label]
        key = label.strip().casefold()
        folded = {k.strip().casefold(): v for k, v in self.targets.items()}
        if key in folded:
            return True, folded[key]
        return False, None

    def digest(self) -> str:
        """A short hash of what the map says (not of its path or layout): recordings decoded under one map
        are cached apart from those decoded under another (inference/recordings.py)."""
        return hashlib.sha1(repr(sorted(self.targets.items())).encode()).hexdigest()[:12]


def _target(text, where: str):
    if text is None or str(text).strip() == "":
        return None
    got = parse_label(text)
    if got is None:
        raise DataError(f"{where}: {str(text)!r} is no 10-20 electrode ({', '.join(EEG_COLUMNS)}; T7/T8/P7/P8 too) "
                        f"nor a pair of them such as Fp1-F7 (leave it empty for a channel not to use)")
    return got


def read_channel_map(path) -> UserMap:
    """A channel map file: a JSON object {"file's name": "10-20 name", ...} (.json), else CSV/TSV of two
    columns, file's name then 10-20 name, with or without a header row; an empty (JSON null) target
    leaves that channel unused. One-line DataError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: channel map not found")
    text = path.read_text(encoding="utf-8-sig")
    targets = {}
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: channel map is not valid JSON: {err}") from None
        if not isinstance(obj, dict) or not all(isinstance(v, (str, type(None))) for v in obj.values()):
            raise DataError(f"{path}: a JSON channel map is one object of \"file's channel name\": \"10-20 name\"")
        for k, v in obj.items():
            targets[str(k)] = _target(v, f"{path}: {k!r}")
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" or ("\t" in text and "," not in text) else ","
        rows = [r for r in csv.reader(text.splitlines(), delimiter=delimiter)
                if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
        for n, row in enumerate(rows):
            if len(row) != 2:
                raise DataError(f"{path}: row {n + 1} has {len(row)} column(s): a CSV channel map has two, the file's "
                                f"channel name and the 10-20 name")
            label, target = row[0].strip(), row[1].strip()
            if n == 0 and target and parse_label(target) is None and parse_label(label) is None:
                continue  # a header row such as "channel,electrode"
            if label in targets:
                raise DataError(f"{path}: channel {label!r} is mapped twice")
            targets[label] = _target(target, f"{path}: row {n + 1}")
    if not targets:
        raise DataError(f"{path}: channel map names no channel")
    return UserMap(path, targets)


# --- bipolar channels -> electrode potentials ------------------------------------------------------------------
def _incidence() -> np.ndarray:
    cols = {int(e): i for i, e in enumerate(MONTAGE_ELECTRODES)}
    b = np.zeros((len(MONTAGE), len(MONTAGE_ELECTRODES)))
    for k, (a, c) in enumerate(zip(MONTAGE_A, MONTAGE_B)):
        b[k, cols[int(a)]], b[k, cols[int(c)]] = 1.0, -1.0
    return b


INCIDENCE = _incidence()  # (16 pairs, 16 montage electrodes): to_bipolar restricted to the montage's electrodes
# Each hemisphere's 8 pairs join its 8 electrodes in one loop (Fp1 -> O1 through the temporal chain and back
# through the parasagittal one), so the pairs determine the potentials up to a constant per hemisphere: the
# minimum-norm solution (average of each hemisphere's 8 electrodes zero) is the pseudo-inverse.
PAIRS_TO_ELECTRODES = np.linalg.pinv(INCIDENCE)  # (16 electrodes, 16 pairs)
HEMISPHERES = [np.arange(0, len(MONTAGE), 2), np.arange(1, len(MONTAGE), 2)]  # even pairs left, odd right
# loop signs: temporal chain (pairs 0, 2, 4, 6 on the left) minus parasagittal chain (8, 10, 12, 14) is zero
LOOP_SIGNS = np.array([1.0 if k < 8 else -1.0 for k in range(len(MONTAGE))])


def electrodes_from_pairs(y: np.ndarray) -> np.ndarray:
    """(T, 16) double-banana channels (MONTAGE order) -> (T, 16) potentials of the MONTAGE_ELECTRODES whose
    montage gives the channels back exactly when each hemisphere's loop closes (pairs derived from one
    referential recording); otherwise each loop's mismatch is shared equally by its 8 channels. A sample
    with a NaN channel is NaN for that channel's whole hemisphere."""
    y = np.asarray(y, dtype=np.float64)
    x = np.nan_to_num(y) @ PAIRS_TO_ELECTRODES.T
    bad = np.isnan(y)
    for side in HEMISPHERES:
        rows = bad[:, side].any(axis=1)
        if rows.any():
            cols = np.flatnonzero(np.abs(PAIRS_TO_ELECTRODES[:, side]).sum(axis=1) > 1e-9)
            x[np.ix_(rows, cols)] = np.nan
    return x


def loop_mismatch(y: np.ndarray) -> list[float]:
    """Per hemisphere (left, right): RMS of the loop's sum (temporal minus parasagittal chain) over the RMS of
    its 8 channels: 0 for pairs derived from one referential recording (up to the file's precision)."""
    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y).all(axis=1)]
    out = []
    for side in HEMISPHERES:
        if not len(y):
            out.append(0.0)
            continue
        loop = y[:, side] @ LOOP_SIGNS[side]
        scale = float(np.sqrt(np.mean(y[:, side] ** 2))) or 1.0
        out.append(float(np.sqrt(np.mean(loop ** 2))) / scale)
    return out


def pair_name(k: int) -> str:
    return MONTAGE_NAMES[k]
