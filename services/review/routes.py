"""The review page's routes: sign-in, task pages, the queue and its form, and a small JSON API.

Each route reads the view, or calls `submit_review`, and renders; the logic lives elsewhere.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Optional
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.common.contracts import RetrainRequest, ReviewedLabel
from services.common.tasks import TaskSpec
from services.judge.logic import differing_fields
from services.review.auth import COOKIE, AuthError, Reviewer, check_csrf, reviewer_key, safe_next
from services.review.charts import time_chart
from services.review.deps import PageError, ReviewerDep, ReviewState, StateDep, TaskDep
from services.review.logic import ReviewRefused, submit_review
from services.review.view import DisputedLabel, Item
from services.review.web import make_templates

templates = make_templates()
pages = APIRouter()
api = APIRouter(prefix="/api")
LATEST_DISAGREEMENTS = 20
REVIEWED_SHOWN = 500
FIELD_PREFIX = "field."  # an extraction form's inputs: field.<name>


def render(request: Request, name: str, state: ReviewState, reviewer: Optional[Reviewer], status: int = 200,
           **context) -> Response:
    context.update(reviewer=reviewer, csrf=reviewer.csrf if reviewer else "", ready=state.is_ready(),
                   follower=state.follower_status())
    return templates.TemplateResponse(request, name, context, status_code=status)


def queue_url(task: str, **params) -> str:
    query = urlencode({k: v for k, v in params.items() if v})
    return f"/tasks/{quote(task, safe='')}/queue" + (f"?{query}" if query else "")


def disputed_url(task: str) -> str:
    return f"/tasks/{quote(task, safe='')}/disputed"


def home_url(task: str, item: Optional[Item]) -> str:
    """Where an item's page returns to: the disputed labels for a disputed train label, else the queue."""
    return disputed_url(task) if item is not None and item.reason == "disputed" else queue_url(task)


def disputed_queue(state: ReviewState, task: str) -> list[Item]:
    """The disputed train labels still to check, as review items, in the trainer's order."""
    return [i for i in (state.view.disputed_item(task, d.call_id) for d in state.view.disputed(task).to_check)
            if i is not None]


# --- signing in -------------------------------------------------------------------------------

@pages.get("/login")
def login_page(request: Request, state: StateDep, next: str = "/") -> Response:
    return render(request, "login.html", state, None, next=safe_next(next), error=None)


@pages.post("/login")
def login(request: Request, state: StateDep, key: Annotated[str, Form()] = "",
          next: Annotated[str, Form()] = "/") -> Response:
    try:
        reviewer_key(state.keys, key)
    except AuthError as exc:
        return render(request, "login.html", state, None, status=exc.status, next=safe_next(next), error=str(exc))
    sid, _ = state.sessions.create(key.strip())
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(COOKIE, sid, max_age=int(state.settings.session_ttl_s), httponly=True, samesite="strict",
                        secure=state.settings.cookie_secure, path="/")
    return response


@pages.post("/logout")
def logout(request: Request, state: StateDep, reviewer: ReviewerDep, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(reviewer, csrf)
    state.sessions.drop(request.cookies.get(COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- pages ------------------------------------------------------------------------------------

def task_rows(state: ReviewState, reviewer: Reviewer) -> list[dict]:
    rows = []
    for name, spec in sorted(state.tasks.tasks.items()):
        if not spec.graduatable or not reviewer.key.may_use(name):
            continue
        decision = state.view.task(name).decision
        rows.append({"task": name, "kind": spec.kind, "mode": decision.mode if decision else "frontier",
                     "model_version": decision.model_version if decision else None,
                     "queue": len(state.queue(name)), "reviewed": state.view.review_counts(name)["total"],
                     "reviews_needed": state.reviews_needed(name),
                     "disputed_to_check": len(state.view.disputed(name).to_check)})
    return rows


@pages.get("/")
def index(request: Request, state: StateDep, reviewer: ReviewerDep) -> Response:
    return render(request, "index.html", state, reviewer, rows=task_rows(state, reviewer))


@pages.get("/tasks/{task}")
def task_page(request: Request, state: StateDep, reviewer: ReviewerDep, task: TaskDep) -> Response:
    view, t = state.view, state.view.task(task.name)
    decision = t.decision
    fallback = view.fallback_series(task.name)
    gold = view.gold_labels(task.name)
    labels = list(task.labels) or sorted(set(t.frontier_labels) | set(gold))
    distribution = sorted(({"label": label, "frontier": t.frontier_labels[label], "gold": gold[label]}
                           for label in labels), key=lambda r: (-r["frontier"], -r["gold"], r["label"]))
    return render(
        request, "task.html", state, reviewer, task=task, decision=decision, t=t,
        queue_length=len(state.queue(task.name)), counts=view.review_counts(task.name),
        disputed=view.disputed(task.name),
        reviews_needed=state.reviews_needed(task.name),
        holdout_inputs=len(view.dataset(task.name).examples), distribution=distribution,
        distribution_max=max([1] + [max(r["frontier"], r["gold"]) for r in distribution]),
        agreement=time_chart(view.agreement_series(task.name)),
        fallback=time_chart({"fallback rate": [(ts, rate) for ts, rate, _ in fallback]},
                            reference=decision.predicted_fallback_rate if decision else None,
                            reference_label="predicted"),
        fallback_requests=sum(n for _, _, n in fallback), stats=view.latest_stats(task.name),
        disagreements=list(reversed(t.disagreements.values()))[:LATEST_DISAGREEMENTS],
        history=list(reversed(t.history)))


def answer_fields(answer: Optional[str]) -> dict[str, Any]:
    """The fields of a JSON-object answer as written ({} when it is not one)."""
    try:
        obj = json.loads(answer) if answer else {}
    except json.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def field_rows(task: TaskSpec, item: Optional[Item], submitted: Optional[dict[str, Any]] = None) -> list[dict]:
    """An extraction item's form, one row per field of the task: the value to show (what was just
    submitted, else the current review's, else the frontier's answer), both models' values, and
    whether the small model's differs from the frontier's. [] for a classification task."""
    if task.kind != "extraction" or item is None:
        return []
    frontier, small = answer_fields(item.frontier_label), answer_fields(item.small_output)
    reviewed = answer_fields(item.review.label) if item.review and item.review.verdict == "label" else None
    differs = set(differing_fields(item.small_output, item.frontier_label))
    rows = []
    for f in task.fields:
        if submitted is not None:
            value = submitted.get(f.name)
        else:
            value = (reviewed if reviewed is not None else frontier).get(f.name)
        rows.append({"name": f.name, "value": _text(value), "frontier": _text(frontier.get(f.name)),
                     "small": _text(small.get(f.name)) if item.small_output is not None else None,
                     "differs": f.name in differs, "required": f.required})
    return rows


def item_page(request: Request, state: StateDep, reviewer: Reviewer, task: TaskSpec, item: Optional[Item], *,
              status: int = 200, error: Optional[str] = None, form: Optional[dict] = None,
              next_url: Optional[str] = None, saved: Optional[str] = None,
              disputed: Optional[bool] = None) -> Response:
    """An item and its form beside its queue: the holdout's review queue, or for a disputed train
    label (`disputed`, by default when the item is one) the disputed labels still to check."""
    disputed = item is not None and item.reason == "disputed" if disputed is None else disputed
    queue = disputed_queue(state, task.name) if disputed else state.queue(task.name)
    home = disputed_url(task.name) if disputed else queue_url(task.name)
    saved_review = state.view.latest_review(task.name, saved) if saved else None
    position = next((i + 1 for i, q in enumerate(queue) if item and q.call_id == item.call_id), None)
    review = item.review if item else None
    form = form or {"label": review.label if review else None, "note": review.note if review and review.note else ""}
    return render(request, "queue.html", state, reviewer, status=status, task=task, item=item, queue=queue,
                  position=position, error=error, form=form, next_url=next_url or home, queue_url=home,
                  saved=saved_review, fields=field_rows(task, item, form.get("fields")),
                  disputed=state.view.disputed(task.name) if disputed else None)


@pages.get("/tasks/{task}/queue")
def queue_page(request: Request, state: StateDep, reviewer: ReviewerDep, task: TaskDep,
               saved: Optional[str] = None) -> Response:
    queue = state.queue(task.name)
    return item_page(request, state, reviewer, task, queue[0] if queue else None, saved=saved)


@pages.get("/tasks/{task}/disputed")
def disputed_page(request: Request, state: StateDep, reviewer: ReviewerDep, task: TaskDep,
                  saved: Optional[str] = None) -> Response:
    """The train labels the newest model disputes, first one still to check with its form."""
    queue = disputed_queue(state, task.name)
    return item_page(request, state, reviewer, task, queue[0] if queue else None, saved=saved, disputed=True)


@pages.get("/tasks/{task}/items/{call_id}")
def item_view(request: Request, state: StateDep, reviewer: ReviewerDep, task: TaskDep, call_id: str,
              next: Optional[str] = None) -> Response:
    item = state.view.item(task.name, call_id)
    if item is None:
        raise PageError(404, f"call {call_id[:80]!r} is not an item of task {task.name} on this page")
    return item_page(request, state, reviewer, task, item, next_url=safe_next(next, home_url(task.name, item)))


@pages.post("/tasks/{task}/items/{call_id}/review")
async def review_form(request: Request, state: StateDep, reviewer: ReviewerDep, task: TaskDep, call_id: str,
                      verdict: Annotated[str, Form()] = "label", label: Annotated[Optional[str], Form()] = None,
                      note: Annotated[Optional[str], Form()] = None, csrf: Annotated[str, Form()] = "",
                      next: Annotated[str, Form()] = "") -> Response:
    check_csrf(reviewer, csrf)
    next_url = safe_next(next, home_url(task.name, state.view.item(task.name, call_id)))
    submitted = {k[len(FIELD_PREFIX):]: v for k, v in (await request.form()).multi_items() if k.startswith(FIELD_PREFIX)}
    fields = submitted if submitted and verdict == "label" else None
    try:
        await submit_review(state.view, state.publisher, task, call_id, verdict, label, note, reviewer.name,
                            state.settings.note_max_chars, fields=fields)
    except ReviewRefused as exc:
        item = state.view.item(task.name, call_id)
        if item is None:
            raise PageError(exc.status, str(exc)) from None
        shown = {k: v for k, v in submitted.items() if isinstance(v, str)} if submitted else None
        return item_page(request, state, reviewer, task, item, status=exc.status, error=str(exc),
                         form={"label": label, "note": note or "", "fields": shown}, next_url=next_url)
    sep = "&" if "?" in next_url else "?"
    return RedirectResponse(f"{next_url}{sep}{urlencode({'saved': call_id})}", status_code=303)


@pages.get("/tasks/{task}/reviewed")
def reviewed_page(request: Request, state: StateDep, reviewer: ReviewerDep, task: TaskDep) -> Response:
    reviews = state.view.reviews(task.name)
    return render(request, "reviewed.html", state, reviewer, task=task, reviews=reviews[:REVIEWED_SHOWN],
                  total=len(reviews), counts=state.view.review_counts(task.name))


@pages.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@pages.get("/readyz")
def readyz(state: StateDep) -> Response:
    return JSONResponse({"ready": state.is_ready(), **state.follower_status()},
                        status_code=200 if state.is_ready() else 503)


# --- JSON API (Authorization: Bearer <reviewer key>) -----------------------------------------

class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    call_id: str = Field(min_length=1, max_length=200)
    verdict: str = "label"
    label: Optional[str] = None
    fields: Optional[dict[str, Any]] = Field(None, description="extraction tasks: field -> corrected value "
                                                                "(null or empty: none), instead of label")
    note: Optional[str] = None


def item_json(item: Item) -> dict:
    return {"call_id": item.call_id, "task": item.task, "input": item.input, "reason": item.reason,
            "frontier_label": item.frontier_label, "small_output": item.small_output,
            "confidence": item.confidence, "model_version": item.model_version,
            "differing_fields": differing_fields(item.small_output, item.frontier_label),
            "review": item.review.model_dump(mode="json") if item.review else None}


@api.get("/tasks")
def api_tasks(state: StateDep, reviewer: ReviewerDep) -> list[dict]:
    return task_rows(state, reviewer)


@api.get("/tasks/{task}/queue")
def api_queue(state: StateDep, task: TaskDep, limit: Annotated[Optional[int], Query(ge=1, le=1000)] = None) -> dict:
    return {"task": task.name, "ready": state.is_ready(), "reviews_needed": state.reviews_needed(task.name),
            "items": [item_json(i) for i in state.queue(task.name, limit)]}


@api.get("/tasks/{task}/disputed")
def api_disputed(state: StateDep, task: TaskDep) -> dict:
    """The train labels the newest model disputes (likeliest label errors first), each with its review."""
    d = state.view.disputed(task.name)
    return {"task": task.name, "ready": state.is_ready(), "model_version": d.model_version, "disputed": d.disputed,
            "listed": d.listed, "to_check": len(d.to_check),
            "items": [disputed_json(x, review) for x, review in d.items]}


def disputed_json(d: DisputedLabel, review: Optional[ReviewedLabel]) -> dict:
    return {"call_id": d.call_id, "normalised_hash": d.normalised_hash, "input": d.input, "label": d.label,
            "frontier_label": d.frontier_label, "model_label": d.model_label,
            "label_probability": d.label_probability, "model_probability": d.model_probability,
            "review": review.model_dump(mode="json") if review else None}


@api.get("/tasks/{task}/items/{call_id}")
def api_item(state: StateDep, task: TaskDep, call_id: str) -> dict:
    item = state.view.item(task.name, call_id)
    if item is None:
        raise PageError(404, f"call {call_id[:80]!r} is not an item of task {task.name} on this page")
    return item_json(item)


@api.post("/tasks/{task}/reviews")
async def api_review(state: StateDep, reviewer: ReviewerDep, task: TaskDep, body: ReviewIn) -> dict:
    try:
        review = await submit_review(state.view, state.publisher, task, body.call_id, body.verdict, body.label,
                                     body.note, reviewer.name, state.settings.note_max_chars, fields=body.fields)
    except ReviewRefused as exc:
        raise PageError(exc.status, str(exc)) from None
    return review.model_dump(mode="json")


@api.post("/tasks/{task}/approve")
async def api_approve(state: StateDep, reviewer: ReviewerDep, task: TaskDep) -> dict:
    """A person starts the task's graduation (or a retrain): the trainer takes a fresh snapshot."""
    return (await approve_task(state, reviewer, task)).model_dump(mode="json")


@pages.post("/tasks/{task}/approve")
async def approve_form(state: StateDep, reviewer: ReviewerDep, task: TaskDep,
                       csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(reviewer, csrf)
    await approve_task(state, reviewer, task)
    return RedirectResponse(f"/tasks/{quote(task.name)}", status_code=303)


async def approve_task(state: ReviewState, reviewer: Reviewer, task: TaskSpec) -> RetrainRequest:
    if task.graduation == "off":
        raise PageError(409, f"task {task.name} has graduation: off in the task config")
    kind = "manual" if state.view.task(task.name).decision and state.view.task(task.name).decision.model_version \
        else "first"
    request = RetrainRequest(task=task.name, kind=kind, reason=f"approved by {reviewer.name} on the review page",
                             requested_by=reviewer.name)
    await state.publisher.request_model(request)
    return request


@api.get("/tasks/{task}/summary")
def api_summary(state: StateDep, task: TaskDep) -> dict:
    view, decision = state.view, state.view.task(task.name).decision
    return {"task": task.name, "mode": decision.mode if decision else "frontier",
            "model_version": decision.model_version if decision else None,
            "threshold": decision.threshold if decision else None, "queue": len(state.queue(task.name)),
            "reviews_needed": state.reviews_needed(task.name),
            "disputed_to_check": len(view.disputed(task.name).to_check),
            "reviewed": view.review_counts(task.name), "holdout_inputs": len(view.dataset(task.name).examples),
            "frontier_labels": dict(view.task(task.name).frontier_labels.most_common())}
