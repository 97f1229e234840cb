"""A recording scored window by window: window placement, the per-window table, time shares, and the
timeline picture (class probabilities over time above a compressed view of the bipolar signal).

A window is 50 s; the models judge its central 10 s (that is what the experts labelled), so
consecutive windows `stride` seconds apart describe the recording around their centres, and with
the default stride of 10 s those central 10 s tile it. The first and last 20 s are never a centre.

Events: runs of consecutive windows whose top class is one of the five harmful patterns (or whose
probability for it reaches a threshold), each over the stretch of time its windows stand for. The
file's own annotations are drawn as a thin lane under the probabilities, their labels merged and
thinned so that none overlaps another.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from data.recording import hhmmss
from data.signal import CLASSES, FS, LABEL_COLS, MONTAGE_ELECTRODES, MONTAGE_NAMES, WINDOW, butter_coeffs, to_bipolar

LABEL_HALF_S = 5.0  # half of the labelled central 10 s
HARMFUL = CLASSES[:5]  # Seizure, LPD, GPD, LRDA, GRDA: the patterns events are made of
EVENT_COLUMNS = ["onset", "duration", "trial_type", "mean_probability", "peak_probability", "n_windows",
                 "first_window_s", "last_window_s"]
GAP_MARK_S = 10.0  # windows with at least this many seconds without signal are hatched in the timeline
COLOURS = ["#d62728", "#ff7f0e", "#9467bd", "#1f77b4", "#17becf", "#b8b8b8"]  # seizure ... other


def window_starts(n_samples: int, stride_s: float) -> np.ndarray:
    """Start samples of the 50 s windows, `stride_s` apart; one more ending at the recording's end
    when the stride does not land there; a single window at 0 for a recording shorter than 50 s."""
    stride = max(int(round(stride_s * FS)), 1)
    if n_samples <= WINDOW:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_samples - WINDOW + 1, stride, dtype=np.int64)
    if starts[-1] != n_samples - WINDOW:
        starts = np.append(starts, n_samples - WINDOW)
    return starts


def window_table(starts: np.ndarray, probs: np.ndarray, gaps: np.ndarray | None = None) -> pd.DataFrame:
    """start_s, center_s, the six probabilities, the top class, and gap_s: seconds of the window
    without signal (NaN, or past the end of a short recording), scored as zeros as in training."""
    df = pd.DataFrame({"start_s": starts / FS, "center_s": (starts + WINDOW // 2) / FS})
    df[LABEL_COLS] = probs
    df["top_class"] = np.asarray(CLASSES)[np.argmax(probs, axis=1)]
    if gaps is not None:
        df["gap_s"] = gaps
    return df


def gap_seconds(rec: np.ndarray, starts: np.ndarray, chunk: int = 60 * FS) -> np.ndarray:
    """Per window, the seconds whose montage electrodes are all NaN (or past the recording's end), from
    one streamed pass: the running count of gap samples is read off at each window's start and end."""
    n = len(rec)
    q = np.concatenate([starts, starts + WINDOW]).astype(np.int64)  # positions p: gap samples in [0, p)
    count = np.zeros(len(q))
    total = 0
    for s in range(0, n, chunk):
        part = np.isnan(rec[s:s + chunk][:, MONTAGE_ELECTRODES]).all(axis=1)
        running = total + np.concatenate([[0], np.cumsum(part)])  # at positions s .. s + len(part)
        inside = (q >= s) & (q <= s + len(part))
        count[inside] = running[q[inside] - s]
        total = int(running[-1])
    past = q > n
    count[past] = total + (q[past] - n)
    return (count[len(starts):] - count[:len(starts)]) / FS


def window_cells(centers: np.ndarray, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """The stretch of time each window stands for: from the midpoint with its neighbour before to the
    one after; the first and last reach 5 s past their centre (the labelled half-width)."""
    centers = np.asarray(centers, dtype=np.float64)
    mids = (centers[1:] + centers[:-1]) / 2
    lo = np.concatenate([[max(centers[0] - LABEL_HALF_S, 0.0)], mids])
    hi = np.concatenate([mids, [min(centers[-1] + LABEL_HALF_S, max(seconds, centers[-1]))]])
    return lo, hi


def time_shares(table: pd.DataFrame, seconds: float) -> dict:
    """Share of the covered time whose window's top class is each class (classes absent: left out)."""
    lo, hi = window_cells(table["center_s"].to_numpy(), seconds)
    dur = pd.Series(hi - lo).groupby(table["top_class"].to_numpy()).sum()
    total = float(dur.sum()) or 1.0
    return {c: float(dur[c]) / total for c in CLASSES if c in dur.index}


def summary(seconds: float, table: pd.DataFrame) -> str:
    """Length, windows, and the share of time per top class, largest first."""
    shares = sorted(time_shares(table, seconds).items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{c} {100 * s:.0f}%" for c, s in shares)
    return f"{hhmmss(seconds)} ({seconds:.0f} s), {len(table)} window(s); top class by time: {text}"


def events(table: pd.DataFrame, seconds: float, threshold: float | None = None) -> pd.DataFrame:
    """Per harmful class, each run of consecutive windows whose top class it is (or whose probability for
    it is at least `threshold`) is one event, from the start of its first window's stretch of time to the
    end of its last one's (window_cells: with the default stride, the central 10 s of each). A window with
    a gap of GAP_MARK_S or more (hatched in the timeline: scored largely on zeros) is in no event.
    Columns: onset, duration (s), trial_type (the class), mean and peak probability of that class over
    the run's windows, n_windows, and the start_s of its first and last window; sorted by onset."""
    rows = []
    if len(table):
        lo, hi = window_cells(table["center_s"].to_numpy(), seconds)
        probs = table[LABEL_COLS].to_numpy(np.float64)
        top = np.argmax(probs, axis=1)
        usable = table["gap_s"].to_numpy() < GAP_MARK_S if "gap_s" in table else np.ones(len(table), bool)
        start_s = table["start_s"].to_numpy(np.float64)
        for k, cls in enumerate(HARMFUL):
            on = (top == k) | ((probs[:, k] >= threshold) if threshold is not None else False)
            idx = np.flatnonzero(on & usable)
            for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(idx) else []:
                p = probs[run, k]
                rows.append((lo[run[0]], hi[run[-1]] - lo[run[0]], cls, p.mean(), p.max(), len(run),
                             start_s[run[0]], start_s[run[-1]]))
    df = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    df["order"] = [HARMFUL.index(c) for c in df["trial_type"]]
    df = df.sort_values(["onset", "order"], kind="stable").drop(columns="order").reset_index(drop=True)
    return df.astype({"onset": float, "duration": float, "mean_probability": float, "peak_probability": float,
                      "n_windows": int, "first_window_s": float, "last_window_s": float})


def event_counts(ev: pd.DataFrame) -> str:
    counts = ev["trial_type"].value_counts()
    return ", ".join(f"{c} {int(counts[c])}" for c in HARMFUL if c in counts.index) or "none"


def overview(rec: np.ndarray, n_bins: int = 2400, low: float = 0.5, high: float = 20.0):
    """(bin start times in s, min (bins, 16), max (bins, 16)) of the band-passed, clipped bipolar
    signal, computed in chunks with the filter state carried over (a day-long memmap stays on disk)."""
    n = len(rec)
    bin_len = max(-(-n // n_bins), 1)
    n_bins = -(-n // bin_len)
    b, a = butter_coeffs(low, high, 2)
    zi = np.zeros((max(len(a), len(b)) - 1, len(MONTAGE_NAMES)))
    lo = np.zeros((n_bins, len(MONTAGE_NAMES)), np.float32)
    hi = np.zeros_like(lo)
    step = bin_len * max(1, 60 * FS // bin_len)
    for s in range(0, n, step):
        x = np.nan_to_num(to_bipolar(np.asarray(rec[s:s + step], dtype=np.float64)), nan=0.0)
        y, zi = lfilter(b, a, x, axis=0, zi=zi)
        y = np.clip(y, -1024, 1024)
        edges = np.arange(0, len(y), bin_len)
        k = s // bin_len
        lo[k:k + len(edges)] = np.minimum.reduceat(y, edges, axis=0)
        hi[k:k + len(edges)] = np.maximum.reduceat(y, edges, axis=0)
    return np.arange(n_bins) * bin_len / FS, lo, hi


TICK_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200]  # seconds


def _time_axis(ax, seconds: float) -> None:
    """hh:mm:ss ticks at a clock-like step (10 s, 5 min, 1 h, ...), about 6-12 of them."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    step = next((s for s in TICK_STEPS if seconds / s <= 12), TICK_STEPS[-1])
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: hhmmss(v)))
    ax.set_xlim(0, seconds)


def nice_number(x: float) -> float:
    """1, 2 or 5 times a power of ten, at most x (for scale bars)."""
    p = 10 ** np.floor(np.log10(max(x, 1e-9)))
    return float(max(m for m in (1, 2, 5) if m * p <= x + 1e-12) * p)


LANE_FONT = 7  # points: the annotation lane's labels
LANE_ROWS = 2
LANE_CHARS = 24  # a longer description is cut, with an ellipsis
CHAR_EM = 0.62  # a generous mean glyph width of matplotlib's DejaVu Sans, in ems (measured mean about 0.55)
LANE_PAD_PX = 6  # the label box's padding and a little air


def short_label(text, n: int = LANE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 1] + "\u2026"


def lane_labels(ann: pd.DataFrame, seconds: float, width_px: float, dpi: float = 100,
                rows: int = LANE_ROWS) -> tuple[list, int]:
    """Labels of the annotation lane: ([(x, row, text, marks)], marks left without a label).

    Marks with the same description that start within one label's width of the first of them merge into
    one label "description \u00d7n" at the first; labels are then set left to right in the first row where
    they clear the label before them (a label is pushed left to end inside the lane); one that fits in no
    row is left out, its marks still drawn. Widths are estimated from the characters, generously."""
    seconds = max(float(seconds), 1e-9)
    px_per_s = max(width_px, 1.0) / seconds

    def width_s(text: str) -> float:
        return (len(text) * CHAR_EM * LANE_FONT * dpi / 72 + LANE_PAD_PX) / px_per_s

    clusters = []  # (x, text, marks)
    for desc, grp in ann.groupby("description", sort=False):
        text = short_label(desc)
        onsets = np.sort(grp["onset"].to_numpy(np.float64))
        first, n = onsets[0], 1
        for o in onsets[1:]:
            if o - first < width_s(f"{text} \u00d7{n + 1}"):
                n += 1
                continue
            clusters.append((first, text, n))
            first, n = o, 1
        clusters.append((first, text, n))
    placed, hidden = [], 0
    row_end = [-np.inf] * rows
    for x, text, n in sorted(clusters, key=lambda c: (c[0], c[1])):
        label = f"{text} \u00d7{n}" if n > 1 else text
        w = width_s(label)
        x = min(max(x, 0.0), max(seconds - w, 0.0))
        row = next((r for r in range(rows) if x >= row_end[r]), None)
        if row is None:
            hidden += n
            continue
        row_end[row] = x + w
        placed.append((x, row, label, n))
    return placed, hidden


def draw_annotation_lane(ax, ann: pd.DataFrame, seconds: float) -> list:
    """The file's annotations on `ax` (y 0..1): a line per mark (a band for one lasting over 2 pixels),
    labels from lane_labels; returns the label Text artists."""
    width_px = ax.get_window_extent().width
    px_per_s = max(width_px, 1.0) / max(seconds, 1e-9)
    for o, d in zip(ann["onset"].to_numpy(np.float64), ann["duration"].to_numpy(np.float64)):
        if d * px_per_s >= 2:
            ax.axvspan(o, o + d, color="#2ca02c", alpha=0.15, lw=0)
        ax.axvline(o, color="#2ca02c", lw=0.8)
    placed, hidden = lane_labels(ann, seconds, width_px, ax.figure.dpi)
    texts = [ax.text(x, 1 - (row + 0.5) / LANE_ROWS, label, fontsize=LANE_FONT, va="center", ha="left",
                     bbox=dict(boxstyle="square,pad=0.15", fc="white", ec="none", alpha=0.85))
             for x, row, label, _ in placed]
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel("file's\nmarks", rotation=0, ha="right", va="center", fontsize=8)
    ax.text(1.005, 0.5, f"{len(ann)} mark(s)" + (f"\n{hidden} unlabelled" if hidden else ""), fontsize=8,
            va="center", transform=ax.transAxes)
    return texts


def draw_timeline(table: pd.DataFrame, seconds: float, env, title: str, out, annotations=None) -> Path:
    """Stacked class probabilities (each window over its stretch of time) above the signal overview, with
    the file's own annotations (a DataFrame of onset, duration, description) as a lane between them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lane = annotations is not None and len(annotations) > 0
    if lane:
        fig, (ax, ax3, ax2) = plt.subplots(3, 1, figsize=(15, 9.6), sharex=True,
                                           gridspec_kw={"height_ratios": [2, 0.28, 3]})
    else:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(15, 9), sharex=True, gridspec_kw={"height_ratios": [2, 3]})
    lo, hi = window_cells(table["center_s"].to_numpy(), seconds)
    x = np.concatenate([lo, hi[-1:]])
    cum = np.zeros(len(x))
    probs = table[LABEL_COLS].to_numpy()
    for k, (cls, colour) in enumerate(zip(CLASSES, COLOURS)):
        top = cum + np.concatenate([probs[:, k], probs[-1:, k]])
        ax.fill_between(x, cum, top, step="post", color=colour, lw=0, label=cls)
        cum = top
    if "gap_s" in table:  # windows scored largely on zeros (a recording gap): hatched, not to be trusted
        gappy = table["gap_s"].to_numpy() >= GAP_MARK_S
        for a, b in zip(lo[gappy], hi[gappy]):
            ax.axvspan(a, b, facecolor="none", edgecolor="white", hatch="///", lw=0)
        if gappy.any():
            ax.fill_between([], [], facecolor="#b8b8b8", edgecolor="white", hatch="///",
                            label=f"gap >= {GAP_MARK_S:g} s")
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    ax.set_title(title, fontsize=10)
    t, emin, emax = env
    # background fills about half a lane, larger activity up to the whole lane (then it is clipped)
    spread = float(np.median(emax - emin)) * 2.0 or 1.0
    for ch in range(emin.shape[1]):
        off = -ch * spread
        ax2.fill_between(t, np.clip(emin[:, ch], -0.5 * spread, 0) + off, np.clip(emax[:, ch], 0, 0.5 * spread) + off,
                         step="post", lw=0, color="#1f4e79" if ch % 2 == 0 else "#9c2f2f")
    ax2.set_yticks([-ch * spread for ch in range(emin.shape[1])], MONTAGE_NAMES, fontsize=7)
    bar = nice_number(spread * 0.8)
    x0 = seconds * 1.005
    ax2.plot([x0, x0], [0.4 * spread, 0.4 * spread - bar], color="k", lw=2, clip_on=False)
    ax2.text(x0 + seconds * 0.004, 0.4 * spread - bar / 2, f"{bar:g} µV", fontsize=8, va="center")
    ax2.set_ylabel("bipolar channels (0.5-20 Hz), min-max per pixel")
    ax2.set_xlabel("time (hh:mm:ss); blue = left, red = right hemisphere")
    _time_axis(ax2, seconds)
    if lane:
        ax3.set_yticks([])
        ax3.set_ylabel("file's\nmarks", rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    if lane:  # after the layout: label widths are set against the lane's final width in pixels
        ann = annotations[(annotations["onset"] <= seconds) & (annotations["onset"] + annotations["duration"] >= 0)]
        draw_annotation_lane(ax3, ann, seconds)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
