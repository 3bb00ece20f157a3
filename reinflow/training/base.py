"""What a policy backend offers the run, whatever runs it: ``PolicyTrainer`` in this process
(``backbone: debug``) or ``RayPolicyGroup``, long-lived Ray workers (``backbone: ray``).

A new backbone plugs in by implementing :class:`Policy` and being built by
``reinflow.run.session.create_policy``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor

    from reinflow.training.train_batch import TrainSample


@runtime_checkable  # Prefect builds a parameter schema of the live objects a subflow receives
class Policy(Protocol):
    """A trainable policy: GRPO steps, weights for the engine, and a checkpointable state."""

    def train_step(
        self, samples: Sequence[TrainSample], normalizer: float | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, float]:
        """One update on the whole batch (``normalizer``: the loss normaliser of the full batch);
        returns the step's metrics. ``on_progress(done, total)`` reports progress."""
        ...

    def engine_weights(self) -> dict[str, Tensor]:
        """The weights the rollout engine should serve now (LoRA merged), by parameter name."""
        ...

    def engine_weights_later(self) -> Callable[[], dict[str, Tensor]]:
        """The weights :meth:`engine_weights` would return now, handed over when the returned function
        is called (once, from any thread): a backend that ships them from elsewhere starts shipping
        now and lets the caller wait for them later. Tensors that the next step changes in place
        must be :meth:`hold_state` until read."""
        ...

    def state(self) -> dict:
        """Everything a checkpoint needs to continue training bit for bit (weights, optimiser, RNG)."""
        ...

    def load_state(self, state: dict) -> None:
        """Continue from a :meth:`state` taken earlier."""
        ...

    def hold_state(self, until: Callable[[], object]) -> None:
        """Keep the tensors of the last :meth:`state` unchanged until ``until()`` returns: the next
        in-place change of the weights or optimiser state calls it first (a background checkpoint
        write reads them meanwhile). A backend whose ``state()`` returns copies need not wait."""
        ...

    def close(self) -> None:
        """Release what the policy holds beyond memory (worker processes); idempotent."""
        ...
