"""The ceiling of bench_speed.py: a bare FastAPI app served like `farmstead serve` serves its own.

One POST route that takes a small pydantic body model and answers a constant (no database, no
middleware); its catch-all path accepts every route the lifecycle load sends. `GET /health`
answers too (readiness, keep-alive warm-up). uvicorn gets the keyword arguments that
`farmstead serve` passes to `uvicorn.run` (read from src/farmstead/cli/serve.py, so a change
there, e.g. of `loop` or `http`, carries over here), with this app, host, port and workers.

    python bench/peers/bare_app.py --port 8123 --workers 1
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

SERVE = Path(__file__).resolve().parents[2] / "src" / "farmstead" / "cli" / "serve.py"
OWN = {"host", "port", "workers", "factory", "log_level"}  # set here, not copied


class Report(BaseModel):
    """The fields the worker routes take; the lifecycle bodies fit it."""

    model_config = ConfigDict(extra="ignore")

    nodename: str | None = None
    process_group_id: int | None = None
    next_report_increment: float | None = None
    wallclock: float | None = None
    maxrss: int | None = None


ANSWER = {"status": "R", "task_instance": [0, "R"]}

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/{path:path}")
async def report(path: str, body: Report) -> dict[str, Any]:
    return ANSWER


def farmstead_uvicorn_options() -> tuple[dict[str, Any], list[str]]:
    """The constant keyword arguments of `uvicorn.run(...)` in farmstead's serve command, and
    the names of those that are not constants (which cannot be copied)."""
    tree = ast.parse(SERVE.read_text())
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        if (isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr == "run"
                and isinstance(func.value, ast.Name) and func.value.id == "uvicorn"):
            options, unknown = {}, []
            for kw in node.keywords:
                if kw.arg is None or kw.arg in OWN:
                    continue
                try:
                    options[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    unknown.append(f"{kw.arg}={ast.unparse(kw.value)}")
            return options, unknown
    raise RuntimeError(f"no uvicorn.run(...) call in {SERVE}")


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--show", action="store_true", help="print the uvicorn options and exit")
    args = p.parse_args()
    options, unknown = farmstead_uvicorn_options()
    if args.show:
        print(f"uvicorn options copied from farmstead serve: {options}; not copied: {unknown}")
        return
    uvicorn.run("bare_app:app", app_dir=str(Path(__file__).parent), host=args.host,
                port=args.port, workers=args.workers, log_level="warning", **options)


if __name__ == "__main__":
    main()
