"""The demo's steps that are not traffic: the simulated review, the pre-launch training snapshot,
asking the small model directly for the gold evaluation, and reading the services' CLIs' JSON.
"""
from __future__ import annotations

import asyncio
import json
import random
import subprocess
from pathlib import Path
from typing import Any, Optional, Sequence

import openai
import pyarrow.parquet as pq

from services.common import catalog
from services.common.codec import Codec
from services.common.contracts import ReviewedLabel
from services.common.kafka import delete_topics, make_producer
from services.common.normalize import split_of
from services.common.settings import KafkaSettings
from services.common.triton import SmallAnswer, SmallModelClient
from services.common.tasks import TaskSpec
from services.demo.replay import CallResult, parse
from services.demo.traffic import PlannedCall
from trainer import snapshot as snap

REVIEWER = "demo-simulated-review (Banking77 gold label)"


def holdout_calls(results: Sequence[CallResult], task: str, holdout_fraction: float) -> list[CallResult]:
    """Captured calls of `task` that the curator's deterministic split puts in the holdout."""
    return [r for r in results if r.ok and r.call.task == task and r.call.gold is not None
            and split_of(task, r.call.text, holdout_fraction) == "holdout"]


def choose_reviewed(holdout: Sequence[CallResult], share: float, seed: int) -> list[CallResult]:
    rng = random.Random(seed)
    return rng.sample(list(holdout), round(len(holdout) * share))


def reviewed_labels(chosen: Sequence[CallResult]) -> list[ReviewedLabel]:
    """Banking77's own label for each chosen call, as a person's review would record it."""
    return [ReviewedLabel(call_id=r.call.call_id, task=r.call.task, verdict="label", label=r.call.gold,
                          reviewer=REVIEWER, note="simulated review: the label is Banking77's own (gold)")
            for r in chosen]


async def publish_reviews(kafka: KafkaSettings, codec: Codec, namespace: str, labels: Sequence[ReviewedLabel]) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        topic = catalog.topic_name(catalog.LABELS_REVIEWED, namespace)
        futures = [await producer.send(topic, codec.encode(label), key=label.call_id.encode()) for label in labels]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def derive_prelaunch_snapshot(datasets_dir: Path, task: str, snapshot_id: str, before_launch: Sequence[str],
                              held_out: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """A copy of the snapshot whose label set is the task's before the launch (the intents in use then):
    the launch's intents are not labels yet, so rows labelled with them — only the frontier's mistakes
    can be, no such input was ever sent — are dropped. Returns the new snapshot id and what was dropped."""
    folder = snap.snapshot_dir(datasets_dir, task, snapshot_id)
    manifest = json.loads((folder / snap.MANIFEST).read_text())
    in_use = set(before_launch)
    labels = [label for label in manifest["labels"] if label in in_use]
    kept, dropped, unparsed = {}, {}, 0
    for name in snap.SPLITS:
        table = pq.read_table(folder / f"{name}.parquet")
        columns = {c: table.column(c).to_pylist() for c in snap.COLUMNS}
        # A reviewed call whose frontier answer did not parse has no frontier label: the frontier
        # was wrong there, which an empty label (never a task label) says to the evaluation.
        unparsed += sum(v is None for v in columns["frontier_label"])
        columns["frontier_label"] = ["" if v is None else v for v in columns["frontier_label"]]
        split = snap.Split(*(columns[c] for c in snap.COLUMNS))
        rows = [i for i, label in enumerate(split.label) if label in in_use]
        kept[name] = split.take(rows)
        dropped[name] = len(split) - len(rows)
    new_id = f"{snapshot_id}-prelaunch"
    info = {"dropped_rows": dropped, "labels": len(labels), "held_out_labels": sorted(held_out),
            "frontier_unparsed": unparsed,
            "counts": {"train": len(kept["train"]), "holdout": len(kept["holdout"])},
            "reviewed": {"train": sum(kept["train"].reviewed), "holdout": sum(kept["holdout"].reviewed)}}
    if not snap.snapshot_dir(datasets_dir, task, new_id).exists():
        source = {"derived_from": snapshot_id, "why": "the task's label set before the launch (the intents in use)",
                  **info, "original_source": manifest.get("source")}
        snap.write_snapshot(datasets_dir, task, new_id, labels, kept["train"], kept["holdout"], source)
    return new_id, info


def snapshot_facts(folder: Path, launch: Sequence[str]) -> dict[str, Any]:
    """What a curator snapshot holds of the launch's intents, and the frontier's accuracy on its reviewed
    holdout (the gold the trainer grades on): the evidence that a retrain can learn the new intents."""
    launch_set = set(launch)
    out: dict[str, Any] = {"launch_rows": {}, "launch_reviewed": {}}
    for name in snap.SPLITS:
        table = pq.read_table(folder / f"{name}.parquet", columns=["label", "frontier_label", "reviewed"])
        labels, frontier, reviewed = (table.column(c).to_pylist() for c in ("label", "frontier_label", "reviewed"))
        out["launch_rows"][name] = sum(label in launch_set for label in labels)
        out["launch_reviewed"][name] = sum(label in launch_set and r for label, r in zip(labels, reviewed))
        if name == "train":
            out["labels_with_train_rows"] = len(set(labels))
        else:
            graded = [(label, f) for label, f, r in zip(labels, frontier, reviewed) if r]
            out["reviewed_holdout"] = len(graded)
            out["frontier_accuracy_reviewed"] = (sum(label == f for label, f in graded) / len(graded)
                                                 if graded else None)
    return out


async def ask_small_model(grpc_url: str, model: str, version: Optional[str], texts: Sequence[str],
                          batch: int = 32) -> list[SmallAnswer]:
    """The small model's label and confidence for each text, straight from Triton (no router)."""
    client = SmallModelClient(grpc_url, timeout_s=30.0)
    try:
        answers: list[SmallAnswer] = []
        for i in range(0, len(texts), batch):
            got, _ = await client.classify(model, version, list(texts[i:i + batch]))
            answers += got
        return answers
    finally:
        await client.close()


async def ask_frontier(sim_url: str, task: TaskSpec, calls: Sequence[PlannedCall], concurrency: int) -> dict[str, Optional[str]]:
    """The frontier SIMULATOR's parsed answer to each call, asked directly (no router, nothing captured)."""
    client = openai.AsyncOpenAI(base_url=f"{sim_url}/v1", api_key="simulator", max_retries=2, timeout=60.0)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(call: PlannedCall) -> tuple[str, Optional[str]]:
        messages = [{"role": "system", "content": task.prompt()}, {"role": "user", "content": call.text}]
        async with semaphore:
            completion = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, temperature=0,
                                                              extra_headers={"X-Graduate-Task": task.name})
        return call.call_id, parse(task, completion.choices[0].message.content or "")

    try:
        return dict(await asyncio.gather(*(one(c) for c in calls)))
    finally:
        await client.close()


async def delete_namespace(kafka: KafkaSettings, namespace: str) -> None:
    """Delete every topic of a run's own namespace (catalog topics and the workers' internal ones)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka.client_config())
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(namespace)]
    finally:
        await admin.close()
    if names:
        await delete_topics(kafka, names)


def run_json(argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 300.0) -> tuple[Any, str]:
    """Run a graduate CLI that prints JSON on stdout; (parsed, stderr). RuntimeError with the output on failure."""
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    out = proc.stdout
    start = min([i for i in (out.find("{"), out.find("[")) if i >= 0], default=-1)
    if start < 0:
        raise RuntimeError(f"{' '.join(argv[1:])} printed no JSON:\n{out[-2000:]}")
    return json.loads(out[start:]), proc.stderr
