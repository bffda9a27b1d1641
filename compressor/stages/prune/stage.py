"""The ``prune`` stage: structured pruning that physically removes units.

Each step: trace the model's coupled groups (``compressor.graph``), score every unit
(``compressor.graph.importance``), decide how many units each group loses
(``compressor.graph.schedule``), remove them, check the outputs kept their shapes. With
``steps > 1`` the amount (or target) is reached gradually, fine-tuning in between when the
plan has labelled training data.

How much each group loses, first rule that applies:

1. ``amounts: {pattern: fraction}`` — the first pattern matching the group's root module (or
   a producer, or its attention module);
2. ``heads`` for attention-head groups, ``ffn`` for the MLP width of transformer blocks,
   ``hidden`` for the hidden size (embedding width / residual stream; kept unless asked);
3. ``amount`` for every other group, or, with ``target: {params|macs: r}``, one fraction
   found by bisection so that the model keeps at most ``r`` of its original count. Each try
   is measured exactly on a throwaway (meta-tensor) copy, so the target holds as closely as
   ``round_to`` and whole heads allow.

``scope: per-layer`` removes that fraction from each group; ``scope: global`` removes it from
the pool of all such groups, lowest scores first, so groups lose different amounts.
``max_amount`` caps what any group loses; ``round_to`` keeps widths multiples of it.

``layers`` removes whole blocks (transformer layers) first, before any width is pruned: a
count, or a fraction of all blocks; the blocks whose output is most like their input (block
influence, ``compressor.graph.depth``) on calibration data (else the example inputs) go."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from compressor.counting import count_params, model_facts
from compressor.errors import StageError
from compressor.forward import call_model, is_causal_lm, primary_output
from compressor.graph import (
    FFN,
    HEADS,
    HIDDEN,
    StructureGraph,
    UnitGroup,
    check_supported,
    first_match,
)
from compressor.graph import schedule as sched
from compressor.graph.depth import blocks_to_remove, count_blocks, remove_least_influential
from compressor.graph.importance import score_groups
from compressor.graph.probe import WidthProbe, breaking_removals
from compressor.stages.prune.config import PruneConfig, fixed_amount
from compressor.stages.prune.decoder import is_decoder, prune_decoder_stage
from compressor.stages.registry import (
    register_stage,
)
from compressor.training.loop import TrainingOptions, task_loss, train


def _loss(model, batch):
    out = primary_output(call_model(model, batch.inputs))
    return task_loss(out, batch.target, causal=is_causal_lm(model))


def _batches(ctx, split: str, count: int, seed: int):
    return [b.to(ctx.device) for b in ctx.data.batches(split, count, seed=seed)]


def _scores(groups: list[UnitGroup], model, cfg: PruneConfig, ctx, seed: int):
    batches = None
    if cfg.criterion == "taylor":
        batches = _batches(ctx, "train", cfg.calibration_batches, seed)
    elif cfg.criterion == "activation":
        batches = _batches(ctx, "calibration", cfg.calibration_batches, seed)
    return score_groups(
        cfg.criterion,
        groups,
        model=model,
        batches=batches,
        loss_fn=_loss,
        run=lambda m, b: call_model(m, b.inputs),
        seed=seed,
    )


@dataclass
class PruneState:
    """What the steps of one stage share: the example inputs, the model's size at the start
    and each group's unit count when first seen (schedules count from those)."""

    inputs: dict[str, Any]
    start: dict[str, int]
    original: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    blocks: int | None = None  # blocks in the model when depth pruning first looked
    blocks_removed: int = 0

    @classmethod
    def for_model(cls, model, ctx) -> PruneState:
        inputs = {k: v.to(ctx.device) for k, v in ctx.example_inputs().items()}
        return cls(inputs, model_facts(model, inputs))


def prune_step(
    model,
    cfg: PruneConfig,
    ctx,
    state: PruneState,
    *,
    progress: float = 1.0,
    seed: int | None = None,
    importance=None,
) -> dict[str, Any]:
    """Remove units so that ``progress`` (0-1] of the stage's amounts/target is reached.

    Args:
        importance: ``importance(group) -> one score per unit`` instead of ``cfg.criterion``.

    Returns:
        The step's report entry; edit records go to ``ctx.history``.
    """
    seed = ctx.stage_seed() if seed is None else seed
    depth = depth_step(model, cfg, ctx, state, progress=progress, seed=seed)
    if not cfg.prunes_width:
        return {
            **model_facts(model, state.inputs),
            "removed": _blocks_removed(depth),
            "blocked": {},
            "units": {},
            "widths": {},
            "blocks": depth,
        }
    # Tracing a large model can take a while: say what is happening, then what it found.
    started = time.perf_counter()
    ctx.log(
        f"  tracing {type(model).__name__} ({sum(1 for _ in model.modules())} modules, "
        f"{count_params(model) / 1e6:.1f}M parameters) to find its coupled channel groups..."
    )
    graph = StructureGraph(model, state.inputs, ignore=cfg.ignore, prune_hidden=cfg.hidden_prunable)
    ctx.log(
        f"  {len(graph.groups())} groups ({len(graph.prunable())} prunable) in "
        f"{time.perf_counter() - started:.1f} s"
    )
    groups = [
        g
        for g in graph.prunable()
        if not cfg.modules or first_match(cfg.modules, g.names) is not None
    ]
    if not groups:
        raise StageError(
            "nothing to prune: no prunable group matches the stage's settings",
            hint="check 'modules'/'ignore'; compress inspect lists prunable groups",
        )
    unmatched_selectors(cfg, groups, graph.groups(), type(model).__name__)
    for g in groups:
        state.original.setdefault(g.id, g.size)
    blocked = {g.id: g.blocked for g in graph.groups() if g.blocked}
    if importance is not None:
        scores = {g.id: torch.as_tensor(importance(g), dtype=torch.float64) for g in groups}
    else:
        scores, notes = _scores(groups, model, cfg, ctx, seed)
        state.notes.extend(n for n in notes if n not in state.notes)
    goal = probe = None
    if cfg.target is not None:
        goal = int(state.start[cfg.target.what] * (1 - (1 - cfg.target.keep) * progress))
        probe = WidthProbe(model, state.inputs, ignore=cfg.ignore, prune_hidden=cfg.hidden_prunable)
    counts, fraction = plan_step(
        groups, scores, cfg, progress=progress, original=state.original, goal=goal, probe=probe
    )
    for g in groups:
        if counts.get(g.id):
            check_supported(g)
    removals = {
        g.id: sched.lowest(scores[g.id], counts[g.id], g.spans) for g in groups if counts.get(g.id)
    }
    # A group whose removal would break the forward (a module reshaping by a count it
    # stored) is kept whole, found on meta copies before the model is touched.
    broken = breaking_removals(
        model, state.inputs, removals, ignore=cfg.ignore, prune_hidden=cfg.hidden_prunable
    )
    if broken and len(broken) == len(removals):
        first, why = next(iter(broken.items()))
        raise StageError(
            f"every group this step would prune breaks {type(model).__name__}'s forward "
            f"({len(broken)} groups; {first!r}: {why})",
            hint="the model uses channel counts the engine does not see; add the failing "
            "modules to 'ignore:', or distil into a smaller model of the same family",
        )
    for group_id, why in broken.items():
        del removals[group_id]
        counts[group_id] = 0
        blocked[group_id] = f"removing its units breaks the forward: {why}"
        note = f"{group_id} kept whole: removing its units breaks the forward ({why[:160]})"
        if note not in state.notes:
            state.notes.append(note)
    if broken:
        ctx.log(
            f"  {len(broken)} groups kept whole: removing their units breaks the forward "
            f"(first: {next(iter(broken))})"
        )
    # Under torchrun, rank 0 decides and every rank removes the same units.
    removals = ctx.broadcast(removals)
    for g in groups:
        if removals.get(g.id):
            graph.remove(g, removals[g.id])
    graph.verify()
    stage = ctx.stage_name or "prune"
    ctx.history.extend({"stage": stage, **record} for record in graph.history)
    entry: dict[str, Any] = {
        **model_facts(model, state.inputs),
        "removed": {k: v for k, v in counts.items() if v},
        "blocked": blocked,
    }
    final = [g for g in graph.groups() if g.id in state.original]
    entry["units"] = {g.id: g.size for g in final}
    entry["widths"] = {g.id: g.width for g in final}
    if fraction is not None:
        entry.update(fraction=round(fraction, 4), goal=goal, probes=probe.calls)
    if depth is not None:
        entry["blocks"] = depth
        entry["removed"].update(_blocks_removed(depth))
    return entry


def _blocks_removed(depth: dict[str, Any] | None) -> dict[str, int]:
    # Dropped blocks count as removed units of their stack, so callers that ask "did this
    # step change the model?" (self-distilled pruning re-attaching its hooks) see them.
    removed: dict[str, int] = {}
    for name in (depth or {}).get("removed", []):
        stack = name.rpartition(".")[0]
        removed[stack] = removed.get(stack, 0) + 1
    return removed


def depth_step(model, cfg: PruneConfig, ctx, state: PruneState, *, progress: float, seed: int):
    """Remove the blocks due once ``progress`` of the stage's ``layers`` is done (the least
    influential first); None when none are due. Edit records go to ``ctx.history``."""
    if cfg.layers is None:
        return None
    if state.blocks is None:
        state.blocks = count_blocks(model)
    due = math.floor(blocks_to_remove(cfg.layers, state.blocks) * progress + 0.5)
    due -= state.blocks_removed
    if due <= 0:
        return None
    batches = _depth_batches(cfg, ctx, seed)
    records, report = remove_least_influential(
        model, due, batches, ignore=cfg.ignore, run=call_model
    )
    state.blocks_removed += due
    stage = ctx.stage_name or "prune"
    # "dim": "items" keeps these apart from channel edits (which carry "out"/"in").
    ctx.history.extend({"stage": stage, "unit": "blocks", "dim": "items", **r} for r in records)
    return report


def _depth_batches(cfg: PruneConfig, ctx, seed: int) -> list[dict[str, Any]]:
    if ctx.data.has("calibration"):
        batches = _batches(ctx, "calibration", cfg.calibration_batches, seed)
        if batches:
            return [b.inputs for b in batches]
    return [{k: v.to(ctx.device) for k, v in ctx.example_inputs().items()}]


def prune_once(model, cfg: PruneConfig, ctx, *, importance=None) -> dict[str, Any]:
    """All of ``cfg``'s amounts/target in one step, relative to the model as it is now
    (used by stages that prune inside their own loop, e.g. self-distilled pruning)."""
    return prune_step(model, cfg, ctx, PruneState.for_model(model, ctx), importance=importance)


def unmatched_selectors(
    cfg: PruneConfig, groups: list[UnitGroup], every: list[UnitGroup], model_type: str
) -> None:
    """Refuse a stage whose ``heads`` / ``ffn`` / ``hidden`` / ``amounts`` entry matches no
    prunable group: the run would otherwise succeed with that part silently not done (a
    "compressed" model of 1.00x when the engine does not recognise the model's attention).

    Raises:
        StageError: naming the setting that matched nothing and why, as far as is known.
    """
    wanted = [
        ("heads", cfg.heads, lambda g: g.kind == HEADS, "attention heads"),
        ("ffn", cfg.ffn, lambda g: FFN in g.tags, "transformer MLP (FFN) widths"),
        ("hidden", cfg.hidden, lambda g: HIDDEN in g.tags, "hidden-size (embedding) channels"),
    ]
    wanted += [
        (f"amounts[{pattern!r}]", value, lambda g, p=pattern: first_match({p: 0}, g.names), "")
        for pattern, value in cfg.amounts.items()
    ]
    for key, value, test, what in wanted:
        if not value or any(test(g) for g in groups):
            continue
        blocked = [g for g in every if test(g) and g.blocked]
        if blocked:
            why = f"every such group is blocked ({blocked[0].id!r}: {blocked[0].blocked})"
        elif what:
            why = f"compress found no {what} in {model_type}"
        else:
            why = "the pattern matches no prunable group"
        raise StageError(
            f"prune: {key}: {value} matched nothing to prune: {why}",
            hint="`compress inspect PLAN` lists the groups compress sees; use 'amount' or "
            "'amounts' with module patterns for this model, or drop the setting",
        )


def plan_step(
    groups: list[UnitGroup],
    scores,
    cfg: PruneConfig,
    *,
    progress: float,
    original: dict[str, int],
    goal: int | None,
    probe: WidthProbe | None,
):
    """Units each group loses once ``progress`` (0-1] of the stage is done; also the
    searched fraction (None without a target)."""
    steps = {g.id: sched.round_step(g, cfg.round_to) for g in groups}
    floors = {g.id: max(1, original[g.id] - int(cfg.max_amount * original[g.id])) for g in groups}
    counts: dict[str, int] = {}
    free = []
    for g in groups:
        fraction = fixed_amount(g, cfg)
        if fraction is None:
            free.append(g)
            continue
        # Schedules count from the original width, so every step ends on the same path.
        kept = sched.kept_units(
            original[g.id], fraction * progress, step=steps[g.id], floor=floors[g.id]
        )
        counts[g.id] = max(0, g.size - kept)
    if not free or goal is None or probe is None:
        return counts, None

    def counts_for(fraction: float) -> dict[str, int]:
        if cfg.scope == "global":
            chosen = sched.global_counts(free, scores, fraction, steps, floors)
        else:
            chosen = sched.per_layer_counts(free, fraction, steps, floors)
        return {**counts, **chosen}

    fraction, chosen, _ = sched.search_fraction(
        counts_for, lambda c: probe.measure(c, cfg.target.what), goal, what=cfg.target.what
    )
    return chosen, fraction


def _finetune(model, cfg: PruneConfig, ctx, step: int) -> dict[str, Any] | None:
    if cfg.finetune_epochs <= 0 or not ctx.data.has("train"):
        return None
    opts = TrainingOptions(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr)
    loader = ctx.data.loader("train", shuffle=True, seed=ctx.stage_seed(step))
    summary = train(
        model,
        opts,
        ctx,
        lambda m, b: (_loss(m, b), {}),
        loader=loader,
        description=f"prune step {step}/{cfg.steps}: fine-tune",
    )
    return summary.to_dict()


@register_stage("prune", PruneConfig, "Structured pruning: remove whole units, physically.")
def apply(model, cfg: PruneConfig, ctx):
    if is_decoder(model):  # a known decoder layout: edited directly, no graph search
        return prune_decoder_stage(model, cfg, ctx)
    state = PruneState.for_model(model, ctx)
    if cfg.steps > 1 and cfg.finetune_epochs > 0 and not ctx.data.has("train"):
        state.notes.append("no training data: the steps run without fine-tuning in between")
    steps = []
    for step in range(1, cfg.steps + 1):
        entry = prune_step(
            model, cfg, ctx, state, progress=step / cfg.steps, seed=ctx.stage_seed(step)
        )
        ratio = {k: entry[k] / max(state.start[k], 1) for k in ("params", "macs")}
        ctx.log(
            f"  step {step}/{cfg.steps}: params {entry['params']:,} ({ratio['params']:.3f}x),"
            f" MACs {entry['macs']:,} ({ratio['macs']:.3f}x)"
        )
        if step < cfg.steps:
            entry["finetune"] = _finetune(model, cfg, ctx, step)
        steps.append({"step": step, **entry})
    end = model_facts(model, state.inputs)
    ctx.stage_report.update(
        {
            "criterion": cfg.criterion,
            "scope": cfg.scope,
            **{
                k: {
                    "before": state.start[k],
                    "after": end[k],
                    "ratio": round(end[k] / max(state.start[k], 1), 4),
                }
                for k in end
            },
            "units": {
                gid: {"before": n, "after": steps[-1]["widths"].get(gid)}
                for gid, n in state.original.items()
            },
            "steps": steps,
            "notes": state.notes,
        }
    )
    return model
