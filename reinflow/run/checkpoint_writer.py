"""Checkpoint writes in one background thread, from the live tensors: no copy of the state.

``save_checkpoint(..., background=True)`` (``reinflow.run.session``) hands the policy's state to the
session's :class:`CheckpointWriter`, which writes it in a background thread while the next iteration
goes on. ``PolicyTrainer.state()`` returns views of the live weights and Adam moments, so nothing is
copied (a copy held 1.5 GB more for the quickstart's model while it was written); instead the policy
is told to hold them (``Policy.hold_state(writer.join)``): its next in-place change of the weights
(the next update's optimizer step, a ``load_state``) first waits for the write. The next rollout, the
judge and the next update's forward and backward passes only read the weights, so they run beside the
write. The containers around the tensors are rebuilt (:func:`detach_containers`) so that nothing the
training thread reassigns reaches the write.
The write itself is ``reinflow.run.checkpoint.write_checkpoint``, unchanged: a temporary folder,
fsynced, renamed into place, so a crash (SIGKILL) in the middle of a background write is a crash in
the middle of a write, and a resume starts from the previous complete checkpoint.

The rules:

- One write in flight: ``submit`` first waits for the one before (so at most one copy of the state
  waits to be written).
- An exception raised by a write, or by an action after it, is never dropped: the next ``submit``,
  ``wait`` or ``after_write`` raises it (the same exception, with a note naming the checkpoint), once.
- ``after_write(action)``: what may only happen once the checkpoint is on disk (the iteration's
  metrics logged "after the checkpoint", which a re-run of the iteration after a crash would
  otherwise log a second time) runs in the writer thread right after the write, in order, or at
  once when no write is in flight; after a failed write the queued actions are dropped.
- ``wait()`` wherever the checkpoint must be on disk: the end of a run, closing the session. The
  thread is not a daemon, so even an interpreter exit without ``wait`` lets the write finish.
- ``join()`` where only the tensors have to be read (the policy's hold): it waits like ``wait`` but
  leaves a write's error to the next ``submit``/``wait``, so an update does not fail in the
  checkpoint's place.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

import torch


def detach_containers(value: Any) -> Any:
    """``value`` (a policy's ``state()``) with its dicts, lists and tuples rebuilt and every other
    leaf but a tensor deep-copied; the tensors are the same objects (held by ``Policy.hold_state``)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        return {key: detach_containers(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(detach_containers(item) for item in value)
    return copy.deepcopy(value)


class CheckpointWriter:
    """One background write at a time, its errors raised in the caller's thread (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._busy = False  # a write, or an action queued after it, has not finished
        self._label = ""
        self._after: list[Callable[[], object]] = []
        self._error: BaseException | None = None
        self.last_write_seconds: float | None = None
        """Seconds the last finished write took (in the writer thread)."""

    @property
    def busy(self) -> bool:
        """Whether a write (or an action after it) is still running."""
        with self._lock:
            return self._busy

    def submit(self, label: str, write: Callable[[], object]) -> None:
        """Run ``write()`` in the writer thread, after the write in flight (whose error this raises).
        ``label`` names the checkpoint in the note of an error ``write`` raises."""
        self.wait()
        with self._lock:
            self._busy, self._label = True, label
        self._thread = threading.Thread(target=self._run, args=(write,), name="checkpoint-writer")
        self._thread.start()

    def after_write(self, action: Callable[[], object]) -> None:
        """Run ``action()`` once the write in flight is on disk (in the writer thread), or now when
        none is (raising first the error of a write nobody waited for)."""
        with self._lock:
            if self._busy:
                self._after.append(action)
                return
        self.wait()
        action()

    def wait(self) -> None:
        """Block until the write in flight and the actions after it are done; raise their error."""
        self.join()
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def join(self) -> None:
        """Block until the write in flight and the actions after it are done; their error (if any)
        is left for the next ``submit``, ``wait`` or ``after_write``."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self, write: Callable[[], object]) -> None:
        try:
            started = time.perf_counter()
            write()
            self.last_write_seconds = time.perf_counter() - started
            while (action := self._next_action()) is not None:
                action()
        except BaseException as error:  # raised again in the caller's thread by the next wait
            error.add_note(f"raised writing checkpoint {self._label} in the background (reinflow.run.checkpoint_writer)")
            with self._lock:
                self._error, self._after, self._busy = error, [], False

    def _next_action(self) -> Callable[[], object] | None:
        """The next queued action, or None (and the writer idle) when there is none."""
        with self._lock:
            if self._after:
                return self._after.pop(0)
            self._busy = False
            return None
