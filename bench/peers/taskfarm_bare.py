"""The ceiling of bench_taskfarm.py: taskfarm's API answered from memory by a bare FastAPI app.

No database, no authentication, no middleware: each route validates its body with a small
pydantic model and answers what taskfarm would (a claim hands out the next task number of the
run until none is left, then 204). Served by uvicorn with the options `farmstead serve` uses
(see bare_app.py), one process. What the real taskfarm-worker clients reach against it is the
most this machine allows with those clients: they and the server share its cores.

    python bench/peers/taskfarm_bare.py --port 8124
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Response
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bare_app import farmstead_uvicorn_options


class NewRun(BaseModel):
    numTasks: int


class WorkerIn(BaseModel):
    uuid: str
    hostname: str
    pid: int


class ClaimIn(BaseModel):
    worker_uuid: str


class TaskUpdate(BaseModel):
    percentCompleted: float | None = None
    status: Literal["waiting", "computing", "done"] | None = None


app = FastAPI()
runs: dict[str, dict[str, Any]] = {}
ids = itertools.count(1)


def _task(n: int) -> dict[str, Any]:
    return {"id": n + 1, "task": n, "percentCompleted": 0.0, "status": "computing"}


@app.get("/api/token")
async def token() -> dict[str, str]:
    return {"token": "ceiling"}


@app.post("/api/run", status_code=201)
async def create_run(body: NewRun) -> dict[str, Any]:
    uuid = f"{next(ids):032x}"
    runs[uuid] = {"id": len(runs) + 1, "uuid": uuid, "numTasks": body.numTasks, "next": 0,
                  "done": 0}
    return {"id": runs[uuid]["id"], "uuid": uuid, "numTasks": body.numTasks}


@app.get("/api/runs/{uuid}")
async def run_info(uuid: str) -> dict[str, Any]:
    run = runs[uuid]
    return {"id": run["id"], "uuid": uuid, "numTasks": run["numTasks"], "percentDone": 0.0,
            "numWaiting": 0, "numComputing": 0, "numDone": run["done"]}


@app.post("/api/worker", status_code=201)
async def worker(body: WorkerIn) -> dict[str, Any]:
    return {"uuid": body.uuid, "id": next(ids)}


@app.post("/api/runs/{uuid}/task", status_code=201)
async def claim(uuid: str, body: ClaimIn) -> Any:
    run = runs[uuid]
    if run["next"] >= run["numTasks"]:
        return Response(status_code=204)
    run["next"] += 1
    return _task(run["next"] - 1)


@app.get("/api/runs/{uuid}/tasks/{n}")
async def task(uuid: str, n: int, info: str = "") -> dict[str, Any]:
    answer = _task(n)
    return {info: answer[info]} if info else answer


@app.put("/api/runs/{uuid}/tasks/{n}", status_code=204)
async def update(uuid: str, n: int, body: TaskUpdate) -> Response:
    if body.status == "done":
        runs[uuid]["done"] += 1
    return Response(status_code=204)


@app.get("/")
async def index() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    options, _ = farmstead_uvicorn_options()
    uvicorn.run(app, host="127.0.0.1", port=args.port, workers=1, log_level="warning",
                **options)
