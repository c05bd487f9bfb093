"""``timebudget explain RUN_DIR``: Captum attributions of what a finished run learnt, and of what it chose to train on.

Integrated Gradients attributes the model's output (the true class, the predicted class, or a regression output) to
its inputs for a few test samples per class, and for the training samples the score table ranks highest ("kept": a
loss-based selection trains on high-loss samples) and lowest ("dropped"), so a person can see what "important" meant.
Images get figure grids (image, signed heat map, overlay) drawn by Captum's visualisation helpers; tabular data a bar
chart of mean |attribution| per feature. Everything runs after training, outside the budget, and writes only into its
own output folder (``RUN_DIR/explain`` by default).
"""
from __future__ import annotations

import contextlib
import io
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from . import artifacts, config as config_module, data
from .accel import resolve_device
from .errors import TimebudgetError
from .run_folder import Run, json_number, load_run

BASELINES = ("zeros", "blur", "mean")
TARGETS = ("true", "pred")
TOP_SHARE = 0.1  # concentration = share of the total |attribution| held by the top 10% of input elements
MEAN_BASELINE_SAMPLES = 4096  # a streamed (non in-memory) training set is averaged over this many samples at most


@dataclass
class Options:
    """What to explain and how. The defaults suit a quick look at a small run on a CPU."""

    samples: int = 4
    n_steps: int = 50
    baseline: str = "zeros"
    internal_batch_size: int | None = None
    device: str = "auto"
    target: str = "true"
    output: int = 0
    classes: list[int] | None = None
    tracin: bool = False
    out: str | None = None
    quiet: bool = False

    def validate(self) -> "Options":
        """Checks that need no run folder, so a bad flag fails before any loading."""
        if self.samples < 1:
            raise TimebudgetError(f"--samples must be >= 1, got {self.samples}")
        if self.n_steps < 1:
            raise TimebudgetError(f"--n-steps must be >= 1, got {self.n_steps}")
        if self.internal_batch_size is not None and self.internal_batch_size < 1:
            raise TimebudgetError(f"--internal-batch-size must be >= 1, got {self.internal_batch_size}")
        for name, value, allowed in (("baseline", self.baseline, BASELINES), ("target", self.target, TARGETS),
                                     ("device", self.device, config_module.DEVICES)):
            if value not in allowed:
                raise TimebudgetError(f"unknown --{name} {value!r}; allowed: {', '.join(allowed)}")
        return self


@dataclass
class Group:
    """Samples analysed together: one test class, or the kept / dropped training samples."""

    name: str
    split: str  # "test" or "train"
    index: torch.Tensor  # dataset positions


# --- attribution -------------------------------------------------------------------------------------------------
def attribute(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    baselines: torch.Tensor,
    n_steps: int,
    internal_batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients and its per-sample convergence delta (sum of attributions minus F(x) - F(baseline)).

    Captum needs ``internal_batch_size`` >= the number of samples it is given, so samples go in chunks of that size.
    """
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(model)
    chunk = internal_batch_size or len(x)
    parts = [
        ig.attribute(xs, baselines=bs, target=ts, n_steps=n_steps, internal_batch_size=internal_batch_size,
                     return_convergence_delta=True)
        for xs, bs, ts in zip(x.split(chunk), baselines.split(chunk), target.split(chunk))
    ]
    return torch.cat([a.detach() for a, _ in parts]), torch.cat([d.detach() for _, d in parts])


def attribution_stats(attr: torch.Tensor) -> dict[str, float | None]:
    """Per-sample summaries of one attribution map: its total (for completeness), its size and how concentrated it is.

    ``entropy`` is the entropy of |attribution| as a distribution over input elements, divided by its maximum (1 =
    spread evenly, 0 = one element); ``top10_share`` the share of the total |attribution| in the top 10% elements.
    """
    flat = attr.detach().flatten().double().cpu()
    mag = flat.abs()
    total = float(mag.sum())
    entropy = top = None
    if total > 0:
        p = mag[mag > 0] / total
        entropy = float(-(p * p.log()).sum()) / math.log(len(flat)) if len(flat) > 1 else 0.0
        top = float(mag.topk(max(1, math.ceil(TOP_SHARE * len(flat)))).values.sum()) / total
    return {"attr_sum": float(flat.sum()), "abs_mean": float(mag.mean()), "abs_max": float(mag.max()),
            "entropy": entropy, "top10_share": top}


def make_baseline(name: str, bundle: data.DataBundle, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reference input of Integrated Gradients.

    Inputs are standardised, so ``zeros`` is the per-channel (image) or per-feature (tabular) data mean; ``mean`` is
    the average training input, position by position; ``blur`` a Gaussian blur of each image (edges removed, layout
    kept).
    """
    if name == "zeros":
        return torch.zeros_like
    if name == "mean":
        train = bundle.train
        if isinstance(train, data.ArrayDataset):
            mean = train.x.mean(0)
        else:
            take = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:MEAN_BASELINE_SAMPLES]
            mean = _fetch(train, take, bundle.input_shape)[0].mean(0)
        mean = mean.to(device)
        return lambda x: mean.expand_as(x).clone()
    if bundle.kind != "image":
        raise TimebudgetError("--baseline blur needs image data; this run is tabular (use zeros or mean)")
    from torchvision.transforms.functional import gaussian_blur

    size = min(bundle.input_shape[1:])
    sigma = max(1.0, size / 8)
    kernel = min(2 * round(2 * sigma) + 1, 2 * ((size - 1) // 2) + 1)  # reflect padding must stay inside the image
    if kernel < 3:
        raise TimebudgetError(f"--baseline blur needs images of at least 3x3 pixels, got {size}x{size}")
    return lambda x: gaussian_blur(x, [kernel, kernel], [sigma, sigma])


# --- samples -----------------------------------------------------------------------------------------------------
def _fetch(ds: Dataset, index: torch.Tensor, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(ds, data.ArrayDataset):
        return ds.x[index], ds.y[index]
    xs, ys = zip(*(ds[i] for i in index.tolist()))
    x = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in xs]).view(len(xs), *input_shape)
    return x, torch.stack([torch.as_tensor(v) for v in ys])


def held_out_groups(run: Run, options: Options) -> list[Group]:
    """Per class, the first ``samples`` test samples; for regression, samples spread evenly over the target range."""
    labels = data.labels(run.bundle.test)
    if run.bundle.task == "regression":
        order = labels.view(len(labels), -1)[:, options.output].argsort()
        picks = torch.linspace(0, len(order) - 1, min(options.samples, len(order))).round().long().unique()
        return [Group("all", "test", order[picks])]
    return [Group(f"class {k}", "test", (labels == k).nonzero().flatten()[: options.samples])
            for k in _classes(run, options)]


def kept_dropped_groups(run: Run, options: Options) -> tuple[list[Group], str | None]:
    """The measured training samples with the highest ("kept") and lowest ("dropped") average score."""
    if run.scores is None:
        return [], run.scores_note
    pool = (run.scores["count"] > 0).nonzero().flatten()
    if run.bundle.task == "classification" and options.classes is not None:
        pool = pool[torch.isin(data.labels(run.bundle.train)[pool], torch.tensor(options.classes))]
    k = min(options.samples, len(pool) // 2)
    if k == 0:
        return [], f"only {len(pool)} measured training samples in the analysed classes: too few to compare"
    ranked = pool[run.scores["average"][pool].argsort(descending=True, stable=True)]
    return [Group("kept", "train", ranked[:k]), Group("dropped", "train", ranked[-k:].flip(0))], None


def _classes(run: Run, options: Options) -> list[int]:
    n = run.bundle.num_outputs
    if options.classes is None:
        return list(range(n))
    bad = [k for k in options.classes if not 0 <= k < n]
    if bad:
        raise TimebudgetError(f"--classes {bad[0]} is out of range: this run has {n} classes (0 to {n - 1})")
    return list(dict.fromkeys(options.classes))


def _check_targets(run: Run, options: Options) -> None:
    if run.bundle.task == "regression":
        if options.classes is not None:
            raise TimebudgetError("--classes applies to classification runs; this run is a regression")
        if not 0 <= options.output < run.bundle.num_outputs:
            raise TimebudgetError(f"--output {options.output} is out of range: this run has "
                                  f"{run.bundle.num_outputs} regression outputs (0 to {run.bundle.num_outputs - 1})")
    else:
        _classes(run, options)
        if options.output != 0:
            raise TimebudgetError("--output selects a regression output; this run is a classification")


# --- one group ---------------------------------------------------------------------------------------------------
@dataclass
class Analysed:
    """A group's inputs and attributions (for figures) and its per-sample records (for explain.json)."""

    group: Group
    x: torch.Tensor
    attr: torch.Tensor
    records: list[dict[str, Any]]


def analyse(run: Run, group: Group, options: Options, baseline: Callable[[torch.Tensor], torch.Tensor]) -> Analysed:
    """Attribute one group's samples and describe each: label, prediction, score, attribution statistics, delta."""
    bundle = run.bundle
    ds = bundle.test if group.split == "test" else bundle.train
    x, y = _fetch(ds, group.index, bundle.input_shape)
    x = x.to(run.device)
    base = baseline(x)
    with torch.no_grad():
        out, out_base = run.model(x), run.model(base)
    rows = torch.arange(len(x), device=run.device)
    if bundle.task == "regression":
        target = torch.full((len(x),), options.output, dtype=torch.long, device=run.device)
    else:
        target = out.argmax(1) if options.target == "pred" else y.to(run.device)
    attr, delta = attribute(run.model, x, target, base, options.n_steps, options.internal_batch_size)
    output_diff = (out[rows, target] - out_base[rows, target]).cpu()
    records = []
    for i, index in enumerate(group.index.tolist()):
        record: dict[str, Any] = {"split": group.split, "group": group.name, "index": index}
        if bundle.task == "regression":
            label = float(y.view(len(y), -1)[i, options.output]) * bundle.target_std + bundle.target_mean
            pred = float(out[i, options.output]) * bundle.target_std + bundle.target_mean
            record.update(label=label, prediction=pred, abs_error=abs(pred - label))
        else:
            record.update(label=int(y[i]), prediction=int(out[i].argmax()), correct=int(y[i]) == int(out[i].argmax()))
        record["target"] = int(target[i])
        if group.split == "train" and run.scores is not None:
            record.update(score=float(run.scores["average"][index]), score_last=float(run.scores["last"][index]),
                          score_count=int(run.scores["count"][index]))
        record.update(attribution_stats(attr[i]))
        record.update(output_diff=float(output_diff[i]), delta=float(delta[i]))
        records.append(record)
    return Analysed(group, x.cpu(), attr.cpu(), records)


def summarise(records: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """Means over a group: what the kept / dropped comparison reports side by side."""
    def mean(key: str) -> float | None:
        values = [r[key] for r in records if r.get(key) is not None]
        return json_number(float(np.mean(values))) if values else None

    summary: dict[str, Any] = {"n": len(records), "mean_score": mean("score"), "mean_abs_attribution": mean("abs_mean"),
                               "mean_entropy": mean("entropy"), "mean_top10_share": mean("top10_share"),
                               "mean_abs_delta": json_number(float(np.mean([abs(r["delta"]) for r in records])))}
    if task == "classification":
        summary["accuracy"] = float(np.mean([r["correct"] for r in records]))
        labels = [r["label"] for r in records]
        summary["label_counts"] = {str(k): labels.count(k) for k in sorted(set(labels))}
    else:
        summary["mae"] = mean("abs_error")
    return summary


def compare(kept: list[dict[str, Any]], dropped: list[dict[str, Any]], task: str) -> dict[str, Any]:
    a, b = summarise(kept, task), summarise(dropped, task)
    difference = {k: a[k] - b[k] for k in a if k != "n" and isinstance(a[k], float) and isinstance(b[k], float)}
    return {"kept": a, "dropped": b, "kept_minus_dropped": difference}


# --- figures -----------------------------------------------------------------------------------------------------
Panel = tuple[np.ndarray, np.ndarray, str]  # image HWC in [0, 1], attribution HWC, caption


def _display(x: torch.Tensor) -> np.ndarray:
    """A standardised CHW input as an HWC RGB image in [0, 1] (min-max per image), for display only."""
    img = x.float()
    if img.shape[0] != 3:
        img = img.mean(0, keepdim=True).expand(3, *img.shape[1:])
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    return img.permute(1, 2, 0).numpy()


def _caption(record: dict[str, Any], task: str) -> str:
    if task == "regression":
        text = f"#{record['index']} y={record['label']:.3g} p={record['prediction']:.3g}"
    else:
        text = f"#{record['index']} y={record['label']} p={record['prediction']}"
    return text + (f" s={record['score']:.3g}" if "score" in record else "")


def panels(analysed: Analysed, task: str) -> list[Panel]:
    return [(_display(x), a.permute(1, 2, 0).numpy(), _caption(r, task))
            for x, a, r in zip(analysed.x, analysed.attr, analysed.records)]


def image_figure(blocks: list[tuple[str, list[Panel]]], path: Path, title: str) -> None:
    """Blocks of (image, signed heat map, |attribution| overlay) columns, one sample per row, blocks side by side."""
    from captum.attr import visualization
    from matplotlib.figure import Figure

    rows = max(len(p) for _, p in blocks)
    fig = Figure(figsize=(5.4 * len(blocks), 1.9 * rows + 0.6))
    axes = fig.subplots(rows, 3 * len(blocks), squeeze=False)
    for b, (name, block) in enumerate(blocks):
        for r in range(rows):
            ax_img, ax_heat, ax_over = axes[r, 3 * b: 3 * b + 3]
            for ax in (ax_img, ax_heat, ax_over):
                ax.set_axis_off()
            if r >= len(block):
                continue
            img, attr, caption = block[r]
            head = f"{name}\n" if r == 0 else ""
            ax_img.imshow(img)
            ax_img.set_title(head + caption, fontsize=7)
            if not np.any(attr.sum(axis=2)):  # Captum cannot normalise an all-zero map
                ax_heat.set_title("all-zero attribution", fontsize=7)
                continue
            visualization.visualize_image_attr(attr, img, method="heat_map", sign="all", plt_fig_axis=(fig, ax_heat),
                                 use_pyplot=False, title="attribution (+green/-red)" if r == 0 else None)
            visualization.visualize_image_attr(attr, img, method="blended_heat_map", sign="absolute_value",
                                 plt_fig_axis=(fig, ax_over), use_pyplot=False, title="|attribution| overlay"
                                 if r == 0 else None)
            for ax in (ax_heat, ax_over):
                ax.title.set_fontsize(7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def bar_figure(panels_: list[tuple[str, list[tuple[str, np.ndarray]]]], path: Path, title: str) -> None:
    """Mean |attribution| per feature: one subplot per panel, one bar series per (label, values) pair."""
    from matplotlib.figure import Figure

    features = len(panels_[0][1][0][1])
    fig = Figure(figsize=(max(6.0, 0.3 * features + 2), 2.2 * len(panels_) + 0.6))
    axes = fig.subplots(len(panels_), 1, squeeze=False)[:, 0]
    positions = np.arange(features)
    for ax, (name, series) in zip(axes, panels_):
        width = 0.8 / len(series)
        for s, (label, values) in enumerate(series):
            ax.bar(positions + (s - (len(series) - 1) / 2) * width, values, width, label=label)
        ax.set_title(name, fontsize=8)
        ax.set_ylabel("mean |attr|", fontsize=7)
        ax.set_xticks(positions, [f"f{i}" for i in positions], fontsize=6, rotation=90 if features > 30 else 0)
        if len(series) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    """Render with the Agg canvas explicitly: headless, and without touching pyplot's global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    artifacts.write_bytes(path, buffer.getvalue())


def _mean_abs(analysed: Analysed) -> np.ndarray:
    return analysed.attr.abs().flatten(1).mean(0).numpy()


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def figures(run: Run, tests: list[Analysed], trains: list[Analysed], out: Path, options: Options) -> list[str]:
    """Write the PNG figures; return their file names."""
    task, target = run.bundle.task, ("output " + str(options.output) if run.bundle.task == "regression"
                                     else f"{options.target} class")
    about = f"Integrated Gradients, {options.baseline} baseline, target = {target}"
    written = []
    if run.bundle.kind == "image":
        for a in tests:
            name = f"test_{_slug(a.group.name)}.png"
            image_figure([(f"test {a.group.name}", panels(a, task))], out / name, about)
            written.append(name)
        if trains:
            name = "train_kept_vs_dropped.png"
            image_figure([(f"{a.group.name} ({'high' if a.group.name == 'kept' else 'low'} score)", panels(a, task))
                          for a in trains], out / name, f"training samples by score; {about}")
            written.append(name)
    else:
        if tests:
            bar_figure([(f"test {a.group.name}", [("test", _mean_abs(a))]) for a in tests],
                       out / "test_features.png", f"mean |attribution| per feature; {about}")
            written.append("test_features.png")
        if trains:
            bar_figure([("training samples by score", [(a.group.name, _mean_abs(a)) for a in trains])],
                       out / "train_kept_vs_dropped_features.png", f"kept vs dropped; {about}")
            written.append("train_kept_vs_dropped_features.png")
    return written


# --- the command -------------------------------------------------------------------------------------------------
def run(run_dir: str | Path, options: Options | None = None) -> dict[str, Any]:
    """Explain a finished run: figures and ``explain.json`` in ``options.out`` (default ``RUN_DIR/explain``).

    Returns what explain.json holds. Runs outside any training budget and prints how long it took.
    """
    options = (options or Options()).validate()
    start = time.perf_counter()
    device = resolve_device(options.device)
    with full_precision():
        report, out = _explain(run_dir, options, device)
    report["elapsed_s"] = time.perf_counter() - start
    artifacts.write_json(out / "explain.json", report)
    if not options.quiet:
        for note in report["notes"]:
            print(f"timebudget explain: {note}")
        print(f"timebudget explain: {len(report['samples'])} samples attributed ({options.baseline} baseline, "
              f"{options.n_steps} steps) in {report['elapsed_s']:.2f} s, outside the training budget; "
              f"{len(report['figures'])} figures and explain.json in {out}")
    return report


def tf32_switches() -> list[tuple[Any, str, Any]]:
    """(object, attribute, plain-fp32 value) of each TF32 switch. torch 2.9 replaced ``allow_tf32`` by
    ``fp32_precision`` (``"ieee"`` is plain fp32) and refuses a mix of the two APIs, so the current one is used where
    it exists and ``allow_tf32`` only on older torch."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):
        return [(matmul, "fp32_precision", "ieee"), (cudnn.conv, "fp32_precision", "ieee"),
                (cudnn.rnn, "fp32_precision", "ieee")]
    return [(matmul, "allow_tf32", False), (cudnn, "allow_tf32", False)]


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Plain fp32 arithmetic while explaining: TF32 (cuDNN's default in PyTorch, or a user's setting for matmuls)
    moves Integrated Gradients' deltas and the small self-influence values of well-fit samples by around 1%."""
    switches = tf32_switches()
    saved = [getattr(obj, name) for obj, name, _ in switches]
    try:
        for obj, name, value in switches:
            setattr(obj, name, value)
        yield
    finally:
        for (obj, name, _), value in zip(switches, saved):
            setattr(obj, name, value)


def _explain(run_dir: str | Path, options: Options, device: torch.device) -> tuple[dict[str, Any], Path]:
    loaded = load_run(run_dir, device)
    _check_targets(loaded, options)
    baseline = make_baseline(options.baseline, loaded.bundle, device)
    out = Path(options.out) if options.out else loaded.path / "explain"
    out.mkdir(parents=True, exist_ok=True)

    kept_dropped, missing_note = kept_dropped_groups(loaded, options)
    groups = held_out_groups(loaded, options)
    tests = [analyse(loaded, g, options, baseline) for g in groups if len(g.index)]
    trains = [analyse(loaded, g, options, baseline) for g in kept_dropped]
    notes = [f"no kept/dropped comparison: {missing_note}"] if missing_note else []
    empty = [g.name for g in groups if not len(g.index)]
    if empty:
        notes.append(f"no test samples in {', '.join(empty)}")
    report: dict[str, Any] = {
        "run": str(loaded.path),
        "data": loaded.config.data,
        "task": loaded.bundle.task,
        "kind": loaded.bundle.kind,
        "strategy": loaded.config.strategy,
        "method": "IntegratedGradients",
        "baseline": options.baseline,
        "n_steps": options.n_steps,
        "target": options.target if loaded.bundle.task == "classification" else f"output {options.output}",
        "device": str(device),
        "samples_per_group": options.samples,
        "groups": "test samples per class (regression: spread over the target range); kept / dropped: the measured "
                  "training samples with the highest / lowest average score (a loss-based selection keeps the high)",
        "comparison": compare(trains[0].records, trains[1].records, loaded.bundle.task) if trains else None,
        "notes": notes,
    }
    if options.tracin:
        from . import influence

        tracin, self_influence = influence.report(loaded, device, options.internal_batch_size)
        artifacts.save_torch(out / "self_influence.pt", self_influence)
        notes.extend(tracin.pop("notes"))
        report["tracin"] = tracin
        for a in trains:
            for r in a.records:
                r["self_influence"] = float(self_influence[r["index"]])
    report["samples"] = [r for a in tests + trains for r in a.records]
    report["figures"] = figures(loaded, tests, trains, out, options)
    return report, out
