"""Whether sending one of Django's task signals does anything, so the
worker and the backend skip the ones nobody hears."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.dispatch import Signal
from django.tasks import signals as task_signals
from django.utils.log import RequireDebugFalse, RequireDebugTrue

# Django's own receivers of the task signals: they only log.
_DJANGO_LOG_RECEIVERS = {
    getattr(task_signals, name, None) for name in ("log_task_enqueued", "log_task_started", "log_task_finished")
} - {None}


class Listening:
    """Whether sending a task signal does anything: a receiver other than
    Django's own log receivers, or a record of theirs that a handler would
    emit. With Django's default LOGGING (``django.tasks`` at INFO, whose
    console handler needs ``DEBUG``) or with that logger at WARNING, their
    INFO records are built and dropped, a quarter of a no-op task's time;
    the worker then sends no signal for a run that succeeds. The answer is
    kept for a second, so a change of the logging setup is seen within
    one; a receiver connected or disconnected at once. The backend asks the same of
    ``task_enqueued``, whose Django receiver logs at DEBUG."""

    def __init__(self, sender: type) -> None:
        self._sender = sender
        self._heard: dict[tuple[Signal, int], Heard] = {}

    def __call__(self, signal: Signal, level: int = logging.INFO) -> bool:
        heard = self._heard.get((signal, level))
        if heard is None:
            heard = self._heard[(signal, level)] = self.heard(signal, level)
        return heard()

    def heard(self, signal: Signal, level: int = logging.INFO) -> Heard:
        """The same question about one signal and level, as a callable that
        answers it without building and looking up a key: the worker asks
        it twice per task run."""
        return Heard(self, signal, level)

    def _listened(self, signal: Signal, level: int) -> bool:
        try:
            sync_receivers, async_receivers = signal._live_receivers(self._sender)
        except Exception:  # a Django without this helper: assume someone listens
            return True
        if async_receivers or any(r not in _DJANGO_LOG_RECEIVERS for r in sync_receivers):
            return True
        return bool(sync_receivers) and _emits(logging.getLogger("django.tasks"), level)


class Heard:
    """``Listening(sender)(signal, level)`` for one signal and level, kept
    in slots: the answer holds for a second (a change of the logging setup
    is seen within one), or until a receiver is connected or disconnected
    (seen at once)."""

    __slots__ = ("_listening", "_signal", "_level", "_answer", "_receivers", "_until")

    def __init__(self, listening: Listening, signal: Signal, level: int) -> None:
        self._listening, self._signal, self._level = listening, signal, level
        self._answer, self._receivers, self._until = False, -1, 0.0

    def __call__(self) -> bool:
        if len(self._signal.receivers) == self._receivers and _monotonic() < self._until:
            return self._answer
        self._receivers = len(self._signal.receivers)
        self._until = _monotonic() + 1.0
        self._answer = self._listening._listened(self._signal, self._level)
        return self._answer


_monotonic = time.monotonic


def _emits(logger: logging.Logger, level: int) -> bool:
    """Whether a record of ``level`` from ``logger`` would reach a handler
    that writes it. Filters other than Django's DEBUG filters are assumed
    to pass it."""
    if not logger.isEnabledFor(level):
        return False
    if logger.filters:
        return True
    current: logging.Logger | None = logger
    found = False
    while current is not None:
        for handler in current.handlers:
            found = True
            if level >= handler.level and all(_passes(f) for f in handler.filters):
                return True
        if not current.propagate:
            break
        current = current.parent
    last_resort = logging.lastResort
    return not found and last_resort is not None and level >= last_resort.level


def _passes(log_filter: Any) -> bool:
    if isinstance(log_filter, RequireDebugTrue):
        return bool(settings.DEBUG)
    if isinstance(log_filter, RequireDebugFalse):
        return not settings.DEBUG
    return True
