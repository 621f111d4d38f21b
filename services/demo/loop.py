"""`make demo [TASK=banking77|hwu64|restaurant8k]`: the graduation loop, with the product doing every step.

The runner starts the product as `graduate up` (Kafka, Triton, router, review page, every worker,
the trainer, the frontier SIMULATOR), then only does what its users do: backend services send
traffic through the router with the `openai` SDK; a reviewer labels holdout items through the
review page's HTTP API until the gate has enough; a person approves the graduation there; once the
first model is registered, the reviewer checks the train labels it disputes (the page's list of
likeliest label errors) against the data set's gold, so the retrain trains on them. What
happens next — the trainer's own snapshot, the gate, shadow, cutover, the watch, the demotion, the
collection of data since the drift and the retrain (banking77) — the product decides; the runner narrates it from the topics
and writes demo-report/facts.json. It never trains, snapshots or decides anything itself.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import httpx
import openai

from services.common import catalog
from services.common.codec import Codec
from services.common.contracts import DeadLetter, ModelRegistered, RoutingDecision
from services.common.settings import REPO_ROOT, KafkaSettings
from services.common.reader import replay_topic
from services.common.tasks import ParseFailure, TaskSpec, load_tasks
from services.demo.loop_settings import LoopSettings
from services.demo.scenarios import Example, Scenario, scenario_named

GRADUATE = str(Path(sys.executable).with_name("graduate"))


def say(text: str) -> None:
    print(text, flush=True)


# --- the product, started as a user starts it -------------------------------------------------

@dataclass
class Product:
    env: dict[str, str]
    process: subprocess.Popen
    log: Path
    router: str
    review: str

    @classmethod
    def start(cls, s: LoopSettings, scenario: Scenario, env: dict[str, str]) -> "Product":
        router, review, sim, workers = s.ports_from, s.ports_from + 1, s.ports_from + 2, s.ports_from + 3
        args = [GRADUATE, "up", "--router-port", str(router), "--review-port", str(review), "--sim-port", str(sim),
                "--first-worker-port", str(workers), "--status-every-s", "30"]
        if not scenario.simulated_by_default:
            args += ["--sim-data", str(scenario.data_dir), "--sim-task", scenario.task]
        # the router's /metrics port from the demo's block too (its default 9464 may be another product's)
        env = {"GRADUATE_ROUTER_METRICS_PORT": str(s.ports_from + 9)} | env
        log = Path(env["GRADUATE_VAR_DIR"]) / "log" / "graduate-up.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            process = subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        product = cls(env, process, log, f"http://127.0.0.1:{router}", f"http://127.0.0.1:{review}")
        deadline = time.monotonic() + s.start_timeout_s
        while "graduate is up" not in product.output():
            if process.poll() is not None or time.monotonic() > deadline:
                product.stop()
                raise RuntimeError(f"graduate up did not start; {log}:\n{product.output()[-3000:]}")
            time.sleep(1.0)
        return product

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def graduate(self, *args: str) -> str:
        return subprocess.run([GRADUATE, *args], env=self.env, cwd=REPO_ROOT, check=True, capture_output=True,
                              text=True, timeout=120).stdout

    def key(self, name: str, task: str, role: str) -> str:
        printed = self.graduate("keys", "create", f"{name}-{uuid.uuid4().hex[:6]}", "--tasks", task, "--role", role)
        return re.search(r"\bgr_[\w-]+", printed).group(0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # graduate up stops everything it started
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


# --- what the topics say ------------------------------------------------------------------------

@dataclass
class Topics:
    """The task's models, routing history and the trainer's dead letters, as read so far."""

    kafka: KafkaSettings
    namespace: str
    task: str
    codec: Codec = field(default_factory=Codec)
    models: list[ModelRegistered] = field(default_factory=list)
    history: list[RoutingDecision] = field(default_factory=list)
    refusals: list[DeadLetter] = field(default_factory=list)

    async def refresh(self) -> None:
        """Read the three topics again; narrate what is new."""
        models = await self._read(catalog.MODELS, ModelRegistered)
        history = await self._read(catalog.ROUTING_HISTORY, RoutingDecision)
        letters = [d for d in await self._read(catalog.DEADLETTER, DeadLetter) if d.processor == "trainer"]
        for m in models[len(self.models):]:
            say(f"  model {m.version} registered: snapshot {m.snapshot_id}, holdout {m.holdout_size} "
                f"({m.gold_reviewed} reviewed), small {m.small_accuracy:.3f} vs frontier {m.frontier_accuracy:.3f}, "
                f"threshold {m.threshold}, coverage {m.coverage:.2f}")
        for d in history[len(self.history):]:
            say(f"  {d.ts:%H:%M:%S} {d.mode}{f' ({d.model_version})' if d.model_version else ''}: {d.reason[:220]}")
        for d in letters[len(self.refusals):]:
            say(f"  trainer refused a request: {d.reason[:300]}")
        self.models, self.history, self.refusals = models, history, letters

    async def _read(self, spec, model) -> list:
        replay = await replay_topic(self.kafka, self.codec, spec, self.namespace, model)
        return [r.value for r in replay.records if getattr(r.value, "task", self.task) == self.task]

    def graduation(self, since: Optional[datetime] = None) -> Optional[str]:
        """The latest graduation state on the history (written at or after `since`)."""
        notes = [json.loads(d.evidence or "{}") for d in self.history if since is None or d.ts >= since]
        states = [n.get("state") for n in notes if n.get("gate") == "graduation"]
        return states[-1] if states else None

    def mode(self) -> str:
        modes = [d.mode for d in self.history]
        return modes[-1] if modes else "frontier"

    def verdicts(self, gate: str) -> list[dict]:
        return [ev for ev in (json.loads(d.evidence or "{}") for d in self.history) if ev.get("gate") == gate]


async def wait_for(topics: Topics, done, timeout_s: float, every_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        await topics.refresh()
        if done():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every_s)


# --- traffic and reviews, as the product's users do them -----------------------------------------

@dataclass
class Traffic:
    client: openai.AsyncOpenAI
    spec: TaskSpec
    concurrency: int
    served: dict[str, Counter] = field(default_factory=dict)  # phase -> served_by counts
    correct: dict[str, Counter] = field(default_factory=dict)  # phase -> served_by -> right answers vs the gold

    async def send(self, phase: str, examples: list[Example]) -> None:
        gate = asyncio.Semaphore(self.concurrency)
        messages = [{"role": "system", "content": self.spec.prompt()}] if self.spec.system_prompt else []

        async def one(text: str, gold: str) -> None:
            async with gate:
                try:
                    answer = await self.client.chat.completions.create(
                        model="gpt-4o-mini", temperature=0, messages=[*messages, {"role": "user", "content": text}],
                        extra_headers={"X-Graduate-Task": self.spec.name})
                except openai.APIError as exc:
                    self.served.setdefault(phase, Counter())[f"error {type(exc).__name__}"] += 1
                    return
            by = ((answer.model_extra or {}).get("graduate") or {}).get("served_by", "frontier")
            self.served.setdefault(phase, Counter())[by] += 1
            self.correct.setdefault(phase, Counter())[by] += parsed(self.spec, answer) == gold

        await asyncio.gather(*(one(text, gold) for text, gold in examples))


def parsed(spec: TaskSpec, answer) -> Optional[str]:
    try:
        return spec.parse_output(answer.choices[0].message.content or "")
    except (ParseFailure, IndexError):
        return None


async def send_until(traffic: Traffic, topics: Topics, phase: str, examples: list[Example], chunk: int,
                     done, settle_s: float = 0.0) -> bool:
    """Send in chunks, looking at the topics after each; True once `done()` holds (waiting up to
    `settle_s` after the last chunk: the gates see the last comparisons a little later)."""
    for start in range(0, len(examples), chunk):
        await traffic.send(phase, examples[start:start + chunk])
        await topics.refresh()
        if done():
            return True
    return await wait_for(topics, done, settle_s)


async def review(product: Product, key: str, task: str, gold: dict[str, str], *, quiet: bool = False) -> int:
    """Label holdout items from the review queue with the data set's gold until the gate has enough
    (after a drift: until the page asks for no more reviews of the traffic since then)."""
    reviewed = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=product.review, headers=headers, timeout=60) as http:
        for _ in range(200):
            queue = (await http.get(f"/api/tasks/{task}/queue", params={"limit": 200})).json()
            needed = queue.get("reviews_needed")
            items = [i for i in queue["items"] if i["input"] in gold and i["review"] is None][:needed]
            if needed == 0 or not items:
                if not quiet or reviewed:
                    say(f"  reviewed {reviewed} items; the gate needs {needed} more")
                return reviewed
            for item in items:
                r = await http.post(f"/api/tasks/{task}/reviews",
                                    json={"call_id": item["call_id"], "label": gold[item["input"]]})
                reviewed += r.status_code == 200
            await asyncio.sleep(2.0)  # the page applies the reviews it follows on the topic
    return reviewed


async def check_disputed(http: httpx.AsyncClient, spec: TaskSpec, gold: dict[str, str], model: ModelRegistered,
                         wait_s: float = 60.0) -> dict:
    """Review the train labels `model` disputes, as listed on the review page, with the data set's gold
    (a gold label outside the task's labels is 'not in the label set'); how many, and how many the
    frontier had wrong. Nothing to do where the model's metrics list none (extraction, an older trainer).
    `http`: a client of the review page that sends the reviewer's key."""
    facts: dict[str, Any] = {"model_version": model.version, "listed": 0, "checked": 0, "frontier_wrong": 0,
                             "model_right": 0}
    if "label_review" not in json.loads(model.metrics_json or "{}"):
        say(f"  model {model.version} lists no disputed train labels")
        return facts
    deadline = time.monotonic() + wait_s
    while True:  # the page follows the models topic: wait until it shows this version's list
        disputed = (await http.get(f"/api/tasks/{spec.name}/disputed")).json()
        if disputed.get("model_version") == model.version or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    items = disputed["items"] if disputed.get("model_version") == model.version else []
    facts.update(disputed=disputed.get("disputed", 0), listed=len(items))
    for item in items:
        truth = gold.get(item["input"])
        if item["review"] is not None or truth is None:
            continue
        body = ({"call_id": item["call_id"], "label": truth} if truth in spec.answers
                else {"call_id": item["call_id"], "verdict": "not_in_label_set"})
        r = await http.post(f"/api/tasks/{spec.name}/reviews", json=body)
        if r.status_code != 200:
            say(f"  the page refused a review of {item['call_id']}: {r.status_code} {r.text[:200]}")
            continue
        facts["checked"] += 1
        facts["frontier_wrong"] += item["label"] != truth
        facts["model_right"] += item["model_label"] == truth
    say(f"  checked {facts['checked']} of the {facts['listed']} train labels model {model.version} disputes: "
        f"the frontier had {facts['frontier_wrong']} wrong, the model was right on {facts['model_right']}")
    return facts


# --- the run -------------------------------------------------------------------------------------

async def graduate_once(s: LoopSettings, product: Product, topics: Topics, traffic: Traffic, test: list[Example],
                        facts: dict) -> bool:
    """Wait for the next model (or the trainer's refusal), then its gates while sending `test`; True once small."""
    seen, refused = len(topics.models), len(topics.refusals)
    got = await wait_for(topics, lambda: len(topics.models) > seen or len(topics.refusals) > refused,
                         s.train_timeout_s, every_s=10.0)
    if not got or len(topics.models) == seen:
        say("  no model registered" + (f": {topics.refusals[-1].reason}" if topics.refusals else " in time"))
        return False
    model = topics.models[-1]
    manifest = Path(product.env["GRADUATE_VAR_DIR"]) / "datasets" / model.task / model.snapshot_id / "manifest.json"
    written = json.loads(manifest.read_text()) if manifest.exists() else {}
    facts["models"].append({"version": model.version, "snapshot_id": model.snapshot_id,
                            "snapshot_by_curator_code": written.get("snapshot_id") == model.snapshot_id,
                            # train rows a person labelled (the disputed labels checked after the first model)
                            "reviewed_train_rows": (written.get("reviewed") or {}).get("train"),
                            "retrain_request_id": model.retrain_request_id, "small_accuracy": model.small_accuracy,
                            "frontier_accuracy": model.frontier_accuracy, "threshold": model.threshold,
                            "coverage": model.coverage})
    verdict = lambda: [v for v in topics.verdicts("offline") if v.get("candidate") == model.version]  # noqa: E731
    await wait_for(topics, lambda: bool(verdict()), s.decision_timeout_s)
    if topics.mode() != "shadow" or not verdict() or verdict()[-1].get("verdict") == "refused":
        say(f"  the offline gate did not send {model.version} to shadow")
        return False
    small = lambda: topics.mode() == "small" and topics.history[-1].model_version == model.version  # noqa: E731
    return await send_until(traffic, topics, f"shadow {model.version}", test, s.chunk, small, s.settle_s)


async def collect(s: LoopSettings, product: Product, topics: Topics, traffic: Traffic, examples: list[Example],
                  reviewer: str, gold: dict[str, str], facts: dict) -> bool:
    """After the demotion: traffic goes on and the reviewer answers what the page asks for, until the
    controller has enough data since the drift and asks for the retrain itself."""
    demotion = [d.ts for d in topics.history if json.loads(d.evidence or "{}").get("verdict") == "demoted"][-1]
    asked = lambda: topics.graduation(since=demotion) == "training"  # noqa: E731 - not the first model's note
    reviewed = 0
    for start in range(0, len(examples), s.chunk):
        await traffic.send("collecting", examples[start:start + s.chunk])
        reviewed += await review(product, reviewer, traffic.spec.name, gold, quiet=True)
        await topics.refresh()
        if asked():
            break
    else:
        await wait_for(topics, asked, s.ready_wait_s)
    facts["after_drift"] = {"calls": sum(traffic.served.get("collecting", Counter()).values()), "reviewed": reviewed,
                            "retrain_requested": asked()}
    return asked()


async def run(s: LoopSettings) -> dict:
    scenario = scenario_named(s.scenario)
    namespace = f"demo{uuid.uuid4().hex[:8]}."
    env = {**os.environ, "GRADUATE_TOPIC_NAMESPACE": namespace, "HF_HUB_OFFLINE": "1"}
    env.setdefault("GRADUATE_VAR_DIR", str(REPO_ROOT / "var"))
    spec = load_tasks(REPO_ROOT / "config" / "tasks.yaml").get(scenario.task)
    train, test = scenario.examples("train", s.labels, s.seed), scenario.examples("test", s.labels, s.seed)
    gold = dict(train + test)
    before = [e for e in train if e[1] not in scenario.launch]
    launch_train = [e for e in train if e[1] in scenario.launch]
    test_before = [e for e in test if e[1] not in scenario.launch]
    facts: dict[str, Any] = {"scenario": scenario.name, "task": scenario.task, "namespace": namespace,
                             "frontier": "SIMULATED (graduate frontier-sim), not a real LLM", "models": []}
    started, topics, traffic = time.monotonic(), None, None
    say(f"1 start the product (graduate up, topics under {namespace})")
    product = Product.start(s, scenario, env)
    try:
        topics = Topics(KafkaSettings(bootstrap=env.get("GRADUATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")), namespace,
                        scenario.task)
        client = openai.AsyncOpenAI(base_url=f"{product.router}/v1", max_retries=2, timeout=60.0,
                                    api_key=product.key("demo-backend", scenario.task, "service"))
        traffic = Traffic(client, spec, s.concurrency)
        say(f"2 capture: {min(s.capture_calls, len(before))} calls through the router (openai SDK)")
        await traffic.send("capture", before[:s.capture_calls])
        say("3 review holdout items on the review page until the gate has enough")
        reviewer = product.key("demo-reviewer", scenario.task, "reviewer")
        facts["reviewed"] = await review(product, reviewer, scenario.task, gold)
        say("4 wait for the controller to call the task ready, then approve on the review page")
        ready = await wait_for(topics, lambda: topics.graduation() in ("ready", "training"), s.ready_wait_s)
        facts["ready_before_approval"] = {"ready": ready, "state": topics.graduation()}
        if topics.graduation() != "training":
            async with httpx.AsyncClient(base_url=product.review, timeout=30) as http:
                key = product.key("demo-approver", scenario.task, "reviewer")
                r = await http.post(f"/api/tasks/{scenario.task}/approve", headers={"Authorization": f"Bearer {key}"})
                say(f"  approved: {r.json().get('kind')} model requested ({r.status_code})")
        say("5 the trainer snapshots the topics itself and trains; the gates decide")
        # shadow traffic: test inputs, then unsent train inputs where the test split is short (HWU64)
        shadow = (test_before + before[s.capture_calls:])[:s.shadow_calls]
        small = await graduate_once(s, product, topics, traffic, shadow, facts)
        if topics.models:
            say("  check the train labels the first model disputes on the review page (the retrain trains on them)")
            async with httpx.AsyncClient(base_url=product.review, headers={"Authorization": f"Bearer {reviewer}"},
                                         timeout=60) as http:
                facts["disputed_checked"] = await check_disputed(http, spec, gold, topics.models[0])
        rest = test_before[s.shadow_calls:]
        if small and scenario.launch:
            say("6 small mode, then the launch: intents the model never saw")
            await traffic.send("small", rest[:s.small_calls])
            # the old intents go on beside the launch: inputs the product never saw (test, then unsent train)
            old = rest[s.small_calls:] + before[s.capture_calls:]
            launch = launch_train[:int(s.drift_calls * s.drift_share)]
            n_old = round(len(launch) * (1 - s.drift_share) / s.drift_share)
            mixed = launch + old[:n_old]
            random.Random(s.seed).shuffle(mixed)
            demoted = lambda: bool([v for v in topics.verdicts("watch") if v.get("verdict") == "demoted"])  # noqa: E731
            facts["demoted"] = await send_until(traffic, topics, "drift", mixed, s.chunk, demoted)
            if facts["demoted"]:
                say("7 the controller collects data since the drift; traffic goes on, the reviewer answers the page")
                sent = sum(traffic.served.get("drift", Counter()).values())
                if await collect(s, product, topics, traffic, mixed[sent:], reviewer, gold, facts):
                    say("8 the controller asked for the retrain; the trainer takes a fresh snapshot (it holds the launch)")
                    launch_test = [e for e in test if e[1] in scenario.launch]
                    regate = launch_test + old[n_old:n_old + round(len(launch_test) * (1 - s.drift_share)
                                                                   / s.drift_share)]
                    random.Random(s.seed).shuffle(regate)
                    small = await graduate_once(s, product, topics, traffic, regate, facts)
                else:
                    say("  the controller did not ask for a retrain: too little data since the drift")
                    small = False
        facts["small_at_end"] = small
    finally:
        say("9 stop the product")
        product.stop()
    facts.update(wall_s=round(time.monotonic() - started, 1), served=traffic.served if traffic else {},
                 correct=traffic.correct if traffic else {},
                 decisions=[{"ts": d.ts.isoformat(), "mode": d.mode, "model_version": d.model_version,
                             "reason": d.reason} for d in topics.history] if topics else [])
    return facts


def _interrupt(signum, frame) -> None:  # noqa: ARG001 - a TERM stops the run like Ctrl-C: the product too
    raise KeyboardInterrupt


def main() -> None:
    s = LoopSettings()
    signal.signal(signal.SIGTERM, _interrupt)
    facts = asyncio.run(run(s))
    s.report_dir.mkdir(parents=True, exist_ok=True)
    (s.report_dir / "facts.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")
    say(f"facts in {s.report_dir / 'facts.json'}; wall time {facts['wall_s']} s; small at the end: "
        f"{facts.get('small_at_end')}; models: {[(m['version'], m['snapshot_id']) for m in facts['models']]}")
    sys.exit(0 if facts.get("small_at_end") else 1)


if __name__ == "__main__":
    main()
