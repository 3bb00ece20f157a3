"""Which engine replica serves a request: the driver-side routing of ``RayEngineReplicas`` (pure).

``ReplicaRouter`` sends a request to the replica with the fewest requests in flight (ties: the one
that was sent fewer so far), except that a prompt *extending* a prompt recently sent to a replica
(it starts with that whole prompt: the same GRPO group's prompt, or an agent's next turn re-sending
its conversation) goes to that replica, whose prefix cache holds it, as long as that replica has
fewer than ``capacity`` (its ``max_batch_size``) requests in flight: a full replica would queue it,
so then the least busy one takes it. Each replica remembers its last ``RECENT_PROMPTS`` prompts of
at least ``MIN_AFFINE_TOKENS`` tokens.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

RECENT_PROMPTS = 256
"""Prompts remembered per replica for routing an extension back to it (the last ones sent)."""
MIN_AFFINE_TOKENS = 8
"""Shorter remembered prompts do not pull requests to a replica (the engine reuses no shorter prefix)."""


class ReplicaRouter:
    """Which replica serves a request: least in flight, prefix affinity (see the module docstring).

    ``pick(prompt)`` chooses and counts the request in flight; ``done(replica)`` when it ends."""

    def __init__(self, replicas: int, capacity: int, recent: int = RECENT_PROMPTS) -> None:
        self.capacity = capacity
        self.in_flight = [0] * replicas
        self.sent = [0] * replicas
        self.recent: list[deque[list[int]]] = [deque(maxlen=recent) for _ in range(replicas)]

    def pick(self, prompt: Sequence[int]) -> int:
        """The replica for ``prompt``, counted in flight (and the prompt remembered there)."""
        prompt = list(prompt)
        least = min(range(len(self.in_flight)), key=lambda r: (self.in_flight[r], self.sent[r], r))
        affine = self.affine(prompt)
        chosen = affine if affine is not None and self.in_flight[affine] < self.capacity else least
        self.in_flight[chosen] += 1
        self.sent[chosen] += 1
        if len(prompt) >= MIN_AFFINE_TOKENS:
            self.recent[chosen].append(prompt)
        return chosen

    def done(self, replica: int) -> None:
        """A request ``pick`` sent to ``replica`` ended (answered, failed or cancelled)."""
        self.in_flight[replica] -= 1

    def affine(self, prompt: list[int]) -> int | None:
        """The replica holding the longest remembered prompt that ``prompt`` starts with (ties: the
        one with fewer in flight), or ``None``."""
        best: tuple[int, int] | None = None  # (length, -in_flight)
        chosen = None
        for replica, remembered in enumerate(self.recent):
            for old in remembered:
                n = len(old)
                if n > len(prompt) or prompt[n - 1] != old[-1] or prompt[:n] != old:
                    continue
                key = (n, -self.in_flight[replica])
                if best is None or key > best:
                    best, chosen = key, replica
        return chosen

    @property
    def busy(self) -> int:
        """Requests in flight over all replicas."""
        return sum(self.in_flight)
