"""A taskhost plugin: handles batches of tasks taken from a queue."""

from typing import List

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.host import Level
from wit_world.imports.types import (
    NewTask,
    Outcome,
    Outcome_Done,
    Outcome_Fail,
    Outcome_Retry,
    Task,
)


class Handler(exports.Handler):
    def handle(self, batch: List[Task]) -> List[Outcome]:
        """Answers one outcome per task, in batch order."""
        # Configuration: `--set greeting=hi` or `config = { greeting = "hi" }`.
        greeting = host.get_config("greeting") or "hello"
        outcomes: List[Outcome] = []
        for task in batch:
            host.log(Level.INFO, f"{greeting}: task {task.id}, {len(task.payload)} bytes")
            if task.queue == "followups":
                outcomes.append(Outcome_Done())
                continue
            if not task.payload:
                # Dead-letters this task only, with the reason.
                outcomes.append(Outcome_Fail("empty payload"))
                continue
            # A follow-up task, for whatever serves the `followups` queue.
            follow_up = NewTask(
                queue="followups",
                payload=f"after {task.id}".encode(),
                unique_key=None,
                delay_ms=None,
            )
            try:
                host.enqueue(follow_up)
                outcomes.append(Outcome_Done())
            except Err as e:
                host.log(Level.WARN, f"cannot enqueue: {e.value}")
                outcomes.append(Outcome_Retry(None))
        return outcomes
