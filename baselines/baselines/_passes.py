"""What every multi-pass baseline needs around its passes (SAM, Vaccine, ...)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def own_gradients(params: list):
    """Run the block on empty gradients, then add back the gradients earlier micro-batches of the
    same optimiser step had accumulated: a multi-pass update must not see or wipe them."""
    earlier = [p.grad for p in params]
    for p in params:
        p.grad = None
    yield
    for p, before in zip(params, earlier):
        if before is not None:
            p.grad = before if p.grad is None else p.grad + before


def clear_gradients(params: list) -> None:
    for p in params:
        p.grad = None
