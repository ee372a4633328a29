"""Checkpoint cadence, exactly as the zo platform's model-builder follows it."""

from __future__ import annotations

__all__ = ["should_checkpoint"]


def should_checkpoint(epoch: int, total_epochs: int, every: int = 10, is_best: bool = False) -> bool:
    """Whether to save a checkpoint after ``epoch`` (counting from 0).

    Rules, in order: a new best always saves; no epochs (``total_epochs <= 0``) or a negative
    epoch never does; the last epoch (``total_epochs - 1``) always does; otherwise every
    ``every``-th epoch does (``every`` below 1 counts as 1).

    >>> [e for e in range(25) if should_checkpoint(e, 25)]
    [9, 19, 24]
    """
    if is_best:
        return True
    if total_epochs <= 0 or epoch < 0:
        return False
    if epoch == total_epochs - 1:
        return True
    return (epoch + 1) % max(1, every) == 0
