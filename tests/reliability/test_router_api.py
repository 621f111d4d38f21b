"""The router as a real process (`graduate serve router`, a keys file, the simulator behind it) under
hostile callers and a failing frontier:

- API keys on every route but health and readiness (/metrics has a port of its own, /openapi.json
  needs a key, /docs and /redoc are off); reviewer vs service roles (router and
  review page); no raw key in the router's log, even at debug level with the access log on;
- schemathesis against the router's OpenAPI: no 5xx, every 4xx with a message;
- the frontier answering 500, 429 with Retry-After, hanging, or with garbage: the 429 retried within
  the budget, each answered as the provider would (429, 500, 504, 502), nothing captured as a label;
- a restarted router is ready only after it replayed the routing topic, and then serves in the last
  decided mode.
"""
from __future__ import annotations

import asyncio
import secrets
import time
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from services.common import catalog
from services.common.catalog import topic_name
from services.common.contracts import CapturedCall, RouterOutcome, RoutingDecision
from services.common.kafka import delete_topics, ensure_topics, make_producer
from services.common.settings import REPO_ROOT
from services.common.tasks import load_tasks
from services.router.keys import create_key
from tests.reliability.support import SECRET, TASK, Proc, Tally, knob, poll, router, scrape, simulator, until
from tests.support import decode_all, read_topic

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

PUBLIC = {"/healthz", "/readyz"}
FASTAPI_DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
LABELS = set(load_tasks(REPO_ROOT / "config" / "tasks.yaml").get(TASK).labels)
PRESENTED: set[str] = set()  # every key any test sent: none may appear in a log


class Api:
    def __init__(self, namespace, kafka, folder, triton_grpc) -> None:
        self.namespace, self.kafka, self.folder, self.triton_grpc = namespace, kafka, folder, triton_grpc
        keys = folder / "keys.json"
        self.keys_file = keys
        self.service = create_key(keys, "billing-service")
        self.drafts_only = create_key(keys, "drafts-only", tasks=("draft-reply",))
        self.reviewer = create_key(keys, "ana", role="reviewer")
        PRESENTED.update({self.service, self.drafts_only, self.reviewer})
        self.sim = simulator(folder)
        self.router = router(folder, kafka=kafka, namespace=namespace, frontier_url=self.sim.url + "/v1",
                             triton_grpc=triton_grpc, keys_file=keys, log_level="debug", access_log=True,
                             GRADUATE_FRONTIER_MAX_RETRIES="2", GRADUATE_FRONTIER_RETRY_BUDGET_S="10")
        self.procs: list[Proc] = [self.sim, self.router]

    def client(self, key: str | None = None, url: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=url or self.router.url, headers=headers, timeout=30)

    def topic(self, spec) -> str:
        return topic_name(spec, self.namespace)


@pytest.fixture(scope="module")
def api(tmp_path_factory, kafka_settings, triton_urls):
    namespace = f"t{uuid.uuid4().hex[:10]}."
    asyncio.run(ensure_topics(kafka_settings, namespace))
    a = Api(namespace, kafka_settings, tmp_path_factory.mktemp("router-api"), triton_urls["grpc"])
    try:
        a.sim.start()
        a.router.start()
        until(lambda: httpx.get(a.router.url + "/readyz", timeout=5).status_code == 200, 60, "router ready",
              procs=(a.router,))
        yield a
    finally:
        for p in reversed(a.procs):
            p.stop()
        asyncio.run(delete_topics(kafka_settings, [topic_name(s, namespace) for s in catalog.CATALOG]))


def error_message(r: httpx.Response) -> str:
    try:
        return r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""


# -- keys and roles ------------------------------------------------------------------------------
async def test_every_route_but_health_and_readiness_needs_a_key(api, ledger):
    async with api.client(api.service) as keyed:
        spec = (await keyed.get("/openapi.json")).json()
    routes = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]
    assert {p for _, p in routes} >= PUBLIC | {"/v1/chat/completions", "/v1/tasks"}
    wrong = "gr_" + secrets.token_urlsafe(32)
    PRESENTED.add(wrong)
    bad_headers = {"no key": {}, "unknown key": {"Authorization": f"Bearer {wrong}"},
                   "other scheme": {"Authorization": f"Basic {api.service}"},
                   "key without scheme": {"Authorization": api.service},
                   "empty bearer": {"Authorization": "Bearer"}}
    tried = refused = 0
    async with api.client() as anon:
        for method, path in routes:
            url = path.replace("{task}", TASK)
            for name, headers in bad_headers.items():
                r = await anon.request(method, url, headers={**headers, "X-Graduate-Task": TASK},
                                       json={"input": "my card did not arrive", "messages": [
                                           {"role": "user", "content": "my card did not arrive"}]})
                tried += 1
                if path in PUBLIC:
                    assert r.status_code == 200, (method, path, name, r.status_code)
                    continue
                assert r.status_code == 401, (method, path, name, r.status_code, r.text)
                assert error_message(r) and r.headers.get("www-authenticate") == "Bearer", (method, path, name)
                refused += 1
        docs = {p: (await anon.get(p)).status_code for p in sorted(FASTAPI_DOCS | {"/metrics"})}
    assert docs == {"/docs": 404, "/docs/oauth2-redirect": 404, "/metrics": 404, "/openapi.json": 401, "/redoc": 404}
    ledger("Requests without a valid API key", f"{tried} requests: {len(routes)} routes × {len(bad_headers)} kinds of "
           "missing/wrong key (none, unknown, Basic, no scheme, empty)",
           "n/a (nothing served, nothing captured)",
           f"401 with a message and WWW-Authenticate on all {refused} protected; 200 on /healthz, /readyz only "
           f"(docs and metrics on the API port without a key: {docs}; /metrics is on its own port)")


class NoPublisher:
    async def publish(self, review):  # pragma: no cover - the role checks refuse before publishing
        raise AssertionError("a refused request must not publish")


async def test_reviewer_and_service_roles(api, ledger):
    from fastapi.testclient import TestClient

    from services.review.app import create_app
    from services.review.settings import ReviewSettings

    chat = {"messages": [{"role": "user", "content": "my card did not arrive"}]}
    async with api.client(api.reviewer) as reviewer, api.client(api.drafts_only) as drafts, \
            api.client(api.service) as service:
        # router: a reviewer key may look, never call a task; a task-scoped key only its tasks
        assert (await reviewer.get("/v1/tasks")).status_code == 200
        for r in [await reviewer.post("/v1/chat/completions", json=chat, headers={"X-Graduate-Task": TASK}),
                  await reviewer.post(f"/v1/tasks/{TASK}/predict", json={"input": "hi there"}),
                  await reviewer.post("/v1/chat/completions", json=chat)]:
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_role", r.text
        r = await drafts.post(f"/v1/tasks/{TASK}/predict", json={"input": "hi there"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_task", r.text
        assert (await drafts.post("/v1/chat/completions", json=chat,
                                  headers={"X-Graduate-Task": "draft-reply"})).status_code == 200
        assert (await service.post(f"/v1/tasks/{TASK}/predict", json={"input": "hi there"})).status_code == 200

    # the review page (same keys file): only reviewer keys, never a service key
    review = create_app(ReviewSettings(api_keys_file=api.keys_file), publisher=NoPublisher(), follow=False)
    body = {"call_id": "c1", "verdict": "label", "label": "card_arrival"}
    with TestClient(review) as page:
        statuses = {}
        for name, key in (("none", None), ("service", api.service), ("drafts-only", api.drafts_only),
                          ("reviewer", api.reviewer)):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            statuses[name] = (page.get("/api/tasks", headers=headers).status_code,
                              page.post(f"/api/tasks/{TASK}/reviews", json=body, headers=headers).status_code)
        login = page.post("/login", data={"key": api.service, "next": "/"}, follow_redirects=False)
    assert statuses["none"] == (401, 401)
    assert statuses["service"] == (403, 403) and statuses["drafts-only"] == (403, 403)
    assert statuses["reviewer"][0] == 200 and statuses["reviewer"][1] not in (401, 403)
    assert login.status_code == 403 and "graduate_review_session" not in login.headers.get("set-cookie", "")
    ledger("Keys of the wrong role or task", "router: reviewer key on 3 task calls, task-scoped key on another task; "
           "review page: service/task-scoped keys on its API and sign-in",
           "n/a", "403 forbidden_role / forbidden_task from the router; 401/403 from the review page, no session "
           "cookie for a service key; the right keys got 200")


# -- schemathesis --------------------------------------------------------------------------------
async def test_schemathesis_finds_no_5xx_and_every_4xx_has_a_message(api, ledger):
    import schemathesis
    from schemathesis import GenerationMode

    async with api.client(api.service) as keyed:
        documented = (await keyed.get("/openapi.json")).json()
    body_documented = [p for p, ops in documented["paths"].items() for op in ops.values() if "requestBody" in op]
    assert set(body_documented) == {"/v1/chat/completions", "/v1/tasks/{task}/predict"}
    schema = schemathesis.openapi.from_dict(documented)
    examples = int(knob("SCHEMATHESIS_EXAMPLES", 25))
    tally, problems = Tally(), []
    tasks = st.sampled_from([TASK, "draft-reply", None])

    def run(operation, mode) -> None:
        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode), task=tasks, keyed=st.booleans())
        def check(case, task, keyed):
            headers = {"Authorization": f"Bearer {api.service}"} if keyed or mode == GenerationMode.NEGATIVE else {}
            if task and "task" in (case.path_parameters or {}):
                case.path_parameters["task"] = task
            if task and operation.path == "/v1/chat/completions":
                headers["X-Graduate-Task"] = task
            response = case.call(base_url=api.router.url, headers=headers, timeout=30)
            tally.saw(response.status_code)
            label = f"{mode.value} {operation.method.upper()} {case.formatted_path}"
            if response.status_code >= 500:
                problems.append(f"{label}: {response.status_code} {response.text[:200]} body={case.body!r:.200}")
            elif response.status_code >= 400:
                try:
                    message = response.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = ""
                if not (isinstance(message, str) and message.strip()):
                    problems.append(f"{label}: {response.status_code} without a message: {response.text[:200]}")
        check()

    operations = [r.ok() for r in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                await asyncio.to_thread(run, operation, mode)
            except Exception as exc:  # a mode that cannot generate anything for this operation
                if "Unsatisfiable" not in type(exc).__name__ and "unsatisfiable" not in str(exc).lower():
                    raise
    assert api.router.alive(), api.router.tail()
    assert not problems, "\n".join(problems[:20])
    ledger("Schema-driven fuzzing (schemathesis 4, positive + negative) of the router's OpenAPI",
           f"{tally.sent} requests over {len(operations)} operations ({examples} examples per operation and mode; "
           f"request bodies as the router's OpenAPI documents them: {body_documented})",
           "n/a", f"no 5xx; every 4xx with error.message. Statuses: {tally.summary()}")


# -- the frontier failing ------------------------------------------------------------------------
async def sim_requests(api: Api, url: str | None = None) -> int:
    async with httpx.AsyncClient(timeout=10) as h:
        return (await h.get((url or api.sim.url) + "/v1/sim/stats")).json()["requests"]


FAULTS = {  # fault -> (status, code, attempts the router makes with max_retries=2)
    "500": (500, "frontier_upstream_error", 1),  # passed on as the provider said; the caller's SDK retries it
    "429": (429, "rate_limit_exceeded", 3),  # Retry-After: 1, so the router retries within its budget
    "timeout": (504, "frontier_timeout", 1),
    "garbage": (502, "frontier_bad_response", 1),
}


async def test_each_frontier_fault_is_retried_where_safe_within_budget_then_answered_as_the_provider_would(api, kafka_settings, codec, ledger):
    per_fault = 3
    failed_ids, seen = [], {}
    async with api.client(api.service) as h:
        for fault, (status, code, attempts) in FAULTS.items():
            before = await sim_requests(api)
            started = time.monotonic()
            for i in range(per_fault):
                r = await h.post(f"/v1/tasks/{TASK}/predict", json={"input": f"my card did not arrive {fault} {i}"},
                                 headers={"X-Sim-Fault": fault})
                assert r.status_code == status, (fault, r.status_code, r.text)
                assert r.json()["error"]["code"] == code and error_message(r), r.text
                failed_ids.append(r.headers["x-graduate-call-id"])
            elapsed = (time.monotonic() - started) / per_fault
            made = (await sim_requests(api) - before) / per_fault
            assert made == attempts, (fault, made)
            if fault == "429":
                assert elapsed >= 2.0, "Retry-After: 1 was not honoured between the 3 attempts"
            seen[fault] = f"{status} {code}, {made:g} attempts, {elapsed:.1f} s each"
        marker = (await h.post(f"/v1/tasks/{TASK}/predict", json={"input": "my card did not arrive: marker"})).json()
    # capture hands records over in batches, off the request path: wait (bounded) for the marker
    deadline = time.monotonic() + 60
    while True:
        records = await read_topic(kafka_settings, api.topic(catalog.CALLS_CAPTURED), timeout=5)
        captured = {c.call_id for c in decode_all(codec, records, CapturedCall)}
        if marker["call_id"] in captured or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert marker["call_id"] in captured and not captured & set(failed_ids)
    outcomes = {o.call_id: o for o in decode_all(codec, await read_topic(
        kafka_settings, api.topic(catalog.ROUTER_OUTCOMES), min_count=len(failed_ids), timeout=30), RouterOutcome)}
    assert all(outcomes[c].status_code in (429, 500, 502, 504) for c in failed_ids)
    ledger("Frontier answering 500 / 429 (Retry-After: 1) / hanging / garbage, on every attempt",
           f"{per_fault} requests per fault ({len(failed_ids)} in all), max_retries=2, timeout 2 s, budget 10 s",
           f"0 labels: none of the {len(failed_ids)} failed calls captured; each has a RouterOutcome with its status",
           "; ".join(f"{k}: {v}" for k, v in seen.items()))


async def test_intermittent_frontier_faults_recover_and_capture_only_answers(api, kafka_settings, codec, ledger):
    """A flaky frontier (faults at set rates): retries turn most faults into answers, the rest fail
    clearly, and what is captured is exactly the answered calls, with only valid labels as labels."""
    n = int(knob("CALLS", 300))
    rates = {"--fault-500": "0.15", "--fault-429": "0.05", "--fault-garbage": "0.05", "--fault-timeout": "0.02"}
    flaky = simulator(api.folder, *[x for kv in rates.items() for x in kv], GRADUATE_SIM_FAULT_TIMEOUT_S="5")
    api.procs.append(flaky)
    flaky.start()
    second = router(api.folder, kafka=api.kafka, namespace=api.namespace, frontier_url=flaky.url + "/v1",
                    triton_grpc=api.triton_grpc, keys_file=api.keys_file,
                    GRADUATE_FRONTIER_MAX_RETRIES="2", GRADUATE_FRONTIER_RETRY_BUDGET_S="8",
                    GRADUATE_ROUTER_CAPTURE_NAME="router-flaky")
    api.procs.append(second)
    second.start()
    until(lambda: httpx.get(second.url + "/readyz", timeout=5).status_code == 200, 60, "router ready", procs=(second,))
    tally, answered, failed, slowest = Tally(), [], [], 0.0
    gate = asyncio.Semaphore(16)

    async def one(h: httpx.AsyncClient, i: int) -> None:
        nonlocal slowest
        async with gate:
            started = time.monotonic()
            r = await h.post(f"/v1/tasks/{TASK}/predict", json={"input": f"card payment declined, case {i}"})
            slowest = max(slowest, time.monotonic() - started)
        tally.saw(r.status_code)
        if r.status_code == 200:
            answered.append(r.json()["call_id"])
        else:
            assert r.status_code in (429, 500, 502, 504) and error_message(r), r.text
            failed.append(r.headers["x-graduate-call-id"])

    async with api.client(api.service, url=second.url) as h:
        await asyncio.gather(*(one(h, i) for i in range(n)))
    attempts = await sim_requests(api, flaky.url)
    assert len(answered) + len(failed) == n
    # ~27 % of attempts fail; only the 429s (Retry-After: 1) are retried, the 500s are passed on at once
    assert len(answered) >= 0.7 * n, tally.summary()

    async def all_captured():
        records = await read_topic(api.kafka, api.topic(catalog.CALLS_CAPTURED), timeout=1)
        calls = [c for c in decode_all(codec, records, CapturedCall)]
        return calls if set(answered) <= {c.call_id for c in calls} else None

    listed = await poll(all_captured, 60, "every answered call captured")
    calls = {c.call_id: c for c in listed}
    assert not set(failed) & set(calls), "a failed call was captured"
    mine = [calls[c] for c in answered]
    counts = {}
    for c in listed:
        counts[c.call_id] = counts.get(c.call_id, 0) + 1
    assert all(counts[c] == 1 for c in answered)  # once each
    assert all(c.output in LABELS for c in mine if c.output is not None)  # a broken answer is never a label
    unparsed = sum(c.output is None for c in mine)
    ledger("Flaky frontier: 15 % 500s, 5 % 429s, 5 % garbage, 2 % 5 s hangs (per attempt)",
           f"{n} requests, 16 at a time, {attempts} frontier attempts (max_retries=2, timeout 2 s, budget 8 s)",
           f"0: {len(answered)} answered calls captured once each, {len(failed)} failed calls never captured; "
           f"{unparsed} unparseable answers captured with output=null (never a label)",
           f"{tally.summary()}; slowest {slowest:.1f} s")


# -- restart ---------------------------------------------------------------------------------------
async def test_a_restarted_router_is_ready_only_after_replaying_and_serves_the_last_mode(api, codec, ledger):
    n = int(knob("DECISIONS", 5000))
    topic = api.topic(catalog.ROUTING_DECISIONS)
    producer = make_producer(api.kafka)
    await producer.start()
    try:
        futures = []
        for i in range(n):
            mode = ("frontier", "shadow")[i % 2] if i < n - 1 else "small"
            d = RoutingDecision(task=TASK, mode=mode, model_version="7", threshold=0.5, reason=f"restart test {i}",
                                decided_by="test", triton_model="graduate-never-loaded")
            futures.append(await producer.send(topic, codec.encode(d), key=TASK.encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    last = f"restart test {n - 1}"
    fresh = router(api.folder, kafka=api.kafka, namespace=api.namespace, frontier_url=api.sim.url + "/v1",
                   triton_grpc=api.triton_grpc, keys_file=api.keys_file, GRADUATE_ROUTER_CAPTURE_NAME="router-restart")
    api.procs.append(fresh)
    fresh.start()  # waits for /healthz only: readiness is what this test watches
    not_ready = served = 0
    async with api.client(api.service, url=fresh.url) as h:
        deadline = time.monotonic() + 120
        while served < 20:
            assert time.monotonic() < deadline, f"not ready after 120 s:\n{fresh.tail()}"
            r = await h.post(f"/v1/tasks/{TASK}/predict", json={"input": "my card did not arrive"})
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "not_ready" and r.headers.get("retry-after"), r.text
                not_ready += 1
                continue
            assert r.status_code == 200, r.text
            body = r.json()  # small mode with an unloadable model: the fallback answers, with its reason
            assert body["served_by"] == "fallback" and body["model_version"] == "7", (served, body)
            served += 1
        tasks = (await h.get("/v1/tasks")).json()
    row = next(t for t in tasks["tasks"] if t["task"] == TASK)
    assert tasks["ready"] and (row["mode"], row["reason"]) == ("small", last)
    assert scrape(fresh.metrics_url, "graduate_router_fallbacks_total", reason="triton_unavailable", task=TASK) >= 20
    ledger("Router restarted onto a routing topic with many decisions",
           f"{n} decisions for one task (the last: small); requests sent from the moment the process was up",
           "n/a", f"{not_ready} × 503 not_ready (Retry-After) while replaying, then 20/20 served in the last decided "
           "mode (small, falling back: triton_unavailable); never a stale mode")


# -- keys in logs (last: after every other test of this module sent its keys) ---------------------
def test_no_key_ever_reaches_a_log(api, ledger):
    logs = {p.log.name: p.text() for p in api.procs}
    leaked = {name for name, text in logs.items() for key in PRESENTED if key in text}
    assert not leaked, f"a raw API key is in {sorted(leaked)}"
    shaped = {name: SECRET.findall(text)[:3] for name, text in logs.items() if SECRET.search(text)}
    assert not shaped, shaped
    lines = sum(t.count("\n") for t in logs.values())
    ledger("API keys and logs", f"{len(PRESENTED)} keys (valid, task-scoped, reviewer, unknown) sent in every test of "
           f"the module; {len(logs)} process logs grepped ({lines} lines, router at debug with the access log on)",
           "0 keys in any log", "n/a")


def test_a_key_sent_in_the_query_string_is_not_written_to_the_access_log(api, ledger):
    """A client that puts its key in the URL (the router never reads it there) gets 401; with the
    access log on (`graduate serve router --access-log`), uvicorn writes the whole URL, key included."""
    probe = create_key(api.keys_file, "query-string-client")
    logged = router(api.folder, kafka=api.kafka, namespace=api.namespace, frontier_url=api.sim.url + "/v1",
                    triton_grpc=api.triton_grpc, keys_file=api.keys_file, access_log=True,
                    GRADUATE_ROUTER_CAPTURE_NAME="router-query")
    api.procs.append(logged)
    logged.start()
    statuses = [httpx.request(method, f"{logged.url}{path}", params={"api_key": probe}, timeout=10,
                              json={"input": "hi"}).status_code
                for method, path in (("GET", "/v1/tasks"), ("POST", f"/v1/tasks/{TASK}/predict"))]
    logged.stop()
    assert statuses == [401, 401]
    lines = [line for line in logged.text().splitlines() if probe in line]
    assert not lines, f"the raw key is in the router's access log: {lines[0][:160]}"
    ledger("API key sent in the query string", "2 requests with ?api_key=<a valid key>, access log on", "n/a",
           "401, and the key is not in the access log")
