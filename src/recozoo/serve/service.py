"""The HTTP recommendation service: a LitServe server over a run, a checkpoint or a fusion.

Endpoints:

* ``POST /predict`` with a `RecommendRequest` body, e.g. ``{"user_id": "u7", "k": 10}`` or
  ``{"history": ["i3", "i9"], "k": 5, "tail_boost": 0.3, "category": "books > novel"}``;
  answers a `RecommendResponse` (items with ids, titles and scores, the scoring ``strategy`` and,
  when a fallback was taken, why). See `recozoo.serve.engine` for the rules.
* ``GET /health`` (200 "ok" once the model is loaded), ``GET /info``, ``GET /openapi.json``
  and ``GET /docs``.

Bodies are JSON with ``Content-Type: application/json`` (``curl -H 'Content-Type:
application/json' -d '{"user_id": "u7"}' http://127.0.0.1:8000/predict``; curl's default form
type is answered 422). Errors: malformed JSON 400; a body of the wrong shape 422 (FastAPI's list of errors); unknown
item ids, ``k`` outside 1..n_items or an unknown category 422, in the same format, the unknown
ids listed. No response carries a stack trace (failures are logged by the server and answered
500 "Internal server error").

Requests are batched (``max_batch_size``, ``batch_timeout``): concurrent requests are scored in
one model call. A rejected request never fails the others of its batch: it is answered with its
own 422 response.
"""

# no `from __future__ import annotations` here: LitServe reads decode_request's and
# encode_response's annotations at runtime as the endpoint's request and response types
import logging
from dataclasses import dataclass
from typing import Any

import litserve as ls
import torch
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from recozoo.serve.schema import RecommendRequest, RecommendResponse, RequestError

log = logging.getLogger(__name__)


@dataclass
class Rejected:
    """A request that failed validation in the worker; answered alone with ``status``."""

    status: int
    errors: list[dict[str, Any]]


class RecommendAPI(ls.LitAPI):
    """LitServe API over an `Engine`; the run is loaded in each inference worker.

    Args:
        run: a run folder, a checkpoint in one, or a fusion folder.
        max_batch_size: requests scored together at most.
        batch_timeout: seconds a batch waits to fill.
    """

    def __init__(self, run: str, max_batch_size: int = 16, batch_timeout: float = 0.005):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                         api_path="/predict")
        self.run = str(run)

    def setup(self, device: str) -> None:
        # here, in the worker, not at import: the HTTP process never loads torch models
        from recozoo.serve.engine import Engine

        self.engine = Engine.load(self.run, device)
        log.info("serving %s (%s) on %s: %d items, %d users", self.run, self.engine.scorer.name,
                 device, self.engine.catalog.n_items, self.engine.catalog.n_users)

    def decode_request(self, request: RecommendRequest) -> Any:
        try:
            return self.engine.parse(request)
        except RequestError as error:
            return Rejected(422, error.errors)

    def batch(self, inputs: list[Any]) -> list[Any]:
        return list(inputs)

    def predict(self, inputs: Any) -> Any:
        """Scores the batch's valid queries in one call; rejected ones pass through."""
        batched = isinstance(inputs, list)
        inputs = inputs if batched else [inputs]
        answers = iter(self.engine.recommend([q for q in inputs if not isinstance(q, Rejected)]))
        outputs = [q if isinstance(q, Rejected) else next(answers) for q in inputs]
        return outputs if batched else outputs[0]

    def unbatch(self, outputs: list[Any]) -> list[Any]:
        return outputs

    def encode_response(self, output: dict[str, Any] | Rejected) -> RecommendResponse:
        if isinstance(output, Rejected):
            # a Response object is passed through as is: this request alone gets the error
            return JSONResponse(status_code=output.status, content={"detail": output.errors})
        return output


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """400 for a body that is not JSON, else 422 with FastAPI's error list minus echoed input
    and exception objects (so no response carries internals)."""
    errors = [{key: value for key, value in e.items() if key in ("loc", "msg", "type")}
              for e in error.errors()]
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse(status_code=400, content={"detail": [
            {**e, "msg": f"malformed JSON: {e.get('msg', '')}"} for e in errors
            if e.get("type") == "json_invalid"]})
    return JSONResponse(status_code=422, content={"detail": errors})


def build_server(run: str, accelerator: str = "auto", workers: int = 1,
                 max_batch_size: int = 16, batch_timeout: float = 0.005,
                 timeout: float = 30.0) -> ls.LitServer:
    """The LitServer of the recommendation service (not started).

    Args:
        run: a run folder, a checkpoint in one, or a fusion folder.
        accelerator: ``auto`` (CUDA where present), ``cpu`` or ``cuda``.
        workers: inference workers per device.
        max_batch_size / batch_timeout: request batching.
        timeout: seconds a request may wait for an answer.
    """
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    api = RecommendAPI(run, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    server = ls.LitServer(api, accelerator=accelerator, devices=1 if accelerator != "cpu" else
                          "auto", workers_per_device=workers, timeout=timeout,
                          model_metadata={"run": str(run)})
    server.app.add_exception_handler(RequestValidationError, validation_error)
    server.app.title = "recozoo recommendations"
    return server
