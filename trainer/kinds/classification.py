"""Classification: a sequence-classification head over the task's labels, served as label +
confidence + class probabilities (trainer.triton_model)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from trainer import calibrate, disputes, evaluate, export, model_card, scope, snapshot as snap, triton_repo
from trainer.kinds import Evaluation, TrainingRefused
from trainer.settings import TrainerSettings
from trainer.threshold import REQUEST


def select_rows(data: snap.Snapshot, settings: TrainerSettings) -> tuple[list[str], snap.Split, snap.Split]:
    """Labels to train on, and train/holdout restricted to them (and capped by max_examples)."""
    labels = data.labels[:settings.labels_subset] if settings.labels_subset else data.labels
    keep = set(labels) | ({data.out_of_scope_label} if data.out_of_scope_label else set())
    train = data.train.take([i for i, label in enumerate(data.train.label) if label in keep])
    holdout = data.holdout.take([i for i, label in enumerate(data.holdout.label) if label in keep])
    if settings.max_examples and len(train) > settings.max_examples:
        rng = np.random.default_rng(settings.seed)
        train = train.take(sorted(rng.choice(len(train), settings.max_examples, replace=False).tolist()))
    return labels, train, holdout


class Classification:
    name = "classification"
    export_task = "text-classification"
    install_args: dict[str, Any] = {}

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.index: dict[str, int] = {}
        self._fp32_holdout: Optional[np.ndarray] = None
        self._served_holdout: Optional[np.ndarray] = None

    def select(self, data: snap.Snapshot, settings: TrainerSettings) -> tuple[snap.Split, snap.Split]:
        self.labels, train, holdout = select_rows(data, settings)
        self.out_of_scope_label = data.out_of_scope_label
        self.classes = scope.class_labels(self.labels, data.out_of_scope_label, train.label)
        if len(self.classes) == len(self.labels):  # too few out-of-scope rows to learn from: not trained on
            train = train.take([i for i, x in enumerate(train.label) if x in set(self.labels)])
        self.index = {label: i for i, label in enumerate(self.classes)}
        return train, holdout

    def plan(self, settings: TrainerSettings, base_model: Path, train: snap.Split):
        from trainer.finetune import pick_device, token_lengths
        from trainer.recipe import choose_recipe

        self.recipe = choose_recipe(settings, n_train=len(train), n_labels=len(self.classes),
                                    device=pick_device(settings.device).type,
                                    token_lengths=token_lengths(base_model, train.input))
        return self.recipe

    def describe(self, settings: TrainerSettings, base_model: Path, train: snap.Split, val: snap.Split,
                 holdout: snap.Split) -> str:
        return (f"{len(train)} train, {len(val)} validation, {len(holdout)} holdout ({sum(holdout.reviewed)} "
                f"reviewed), {len(self.labels)} labels"
                + (f" + out-of-scope class {self.classes[-1]!r}" if len(self.classes) > len(self.labels) else ""))

    def sizes(self, train: snap.Split, val: snap.Split) -> tuple[int, int]:
        return len(train), len(val)

    def finetune(self, settings: TrainerSettings, base_model: Path, train: snap.Split, val: snap.Split, console):
        from trainer.finetune import finetune

        return finetune(train.input, self._ids(train.label), val.input, self._ids(val.label), self.classes,
                        recipe=self.recipe, base_model=base_model, seed=settings.seed, device=settings.device,
                        threads=settings.threads, console=console)

    def torch_logits(self, settings: TrainerSettings, tuned, holdout: snap.Split) -> np.ndarray:
        from trainer.finetune import predict_logits

        return predict_logits(tuned.model, tuned.tokenizer, holdout.input, self.recipe.max_length, tuned.device)

    def disputes(self, settings: TrainerSettings, tuned, train: snap.Split):
        """(the label_review record published with the model, every disputed item): the train rows,
        validation carve included, whose label the fine-tuned model does not answer (trainer/disputes.py)."""
        from trainer.finetune import predict_logits

        logits = predict_logits(tuned.model, tuned.tokenizer, train.input, self.recipe.max_length, tuned.device)
        return disputes.label_review(calibrate.softmax(logits), self._ids(train.label), self.classes, train)

    def meta(self) -> dict[str, Any]:
        return {"out_of_scope_label": self.classes[-1]} if len(self.classes) > len(self.labels) else {}

    def stage(self, settings: TrainerSettings, stage: Path, onnx_file: Path, tokenizer, meta: dict[str, Any]):
        from trainer.triton_model import TextClassifier

        triton_repo.stage_version(stage, onnx_file, tokenizer, self.classes, 1.0, meta)
        return TextClassifier(stage, threads=settings.threads or 0)

    def parity(self, settings: TrainerSettings, torch_holdout: np.ndarray, fp32, holdout: snap.Split) -> dict:
        self._fp32_holdout = self._served_holdout = fp32.logits(holdout.input)
        return export.parity(torch_holdout, self._fp32_holdout, settings.parity_max_logit_delta,
                             settings.parity_min_agreement)

    def quantize(self, settings: TrainerSettings, run_dir: Path, stage: Path, fp32,
                 holdout: snap.Split) -> tuple[Any, dict[str, Any]]:
        """Dynamic int8, kept when holdout accuracy drops by at most the bound."""
        from trainer.triton_model import TextClassifier

        gold = self._gold(holdout.label)
        acc_fp32 = float(np.mean(self._fp32_holdout.argmax(1) == gold))
        int8_path = export.quantize_int8(stage / "model.onnx", run_dir / "onnx" / "model.int8.onnx")
        shutil.copyfile(int8_path, stage / "model.int8.onnx")
        int8 = TextClassifier(stage, onnx_file="model.int8.onnx", threads=settings.threads or 0)
        int8_holdout = int8.logits(holdout.input)
        acc_int8 = float(np.mean(int8_holdout.argmax(1) == gold))
        drop = acc_fp32 - acc_int8
        kept = drop <= settings.int8_max_accuracy_drop
        (stage / "model.int8.onnx").unlink()
        quant = {"tried": True, "kept": kept, "accuracy_fp32": acc_fp32, "accuracy_int8": acc_int8,
                 "accuracy_drop": drop, "max_drop": settings.int8_max_accuracy_drop,
                 "argmax_agreement_with_fp32": float(np.mean(int8_holdout.argmax(1) == self._fp32_holdout.argmax(1))),
                 "summary": f"{'kept' if kept else 'rejected'} — holdout accuracy {acc_int8:.4f} vs fp32 "
                            f"{acc_fp32:.4f} (drop {drop:+.4f}, bound {settings.int8_max_accuracy_drop:.4f})"}
        if kept:
            self._served_holdout = int8_holdout
            return int8, quant
        return fp32, quant

    def fit_temperature(self, served, val: snap.Split) -> tuple[float, float]:
        """(T fitted on the validation slice, validation accuracy of the served model)."""
        logits = served.logits(val.input)
        gold = np.array(self._ids(val.label))
        accuracy = float(np.mean(logits.argmax(1) == gold)) if len(gold) else 0.0
        return calibrate.fit_temperature(logits, gold), accuracy

    def evaluate(self, settings: TrainerSettings, served, holdout: snap.Split, temperature: float) -> Evaluation:
        gold = self._gold(holdout.label)
        before = calibrate.softmax(self._served_holdout)
        after = calibrate.softmax(self._served_holdout, temperature)
        predicted_idx, confidence = scope.in_scope_answers(after, len(self.labels))  # never the out-of-scope class
        confidence_before = scope.in_scope_answers(before, len(self.labels))[1]
        predicted = [self.labels[i] for i in predicted_idx]
        report = evaluate.evaluate_holdout(self.classes, holdout.label, holdout.frontier_label, holdout.reviewed,
                                           predicted)
        small_ok = predicted_idx == gold
        frontier_ok = np.array(holdout.frontier_label) == np.array(holdout.label)
        self._confusion = evaluate.confusion_matrix(self.classes, holdout.label, predicted)
        self._holdout, self._confidence = holdout, confidence
        return Evaluation(report, confidence, confidence_before, small_ok, frontier_ok, predicted,
                          list(holdout.frontier_label), {REQUEST: (small_ok, frontier_ok)})

    def gate_extras(self, ev: Evaluation, on: np.ndarray, threshold: Optional[float],
                    settings: TrainerSettings) -> dict[str, Any]:
        """Per frontier answer: holdout items and how many fall below the threshold (every item:
        confidence needs no gold), so the controller can predict the fallback rate of another label
        mix (the traffic after a drift)."""
        out: dict[str, list[int]] = {}
        for label, confidence in zip(ev.frontier, ev.confidence):
            held = out.setdefault(str(label), [0, 0])
            held[0] += 1
            held[1] += int(threshold is None or confidence < threshold)
        return {"fallback_by_label": dict(sorted(out.items()))}

    def verify(self, settings: TrainerSettings, name: str, version: int, version_dir: Path, sample: list[str],
               torch_holdout: np.ndarray) -> dict[str, Any]:
        from trainer.triton_model import TextClassifier

        classifier = TextClassifier(version_dir)
        answers = [classifier.classify([text]) for text in sample]  # one at a time, as triton_repo.verify asks
        expected_labels = [labels[0] for labels, _, _ in answers]
        expected_probs = np.concatenate([probs for _, _, probs in answers]) if answers else np.zeros((0, 0))
        check = triton_repo.verify(settings.triton_http_url, name, version, sample, expected_labels, expected_probs)
        torch_agree = float(np.mean(torch_holdout[:len(sample)].argmax(1) == np.array(self._ids(expected_labels))))
        return check | {"argmax_agreement_with_torch": torch_agree,
                        "summary": f"Triton answered {check['n']} holdout texts exactly like the trainer (max |Δp| "
                                   f"{check['max_abs_prob_delta']:.1e}); argmax agreement with torch {torch_agree:.4f}"}

    def model_card(self, settings: TrainerSettings, run_dir: Path, report: dict[str, Any], curve, ev: Evaluation,
                   version_dir: Path) -> tuple[Path, Path]:
        """(the card in the run folder, its copy in the version folder)."""
        bins = settings.ece_bins
        card = model_card.write_model_card(
            run_dir, report, curve, calibrate.reliability_bins(ev.confidence_before, ev.small_ok, bins),
            calibrate.reliability_bins(ev.confidence, ev.small_ok, bins), self.classes, self._confusion)
        for file in ("model_card.md", *model_card.PLOTS):
            shutil.copyfile(run_dir / file, version_dir / file)
        return card, version_dir / "model_card.md"

    def report_extras(self, threshold: Optional[float]) -> dict[str, Any]:
        """The labels, and how the model treats the holdout's out-of-scope inputs at the threshold."""
        label = self.out_of_scope_label
        is_oos = (np.array([x == label for x in self._holdout.label], dtype=bool) if label
                  else np.zeros(len(self._holdout), bool))
        return {"labels": self.labels, "out_of_scope": {
            "label": label, "class_trained": len(self.classes) > len(self.labels), "holdout_items": int(is_oos.sum()),
            "served_share": scope.served_share(self._confidence, is_oos, threshold)}}

    def metrics_extras(self, report: dict[str, Any]) -> dict[str, Any]:
        return {"out_of_scope": report["out_of_scope"]}

    def _gold(self, labels) -> np.ndarray:
        """Class index of each gold label (-1: not a class, e.g. out of scope without its class)."""
        return np.array([self.index.get(x, -1) for x in labels])

    def _ids(self, labels) -> list[int]:
        try:
            return [self.index[x] for x in labels]
        except KeyError as e:
            raise TrainingRefused(f"label {e} is not one of the task's labels") from e
