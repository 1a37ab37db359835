"""taskfarm's API (`/api/…`), so taskfarm-worker 0.4.0's `TaskFarm`, `TaskFarmWorker` and
`manageTF` run against farmstead unchanged."""

from farmstead.api.taskfarm.routes import router

__all__ = ["router"]
