"""``POST /v1/actions``: bulk actions by filter (cancel, retry, replay), DESIGN.md §8.

Body ``{"action", "filter", "dryRun", "expectedCount", "tolerance", "confirmUnknown",
"expiration"}``. A dry run answers ``{"count", "sample", "excluded"}`` and changes
nothing. The action itself needs ``expectedCount`` (the dry run's count): it is counted
again and refused with ``409`` when the count moved by more than ``tolerance`` (default
0); otherwise it triggers an ``mcBulkAction`` DAG run and answers ``{"count", "sample",
"runId"}`` (``202``): the run does it in batches, visible and resumable in Airflow.
Rights: editing the processing DAGs (as the quarantine), checked by ``manage``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from message_center.db import engine_for
from message_center.operations import actions
from message_center.operations.filters import OperationInputError, invalid

MAX_BODY = 4 * 1024 * 1024  # a list of 100,000 ids fits


@dataclass(frozen=True)
class ActionsBackend:
    """What the route needs from the deployment: the execution database's URL, the
    dependency that checks the right (returns the user), the user's name, and
    ``trigger(params, user_name) -> run id`` (an ``mcBulkAction`` run)."""

    execution_url: Callable[[], str | None]
    manage: Callable[..., Any]
    user_name: Callable[[Any], str]
    trigger: Callable[[dict[str, Any], str], str]


def actions_router(backend: ActionsBackend) -> APIRouter:
    router = APIRouter()

    @router.post("/actions", summary="Cancel, retry or replay the events a filter selects",
                 responses={
                     202: {"description": "The action is running as an mcBulkAction DAG "
                                          "run (`runId`)."},
                     409: {"description": "The count moved by more than the "
                                          "tolerance since the dry run."},
                     413: {"description": f"The body is larger than {MAX_BODY} bytes."},
                     422: {"description": "The body is not a valid action: `field` "
                                          "names what is wrong."}},
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": {"type": "object", "required": [
                         "action", "filter"]}}}}})
    async def bulk_action(request: Request, user: Any = Depends(backend.manage)) -> Any:
        """Always two steps: `dryRun: true` counts and samples; then the action with
        `expectedCount` set to that count. Filter fields: `instance`, `queue`,
        `eventType`, `channel`, `status`, `failureClass`, `from`, `to`,
        `externalIdPrefix`, `ids`."""
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise HTTPException(413, f"request body is larger than {MAX_BODY} bytes")
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise invalid("body", "the body is not JSON", where="") from None
        name = backend.user_name(user)
        if not isinstance(body, dict):
            raise invalid("body", "the body must be a JSON object", where="")

        def work() -> dict[str, Any]:
            url = backend.execution_url()
            if not url:
                raise HTTPException(503, "this deployment has no execution database "
                                         "(mc_execution)")
            try:
                return actions.submit(engine_for(url), body, name, backend.trigger)
            except actions.GuardRefused as exc:
                raise HTTPException(409, {"msg": str(exc), "count": exc.count,
                                          "expectedCount": exc.expected,
                                          "tolerance": exc.tolerance}) from None

        answer = await run_in_threadpool(work)
        return JSONResponse(answer, status_code=202 if "runId" in answer else 200)

    return router


__all__ = ["ActionsBackend", "OperationInputError", "actions_router"]
