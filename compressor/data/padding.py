"""Padding-aware training on token batches (inputs with an ``attention_mask``).

Text datasets are padded to their longest sentence, so a typical batch is half padding. Three
things follow, all exact for models that honour their attention mask:

* :func:`trim_padding` cuts the columns that are padding in every row of a batch (the real
  tokens' outputs do not depend on them), and :func:`trim_tensor` cuts a cached teacher
  tensor of the untrimmed batch the same way;
* :func:`real_rows` keeps the rows of real tokens when token features are matched, so the
  student does not spend capacity imitating the teacher's states at padding positions
  (which no pooled output ever reads);
* :class:`LengthGroupedBatches` batches examples of similar length together (as Hugging Face's
  ``group_by_length`` does), so trimming removes most of the padding and a step costs what its
  real tokens cost.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

MASK_INPUT = "attention_mask"


def token_mask(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The batch's ``(batch, tokens)`` attention mask as booleans, or None without one."""
    mask = inputs.get(MASK_INPUT)
    if mask is None or mask.dim() != 2:
        return None
    return mask.bool()


def used_length(mask: torch.Tensor) -> int:
    """One past the last column that holds a real token in any row (0 for an empty mask)."""
    used = mask.any(0).nonzero()
    return int(used.max()) + 1 if len(used) else 0


def trim_padding(inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int | None]:
    """``(inputs, original length)`` with trailing all-padding columns cut from every
    ``(batch, tokens, ...)`` input; the length is None when nothing was cut."""
    mask = token_mask(inputs)
    if mask is None:
        return inputs, None
    full = mask.shape[1]
    keep = max(1, used_length(mask))
    if keep == full:
        return inputs, None
    trimmed = {
        name: value[:, :keep] if value.dim() >= 2 and value.shape[:2] == mask.shape else value
        for name, value in inputs.items()
    }
    return trimmed, full


def trim_tensor(value: torch.Tensor, full: int, keep: int) -> torch.Tensor:
    """Cut a token tensor ``(batch, full, ...)`` of the untrimmed batch to ``keep`` tokens;
    other tensors (pooled outputs, logits per example) are returned as they are."""
    if value.dim() >= 3 and value.shape[1] == full:
        return value[:, :keep]
    return value


def real_rows(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the rows of real tokens of ``(batch*tokens, features)`` row matrices made from
    ``(batch, tokens, features)`` maps; anything else passes unchanged."""
    if mask is None or not student.shape[0] == teacher.shape[0] == mask.numel():
        return student, teacher  # not token rows of this batch (a mismatch is reported later)
    keep = mask.reshape(-1)
    if not bool(keep.any()):
        return student, teacher
    return student[keep], teacher[keep]


def example_lengths(dataset: object) -> torch.Tensor | None:
    """Real tokens per example of a tensor dataset with an attention mask, else None."""
    inputs = getattr(dataset, "inputs", None)
    if not isinstance(inputs, Mapping):
        return None
    mask = token_mask(inputs)
    return mask.sum(1) if mask is not None else None


class LengthGroupedBatches:
    """Batch indices where each batch holds examples of similar length.

    Each pass shuffles all examples, cuts the order into chunks of ``group`` batches, sorts
    each chunk by length and deals it into batches, then shuffles the batches: the data are
    still seen in a random order each epoch, but a batch's longest example is close to its
    others. Deterministic for a seed; every pass (epoch) draws a new order. Under torchrun
    every rank draws the same order and takes every ``world_size``-th batch.
    """

    def __init__(
        self,
        lengths: Sequence[int] | torch.Tensor,
        batch_size: int,
        *,
        seed: int,
        group: int = 50,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.lengths = torch.as_tensor(lengths)
        self.batch_size = batch_size
        self.group = group
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def _all_batches(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __len__(self) -> int:
        return self._all_batches() // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator)
        chunk = self.batch_size * self.group  # a multiple of the batch size: one short batch
        batches: list[list[int]] = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            part = part[torch.argsort(self.lengths[part], descending=True, stable=True)]
            batches += [
                part[i : i + self.batch_size].tolist() for i in range(0, len(part), self.batch_size)
            ]
        shuffled = torch.randperm(len(batches), generator=self.generator).tolist()
        # Equal counts on every rank (DDP steps together): the remainder is left out.
        mine = shuffled[self.rank : len(self) * self.world_size : self.world_size]
        for i in mine:
            yield batches[i]
