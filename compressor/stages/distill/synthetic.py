"""What a distillation stage trains on: training data, unlabelled inputs, or synthetic ones.

Distillation needs only inputs: the teacher provides the targets. When the plan has no
training data, the distill stage reads unlabelled inputs (a ``.txt`` file tokenized with the
model's tokenizer, or a tensors file), and as a last resort draws synthetic inputs matching
the model's example inputs: their shape, dtype and value range (``low``/``high`` of
``model.inputs``, else the range of the real example batch, else a standard normal).
Token ids are drawn uniformly from ``[low, high)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from compressor.data.batches import NamedTensorDataset, few_shot_subset
from compressor.data.sources import load_source, parse_source
from compressor.errors import DataError, StageError
from compressor.forward import TORCH_DTYPES, call_model, primary_output


def synthetic_dataset(
    specs: Mapping[str, Any],
    size: int,
    *,
    seed: int = 0,
    example: Mapping[str, torch.Tensor] | None = None,
) -> NamedTensorDataset:
    """``size`` synthetic examples shaped like ``model.inputs`` (batch axis replaced).

    Args:
        specs: the model's input specs (shape with batch first, dtype, optional low/high).
        size: number of examples.
        seed: the random seed (same seed, same inputs).
        example: a real example batch; its range is used for float inputs without low/high.
    """
    if not specs:
        raise DataError(
            "synthetic inputs need model.inputs (shapes and dtypes)",
            hint="give model.inputs, or training data",
        )
    generator = torch.Generator().manual_seed(seed)
    inputs: dict[str, torch.Tensor] = {}
    for name, spec in specs.items():
        shape = [size, *list(spec.shape)[1:]]
        dtype = TORCH_DTYPES[spec.dtype]
        low, high = spec.low, spec.high
        if dtype.is_floating_point:
            if (low is None or high is None) and example is not None and name in example:
                real = example[name].float()
                low = float(real.min()) if low is None else low
                high = float(real.max()) if high is None else high
            if low is not None and high is not None and high > low:
                t = torch.rand(shape, generator=generator) * (high - low) + low
            else:
                t = torch.randn(shape, generator=generator)
            inputs[name] = t.to(dtype)
        elif dtype == torch.bool:
            inputs[name] = torch.ones(shape, dtype=torch.bool)  # masks: attend everywhere
        else:
            lo = int(low) if low is not None else 0
            hi = int(high) if high is not None else 2
            inputs[name] = torch.randint(lo, hi, shape, generator=generator, dtype=dtype)
    return NamedTensorDataset(inputs)


def unlabelled_dataset(source: str, data: Any) -> Any:
    """Load a data source for its inputs (labels, if any, are kept but not required).

    Args:
        source: a data-source string (``.txt``, tensors file, ``module:function``...).
        data: the run's :class:`~compressor.data.bundle.DataBundle` (layout, tokenizer, safety).
    """
    ref = parse_source(source, data.base_dir)
    return load_source(
        ref,
        data.layout,
        safe=data.safe,
        tokenizer=data.tokenizer,
        label_names=data.spec.label_names,
    )


def training_dataset(
    ctx: Any, choice: str, *, few_shot: int | None = None, synthetic_size: int = 2048
) -> tuple[Any, str]:
    """The examples a distillation stage trains on, and where they come from.

    Args:
        ctx: the RunContext.
        choice: ``train``, ``synthetic``, ``auto`` (train when the plan has it, else
            synthetic) or a data-source string of unlabelled inputs.
        few_shot: keep this many labelled examples per class (training data only).
        synthetic_size: the number of synthetic examples.

    Raises:
        StageError: few_shot without labelled training data.
    """
    if choice == "auto":
        choice = "train" if ctx.data.has("train") else "synthetic"
    if choice == "train":
        dataset = ctx.data.dataset("train")
        if few_shot is not None:
            dataset = few_shot_subset(dataset, few_shot, ctx.stage_seed())
            return dataset, f"train (few_shot: {few_shot} per class, {len(dataset)} examples)"
        return dataset, "train"
    if few_shot is not None:
        raise StageError("few_shot needs data: train (labelled examples)")
    if choice == "synthetic":
        try:
            example = ctx.example_inputs()
        except StageError:
            example = None
        dataset = synthetic_dataset(
            ctx.input_specs, synthetic_size, seed=ctx.stage_seed(1), example=example
        )
        return dataset, f"synthetic ({synthetic_size} examples)"
    return unlabelled_dataset(choice, ctx.data), f"unlabelled {choice}"


def has_labels(dataset: Any) -> bool:
    """Whether the examples of ``dataset`` carry targets."""
    if isinstance(dataset, NamedTensorDataset):
        return dataset.target is not None
    try:
        return dataset[0][1] is not None
    except (TypeError, IndexError, KeyError):
        for batch in dataset:
            return getattr(batch, "target", None) is not None
    return False


def refine_synthetic(
    teacher: torch.nn.Module,
    dataset: NamedTensorDataset,
    specs: Mapping[str, Any],
    *,
    steps: int,
    classify: bool,
    batch_size: int = 256,
    lr: float = 0.05,
    seed: int = 0,
) -> tuple[NamedTensorDataset, dict[str, Any]]:
    """Optimise drawn float inputs so the teacher sees something like its training data.

    Random draws are far from any real input: a digits classifier calls nearly all of them
    the same class, and distilling on them teaches the student little (or harm). Following
    DeepInversion (Yin et al. 2020), each input is moved, by ``steps`` of Adam on the input,
    towards (a) the teacher confidently predicting an assigned class (classes spread evenly,
    when ``classify``) and (b) the batch statistics at every batch-norm layer of the teacher
    matching its running statistics. Inputs stay within ``low``/``high`` where given.
    Integer inputs (token ids) cannot be optimised by gradient and are returned as drawn.

    Returns:
        The refined dataset and what was done (for the stage report).
    """
    floats = [n for n, t in dataset.inputs.items() if t.is_floating_point()]
    norms = [m for m in teacher.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if steps <= 0 or not floats or (not classify and not norms):
        return dataset, {"refined": False}

    device = next(teacher.parameters()).device
    stat_losses: list[torch.Tensor] = []

    def match_stats(module, inputs, _output):
        a = inputs[0]
        dims = [d for d in range(a.dim()) if d != 1]
        mean, var = a.mean(dims), a.var(dims, unbiased=False)
        stat_losses.append((mean - module.running_mean).norm() + (var - module.running_var).norm())

    handles = [m.register_forward_hook(match_stats) for m in norms]
    generator = torch.Generator().manual_seed(seed)
    refined = {n: t.clone() for n, t in dataset.inputs.items()}
    final_loss = None
    try:
        for start in range(0, len(dataset), batch_size):
            batch = {n: t[start : start + batch_size].to(device) for n, t in refined.items()}
            params = [batch[n].requires_grad_(True) for n in floats]
            optimizer = torch.optim.Adam(params, lr=lr)
            labels = None
            for _ in range(steps):
                stat_losses.clear()
                out = primary_output(call_model(teacher, batch)).float()
                loss = torch.stack(stat_losses).sum() if stat_losses else out.new_zeros(())
                if classify:
                    out = out.reshape(-1, out.shape[-1])
                    if labels is None:  # every class equally often, in a seeded order
                        order = torch.randperm(len(out), generator=generator)
                        labels = (order % out.shape[-1]).to(out.device)
                    loss = loss + torch.nn.functional.cross_entropy(out, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for n in floats:
                        low, high = specs[n].low, specs[n].high
                        if low is not None or high is not None:
                            batch[n].clamp_(min=low, max=high)
            final_loss = float(loss.detach())
            for n in floats:
                refined[n][start : start + batch_size] = batch[n].detach().cpu()
    finally:
        for handle in handles:
            handle.remove()
    info = {
        "refined": True,
        "steps": steps,
        "final_loss": final_loss,
        "batchnorm_layers": len(norms),
        "class_targets": classify,
    }
    return NamedTensorDataset(refined, dataset.target), info
