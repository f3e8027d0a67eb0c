"""Where a step's log lines go: the Prefect run's logger inside a flow or task run (its lines
reach the Prefect UI), the module's own logger outside one (tests, the backtest's helpers, the
command line calling a task's function with ``.fn``)."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError


def run_logger(name: str) -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)
