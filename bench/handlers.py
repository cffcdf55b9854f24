"""Handlers for the throughput benchmark."""

from __future__ import annotations

from typing import Any


def noop(task: Any) -> None:
    """Does nothing: the benchmark measures the engine, not the work."""


def forward(task: Any) -> None:
    """First stage of the pipeline: send every task on to the second stage."""
    task.send("next", task.payload)
