"""`ResultStore`: the one class callers use, combining the parts of the store (each module of this
package holds one; see `farm.results.store`)."""

from __future__ import annotations

from farm.results.store.connection import connect
from farm.results.store.results import ResultsMixin
from farm.results.store.runs import RunsMixin
from farm.results.store.schedules import SchedulesMixin
from farm.results.store.series import SeriesMixin
from farm.results.store.spec_hashes import SpecHashesMixin
from farm.results.store.workers import WorkersMixin
from farm.results.store.writes import WritesMixin


class ResultStore(
    WritesMixin, SeriesMixin, ResultsMixin, SpecHashesMixin, RunsMixin, WorkersMixin, SchedulesMixin
):  # fmt: skip
    """Results, runs, job states, workers and schedules in Redis, behind named methods."""

    @classmethod
    def from_url(cls, url: str, prefix: str = "farm") -> ResultStore:
        return cls(connect(url), prefix)
