"""Run folders and checkpoints: durable atomic writes, weights_only loads, and the one rule for a run's state.

A run folder <output_dir>/<name>/fold<fold>/seed<seed>/ is
- *finished* when checkpoint.pth is a complete checkpoint (train.py writes it last, fsynced, after
  val_logits.csv and everything else the run produces), so whatever a finished folder holds belongs
  to that checkpoint;
- *interrupted* when it is not finished and holds the per-epoch resume state last_state.pth;
- *not started* otherwise (a zero-length or truncated checkpoint.pth counts as not finished, and
  `checkpoint_problem` names it).
train.py, run_train.sh (through sweep/), the blend, predict, plot_sample and the demo all use
`run_state` / `is_finished` from here and nothing else.

One process at a time trains a run: it holds the run's claim `.seed<seed>.claim` beside the folder
(utils/claim.py; `claim_run`), which outlives the folder's removal and a --force promotion. Holding it,
`claim_run` first finishes what a killed holder left: a finished --force run still in its staging folder
is promoted (or named when that fails, never deleted), a finished run's leftover resume state and replaced
run are removed (`leftovers` names them, so the sweep claims a finished run to tidy it), and temporary files
of atomic writes older than the claim are removed.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

from utils.claim import Claim, ClaimHeld, live_holder
from utils.config import cfg_from_dict
from utils.io import DataError, atomic_write_text, fsync_path, remove_stale_temps

CHECKPOINT_FILE = "checkpoint.pth"  # a finished run's weights, written last
RESUME_FILE = "last_state.pth"  # an interrupted run's resume state


def run_dir(output_dir, name: str, fold: int, seed: int) -> Path:
    return Path(output_dir) / name / f"fold{fold}" / f"seed{seed}"


FINISHED, INTERRUPTED, NOT_STARTED = "finished", "interrupted", "not started"


def checkpoint_problem(path) -> str | None:
    """None when `path` is a complete torch checkpoint, else why not (missing, empty, truncated).

    torch.save writes a zip whose directory sits at the end of the file, so a cheap zip check catches
    an empty or cut-off file without unpickling tens of MB."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "zero-length file"
    try:
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist()):
                return "not a torch checkpoint (no data.pkl)"
    except (zipfile.BadZipFile, OSError) as err:
        return f"unreadable ({err})"
    return None


def run_state(path) -> str:
    """FINISHED, INTERRUPTED or NOT_STARTED: the one rule for a run folder."""
    path = Path(path)
    if checkpoint_problem(path / CHECKPOINT_FILE) is None:
        return FINISHED
    return INTERRUPTED if (path / RESUME_FILE).is_file() else NOT_STARTED


def staging_dir(final) -> Path:
    """Where `--force` retrains a run: hidden beside it (not matched by seed*), so the old run stays whole."""
    final = Path(final)
    return final.parent / f".{final.name}.force"


def claim_file(final) -> Path:
    """The run's claim (utils/claim.py): hidden beside its folder, so it survives the folder's removal."""
    final = Path(final)
    return final.parent / f".{final.name}.claim"


def _old_dir(final: Path) -> Path:
    return final.parent / f".{final.name}.old"


def promote(staging, final) -> None:
    """Replace `final` by the finished `staging` run: old run aside, new run in, old run removed."""
    staging, final = Path(staging), Path(final)
    old = _old_dir(final)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def leftovers(final) -> str | None:
    """What a process killed at the end of a run left that `recover` finishes, in words; None if nothing."""
    final = Path(final)
    if is_finished(staging_dir(final)):
        return f"a finished --force run waits in {staging_dir(final)}"
    if not is_finished(final):
        return None
    if (final / RESUME_FILE).exists():
        return f"the finished run still holds its resume state {final / RESUME_FILE}"
    if _old_dir(final).is_dir():
        return f"the run it replaced is still in {_old_dir(final)}"
    if claim_file(final).exists() and live_holder(claim_file(final)) is None:
        return f"the claim {claim_file(final)} of a process that ended is still there"
    return None


def recover(final, say=print) -> None:
    """Finish what a killed run left (the caller holds the run's claim): a finished --force run in the staging
    folder is promoted, or named in one line when that fails (it is never deleted); the replaced run that an
    interrupted promotion had set aside is removed; a finished run's resume state (its process died between
    writing the checkpoint and removing it) is removed."""
    final = Path(final)
    staging, old = staging_dir(final), _old_dir(final)
    if is_finished(staging):
        try:
            promote(staging, final)
        except OSError as err:
            say(f"warning: the finished --force run {staging} could not replace {final} ({err}); it is kept there: "
                f"move it to {final} by hand")
            return
        say(f"promoted the finished --force run {staging} to {final} (its process ended before promoting it)")
    elif old.is_dir() and is_finished(final):
        shutil.rmtree(old, ignore_errors=True)
    if is_finished(final):
        (final / RESUME_FILE).unlink(missing_ok=True)


def claim_run(final, say=print) -> Claim:
    """Claim the run folder `final` for this process (raises utils.claim.ClaimHeld naming a live holder; a
    stale claim is taken over with one line), then tidy what an earlier holder left: `recover`, and the
    temporary files of atomic writes in the run and its staging folder older than this claim. The claim
    is the caller's to release (utils.claim.release_held also runs at exit)."""
    final = Path(final)
    claim = Claim(claim_file(final), say=say).acquire()
    try:
        recover(final, say)
        for folder, pattern in ((final, ".*.tmp"), (staging_dir(final), ".*.tmp"),
                                (final.parent, f".{final.name}.*.tmp")):  # the last: claims being made
            remove_stale_temps(folder, claim.started, pattern)
    except BaseException:
        claim.release()
        raise
    return claim


def claim_to_train(final, say=print) -> str | None:
    """`claim_run` for a process about to train `final`: None once claimed, else why not, in one line:
    another live process holds the run, the claim cannot be made, or a finished --force run that could not
    be promoted waits in staging (never deleted, so never trained over)."""
    final = Path(final)
    try:
        claim = claim_run(final, say)
    except ClaimHeld as err:
        return f"{final} is being trained by another process: {err.holder.describe()} (claim {err.path}); not started"
    except OSError as err:
        return f"{claim_file(final)}: cannot claim the run: {err}"
    if is_finished(staging_dir(final)):
        claim.release()
        return f"{staging_dir(final)} holds a finished --force run that could not replace {final} (see above)"
    return None


def is_finished(path) -> bool:
    return run_state(path) == FINISHED


def is_interrupted(path) -> bool:
    return run_state(path) == INTERRUPTED


def interrupted_runs(output_dir, name: str, fold: int) -> list[Path]:
    base = Path(output_dir) / name / f"fold{fold}"
    return sorted(p for p in base.glob("seed*") if is_interrupted(p)) if base.is_dir() else []


def finished_runs(output_dir, config: str, fold: int | None = None) -> list[Path]:
    """Finished run folders of a config (all folds, fold -1 included, or one fold), in a stable order."""
    pattern = f"{config}/fold*/seed*" if fold is None else f"{config}/fold{fold}/seed*"
    return sorted((p for p in Path(output_dir).glob(pattern) if p.is_dir() and is_finished(p)), key=_run_key)


def _run_key(path: Path):
    """fold then seed by number (seed7 < seed42); odd names last."""
    def num(name, prefix):
        tail = name[len(prefix):]
        return (0, int(tail), "") if name.startswith(prefix) and tail.lstrip("-").isdigit() else (1, 0, name)
    return num(path.parent.name, "fold"), num(path.name, "seed")


def load_run_config(folder, data_dir, cache_dir=None) -> SimpleNamespace:
    """A run folder's resolved config (config.json over its module's defaults), set up for offline inference."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise DataError(f"{path}: run config not found (each run folder needs config.json next to checkpoint.pth)")
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable run config: {err}") from None
    cfg = cfg_from_dict(saved)
    cfg.pretrained, cfg.pretrained_weights = False, None  # the checkpoint holds every weight
    cfg.data_dir, cfg.cache_dir = str(data_dir), cache_dir
    return cfg


def save(obj: dict, path) -> None:
    """torch.save through a temporary file and rename: a crash never leaves half a checkpoint."""
    import torch  # here, so that reading a run's state (the sweep, run_train.sh) does not load torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_text(path, buf.getvalue())


def load(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt/foreign file -> one clear line
        raise DataError(f"{path}: cannot load checkpoint: {type(err).__name__}: {str(err).splitlines()[0]}") from None


def load_model_weights(model, path) -> dict:
    """Load checkpoint.pth's "model" into `model`; returns the whole checkpoint dict."""
    ckpt = load(path)
    if "model" not in ckpt:
        raise DataError(f"{path}: checkpoint has no 'model' entry")
    model.load_state_dict(ckpt["model"])
    return ckpt
