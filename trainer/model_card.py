"""The model card: markdown with the holdout evidence, plus three PNG plots (matplotlib Agg).

coverage_accuracy.png (the curve, the target and the chosen threshold), reliability.png (before
and after temperature scaling), confusion_worst.png (the confusion matrix of the worst classes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainer.calibrate import CoverageCurve, ReliabilityBin

WORST_CLASSES = 12
PLOTS = ("coverage_accuracy.png", "reliability.png", "confusion_worst.png")


def plot_coverage_accuracy(path: Path, curve: CoverageCurve, target: float, threshold: float | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot(curve.coverage, curve.kept_accuracy, label="small model, kept requests")
    ax.axhline(target, color="tab:red", linestyle="--", label=f"frontier {target:.3f}")
    if threshold is not None:
        i = int(np.flatnonzero(curve.threshold >= threshold)[-1])
        ax.scatter([curve.coverage[i]], [curve.kept_accuracy[i]], color="black", zorder=3,
                   label=f"threshold {threshold:.3f}: coverage {curve.coverage[i]:.1%}")
    ax.set_xlabel("coverage (share of requests the small model keeps)")
    ax.set_ylabel("accuracy on kept requests (gold)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_reliability(path: Path, before: list[ReliabilityBin], after: list[ReliabilityBin],
                     ece_before: float, ece_after: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for bins, name, ece in ((before, "before", ece_before), (after, "after temperature", ece_after)):
        used = [b for b in bins if b.count]
        ax.plot([b.confidence for b in used], [b.accuracy for b in used], marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin (gold)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def worst_classes(per_class: dict[str, dict[str, float]], k: int = WORST_CLASSES) -> list[str]:
    present = [(v["f1"], label) for label, v in per_class.items() if v["support"]]
    return [label for _, label in sorted(present)[:k]]


def plot_confusion(path: Path, labels: list[str], matrix: np.ndarray, chosen: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = [labels.index(c) for c in chosen]
    sub = matrix[np.ix_(idx, idx)]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(idx), 1.0 + 0.5 * len(idx)), dpi=110)
    ax.imshow(sub, cmap="Blues")
    ax.set_xticks(range(len(idx)), chosen, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(len(idx)), chosen, fontsize=7)
    for (r, c), n in np.ndenumerate(sub):
        if n:
            ax.text(c, r, str(n), ha="center", va="center", fontsize=6,
                    color="white" if n > sub.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title("worst classes by F1", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _reviewed_threshold(r: dict[str, Any]) -> str:
    """How the threshold was searched (trainer.threshold), in one sentence."""
    t = r["threshold"]
    return (f"The threshold is the lowest of the candidate thresholds (confidence quantiles, highest first) "
            f"whose served answers (small at or above it, frontier below) pass the gate's non-inferiority test "
            f"(margin {t['margin']:g}, alpha {t['alpha']:g}) on {t['n']} gold holdout items (gate basis: "
            f"{r['gate']['basis']}), every earlier candidate passing too (fixed-sequence search: no selection "
            f"bias); served accuracy {_pct(t['served_accuracy'])} vs the frontier's {_pct(t['frontier_accuracy'])}.")


def training_section(finetune: dict[str, Any] | None) -> str:
    """What the recipe chose and why (trainer/recipe.py), and how the fine-tune ended."""
    if not finetune or not finetune.get("recipe"):
        return ""
    recipe = finetune["recipe"]
    why = recipe.get("why") or {}
    shown = {"max_length": recipe.get("max_length"), "batch_size": recipe.get("batch_size"),
             "learning_rate": recipe.get("learning_rate"), "head_learning_rate": recipe.get("head_learning_rate"),
             "epochs": recipe.get("max_epochs"), "patience": recipe.get("patience"),
             "evals_per_epoch": recipe.get("evals_per_epoch"), "time_budget_s": recipe.get("time_budget_s"),
             "freeze_word_embeddings": bool(recipe.get("frozen")), "frozen_layers": recipe.get("frozen_layers", 0),
             "optimizer_impl": recipe.get("optimizer_impl")}
    rows = "\n".join(f"| {name} | {value} | {why.get(name, '')} |" for name, value in shown.items())
    best = finetune.get("best_val_accuracy")
    ended = (f"{finetune.get('epochs_run')} epochs, ended by {finetune.get('stopped_by')}; best validation accuracy "
             f"{_pct(best) if best is not None else 'n/a'}; {finetune.get('examples_per_s') or 0:.0f} examples/s.")
    return f"""## Training (chosen from the train split; a GRADUATE_TRAIN_* setting wins)

| setting | value | why |
|---|---|---|
{rows}

{ended}

"""


def label_review_section(review: dict[str, Any] | None, shown: int = 10) -> str:
    """The train labels the model disputes (trainer/disputes.py): how many, and the likeliest errors."""
    if not review:
        return ""
    rows = "\n".join(f"| {i['input'][:80].replace('|', '/')} | {i['label']} | {i['model_label']} "
                     f"({_pct(i['model_probability'])}) | {i['label_probability']:.3f} |"
                     for i in review["items"][:shown])
    return f"""## Train labels the model disputes

{review['disputed']} of {review['rows']} train rows carry a label the model does not answer ({review['reviewed_rows']}
rows reviewed by a person are never listed). Most are the frontier's errors; a person checking them on the
review page (the first {review['listed']} are listed there, likeliest errors first) gives the next run
cleaner labels. `disputed_labels.json` in the run folder lists them all.

| input | trained on | model's answer | p(trained label) |
|---|---|---|---|
{rows}

"""


def render_markdown(r: dict[str, Any]) -> str:
    """The card's text from the run's report (see trainer.pipeline)."""
    h, t, rev = r["holdout"], r["threshold"], r["holdout"]["reviewed_only"]
    threshold = (f"{t['threshold']:.4f} (coverage {_pct(t['coverage'])}, kept accuracy {_pct(t['kept_accuracy'])}, "
                 f"predicted fallback rate {_pct(t['predicted_fallback_rate'])})" if t["threshold"] is not None
                 else "none: even the highest candidate's served answers do not pass the gate's non-inferiority test — "
                 "the gate will refuse")
    pairs = "\n".join(f"| {p['gold']} | {p['predicted']} | {p['count']} |" for p in h["confusion_pairs"][:10])
    worst = "\n".join(f"| {label} | {h['per_class'][label]['precision']:.3f} | {h['per_class'][label]['recall']:.3f} | "
                      f"{h['per_class'][label]['f1']:.3f} | {h['per_class'][label]['support']} |"
                      for label in worst_classes(h["per_class"], 10))
    q = r["quantization"]
    return f"""# Model card: {r['task']} version {r['version']}

Triton model `{r['triton_model']}`, version {r['version']}; base model `{r['base_model']}`;
dataset snapshot `{r['snapshot_id']}`; trained on {r['device']} in {r['timings']['finetune_s']:.0f} s.
The "frontier" labels come from {r['frontier_source']}.

## Holdout ({h['n']} items; gold = reviewed label for {h['gold_reviewed']}, frontier answer for {h['gold_frontier']})

| | small model | frontier |
|---|---|---|
| accuracy vs gold (all) | {_pct(h['small_accuracy'])} | {_pct(h['frontier_accuracy'])} |
| accuracy vs reviewed labels only (n={rev['n']}) | {_pct(rev['small_accuracy'])} | {_pct(rev['frontier_accuracy'])} |

Agreement small vs frontier: {_pct(h['agreement'])}. Macro-F1: {h['macro_f1']:.3f}.
Paired table (gold): both correct {h['paired']['both_correct']}, small only {h['paired']['small_only']},
frontier only {h['paired']['frontier_only']}, neither {h['paired']['neither']}.
On the unreviewed part the gold *is* the frontier's answer, so the frontier's accuracy over all
gold is optimistic; the reviewed-only row grades both against a person.

{training_section(r.get('finetune'))}{label_review_section(r.get('label_review'))}## Calibration and threshold

Temperature {r['temperature']:.3f} (fitted on {r['validation_size']} validation items carved from train).
ECE on the holdout: {r['ece_before']:.4f} before, {r['ece_after']:.4f} after.
Threshold: {threshold}.
{_reviewed_threshold(r)}

![coverage-accuracy](coverage_accuracy.png) ![reliability](reliability.png)

## Worst classes

| label | precision | recall | F1 | support |
|---|---|---|---|---|
{worst}

![confusion](confusion_worst.png)

## Most frequent confusions (gold → predicted)

| gold | predicted | count |
|---|---|---|
{pairs}

## Serving

ONNX export: {r['export']['exporter']} — parity vs torch on the holdout: max |Δ logit|
{r['parity']['max_abs_logit_delta']:.2e}, argmax agreement {_pct(r['parity']['argmax_agreement'])}.
int8: {q['summary']}. Served graph: {r['served_onnx']}.
Triton verification: {r.get('triton_verify', {}).get('summary', 'not loaded (--no-load)')}.
"""


def write_model_card(out_dir: Path, report: dict[str, Any], curve: CoverageCurve, bins_before: list[ReliabilityBin],
                     bins_after: list[ReliabilityBin], labels: list[str], matrix: np.ndarray) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    t = report["threshold"]
    plot_coverage_accuracy(out_dir / "coverage_accuracy.png", curve, t["frontier_accuracy"], t["threshold"])
    plot_reliability(out_dir / "reliability.png", bins_before, bins_after, report["ece_before"], report["ece_after"])
    plot_confusion(out_dir / "confusion_worst.png", labels, matrix, worst_classes(report["holdout"]["per_class"]))
    card = out_dir / "model_card.md"
    card.write_text(render_markdown(report))
    return card
