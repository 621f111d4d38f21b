"""The real small model bench_router.py measures: all-MiniLM-L6-v2 fine-tuned by the product's
trainer (trainer.pipeline.train_task) on a Banking77 slice, staged once as fp32 and int8 and cached
under <GRADUATE_VAR_DIR>/bench/router-model (delete the folder to retrain).

    .venv/bin/python bench/router_model.py     # train and cache now (about a minute on 2 cores)

A slice, not the whole data set, so the bench stays short: the latency of a MiniLM forward pass
depends on the tokens of the input, not on how many labels the head has or how well it learned.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASK = "banking77-intent"
LABELS = 12  # the slice: the first 12 intents, 40 training texts each
PER_LABEL_TRAIN = 40
MAX_LENGTH = 64  # covers every Banking77 test text (the longest is 79 words, most under 20 tokens)
VARIANTS = ("fp32", "int8")


def cache_dir(var_dir: Path) -> Path:
    return Path(var_dir) / "bench" / "router-model"


def cached_models(var_dir: Path, model_repository: Path, triton_http_url: str) -> dict[str, Path]:
    """{variant: staged version folder}, training and quantising first when the cache is empty (the
    trainer loads what it trained into the running Triton to verify it; it is removed after)."""
    root = cache_dir(var_dir)
    staged = {v: root / v for v in VARIANTS}
    if not all((p / "version.json").exists() for p in staged.values()):
        train_and_stage(root, model_repository, triton_http_url)
    return staged


def train_and_stage(root: Path, model_repository: Path, triton_http_url: str) -> None:
    from rich.console import Console

    from trainer import export
    from trainer.dataset_from_banking77 import build_banking77_snapshot
    from trainer.pipeline import train_task
    from trainer.settings import TrainerSettings

    work = Path(tempfile.mkdtemp(prefix="graduate-bench-model-"))
    name = f"bench-router-train-{uuid.uuid4().hex[:6]}"
    try:
        build_banking77_snapshot(work / "datasets", TASK, ROOT / "data" / "banking77", labels_subset=LABELS,
                                 per_label_train=PER_LABEL_TRAIN, per_label_holdout=20, reviewed_share=0.3)
        settings = TrainerSettings(var_dir=work, model_repository=model_repository, triton_http_url=triton_http_url,
                                   triton_model=name,
                                   epochs=2, max_length=MAX_LENGTH, batch_size=16, learning_rate=3e-4,
                                   validation_fraction=0.15, quantize=False, device="cpu", threads=1,
                                   verify_examples=16)
        run = train_task(settings, TASK, "latest", Console(stderr=True, width=120))
        shutil.rmtree(root, ignore_errors=True)
        fp32, int8 = root / "fp32", root / "int8"
        shutil.copytree(run.version_dir, fp32)
        shutil.copytree(run.version_dir, int8)
        export.quantize_int8(fp32 / "model.onnx", int8 / "model.onnx")
        for variant, folder in (("fp32", fp32), ("int8", int8)):
            meta = json.loads((folder / "version.json").read_text())
            (folder / "version.json").write_text(json.dumps(meta | {"onnx": variant}, indent=2, sort_keys=True) + "\n")
        (root / "trained.json").write_text(json.dumps({
            "task": TASK, "labels": LABELS, "per_label_train": PER_LABEL_TRAIN, "max_length": MAX_LENGTH,
            "holdout_small_accuracy": run.report["holdout"].get("small_accuracy"),
            "train_wall_s": run.report.get("timings", {}).get("total_s")}, indent=2) + "\n")
    finally:
        from tests.support_triton import unload_and_remove

        unload_and_remove(triton_http_url, model_repository, name)
        shutil.rmtree(work, ignore_errors=True)


def install(staged: Path, repository: Path, name: str, queue_delay_us: int | None = None,
            instances: int | None = None, threads: str | None = None, parallel: str | None = None) -> None:
    """Lay the staged version out as <repository>/<name>/1 with the trainer's own config.pbtxt and the
    trainer's current model.py; for comparison, another dynamic-batching delay (`queue_delay_us`), instance
    count (`instances`), onnxruntime threads per run (`threads`: "0" is onnxruntime's default) or concurrent
    onnxruntime runs per batch (`parallel`: "1" runs a batch in one call)."""
    from trainer import triton_repo

    shutil.rmtree(repository / name, ignore_errors=True)
    shutil.copyfile(triton_repo.MODEL_PY, staged / "model.py")
    triton_repo.lay_out_version(staged, repository, name, "cpu")
    config = repository / name / "config.pbtxt"
    for value, ours, theirs in (
            (queue_delay_us, f"max_queue_delay_microseconds: {triton_repo.QUEUE_DELAY_US} ",
             f"max_queue_delay_microseconds: {queue_delay_us} "),
            (instances, f"count: {triton_repo.CPU_INSTANCES} ", f"count: {instances} "),
            (threads, f'"intra_op_threads" value {{ string_value: "{triton_repo.CPU_INTRA_OP_THREADS}"',
             f'"intra_op_threads" value {{ string_value: "{threads}"'),
            (parallel, f'"parallel_runs" value {{ string_value: "{triton_repo.CPU_PARALLEL_RUNS}"',
             f'"parallel_runs" value {{ string_value: "{parallel}"')):
        if value is not None:
            assert ours in config.read_text(), config.read_text()
            config.write_text(config.read_text().replace(ours, theirs))


if __name__ == "__main__":
    from services.common.settings import CommonSettings

    common = CommonSettings()
    print(cached_models(common.var_dir, common.model_repository, common.triton_http_url))
