"""A BIDS dataset scored whole (predict.py --bids-root): every sub-*/[ses-*/]eeg/*_eeg.<ext> recording, its
outputs written as a derivative dataset in <root>/derivatives/hms3rd/, in the same sub-/ses-/eeg folders and
named after the recording's entities followed by desc-hms3rd (sub-01_ses-1_task-rest_eeg.edf ->
sub-01_ses-1_task-rest_desc-hms3rd_events.tsv, ...), beside a dataset_description.json that says what made
them. desc- keeps every name apart from the raw dataset's own (a derivative may not take a raw file's name);
nothing is written outside derivatives/hms3rd."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from data import recording
from inference.blend import BLEND_FILE
from inference.recordings import SUMMARY_FILE, Batch, Target, output_name, unique_names
from utils.io import DataError

PIPELINE = "hms3rd"  # the derivatives folder's name is GeneratedBy's Name, as BIDS asks
BIDS_VERSION = "1.10.1"
CODE_URL = None  # no public address of this repository yet: GeneratedBy's CodeURL is left out until there is one
REPO = Path(__file__).resolve().parents[1]


def derivatives_dir(root) -> Path:
    return Path(root) / "derivatives" / PIPELINE


def bids_batch(root, description: str) -> Batch:
    """The dataset's EEG recordings (data/recording.recordings_in of each sub-*/eeg and sub-*/ses-*/eeg
    folder, names ending _eeg), sorted by folder, and where their outputs go; one-line DataError when the
    folder holds none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: BIDS dataset folder not found")
    out = derivatives_dir(root)
    targets = []
    for eeg in sorted(d for d in [*root.glob("sub-*/eeg"), *root.glob("sub-*/ses-*/eeg")] if d.is_dir()):
        for f in recording.recordings_in(eeg)[0]:
            stem = output_name(f)
            if stem.endswith("_eeg"):
                targets.append(Target(f, out / eeg.relative_to(root), stem[: -len("_eeg")], f"_desc-{PIPELINE}"))
    if not targets:
        raise DataError(f"{root}: no BIDS EEG recording (sub-*/[ses-*/]eeg/*_eeg.<ext>, ext one of "
                        f"{', '.join(recording.FORMATS)})")
    text = json.dumps(dataset_description(description), indent=2) + "\n"
    notes = [f"{root}: BIDS dataset, {len(targets)} EEG recording(s); outputs in {out}"]
    return Batch(unique_names(targets), out / SUMMARY_FILE, notes=notes, extra={out / "dataset_description.json": text})


def dataset_description(description: str) -> dict:
    """The derivative dataset's description: the raw dataset two folders up is its source (a BIDS URI
    through DatasetLinks), this code at its git commit the pipeline."""
    generated = {"Name": PIPELINE, "Version": code_version(), "Description": description}
    if CODE_URL:
        generated["CodeURL"] = CODE_URL
    return {"Name": f"{PIPELINE}: harmful brain activity predictions", "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative", "GeneratedBy": [generated], "SourceDatasets": [{"URL": "bids:raw:"}],
            "DatasetLinks": {"raw": "../.."}}


def code_version() -> str:
    """`git describe --always --dirty` of this code ("unknown" outside a git checkout)."""
    try:
        done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def describe_run(output_dir, blend_path, stride: float, event_threshold) -> str:
    """GeneratedBy's Description: the model, the ensemble's runs and blend, the windows and events."""
    blend = blend_path or Path(output_dir) / BLEND_FILE
    events = "top class" if event_threshold is None else f"top class or probability >= {event_threshold:g}"
    return (f"HMS Harmful Brain Activity Classification, 3rd-place solution (reproduction): the ensemble of the "
            f"runs in {output_dir} blended by {blend}; six class probabilities per 50 s window every {stride:g} s "
            f"(each describing its central 10 s); events: runs of windows of a harmful pattern ({events})")
