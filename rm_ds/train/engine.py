"""The DeepSpeed engine and the optimizer step with exact pair-count scaling.

Why the scaling: DeepSpeed averages gradients over ranks and, by default, divides each micro-step's
loss by the accumulation count. With micro-batches holding different numbers of pairs (token-budget
packing, uneven ranks) that weights pairs unequally. Here each step first sums the pair count over
ranks once (N), then every micro-step backpropagates ``sum(per-pair loss) * world_size / N`` with
DeepSpeed's own 1/GAS scaling turned off. After DeepSpeed's mean over ranks the accumulated gradient
is exactly the gradient of (1/N) * sum over all N pairs of the step, however they were split.
On ZeRO-0 in fp32 rm_ds sums the gradients over ranks itself (in place, ``dist.all_reduce_sum_``; the
embedding tables by the rows a step touched only) and clips them once, so there the scale is ``1 / N``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import deepspeed
import torch
import transformers
from transformers.integrations import HfDeepSpeedConfig

from rm_ds.cluster import dist
from rm_ds.config import TrainConfig
from rm_ds.train.ds_config import zero_stage
from rm_ds.train.loss import LossFn
from rm_ds.model import rewards


@dataclass
class StepStats:
    loss: float
    """Mean per-pair loss over the global step."""
    accuracy: float
    """Share of pairs with r_c > r_r (ties count half)."""
    margin: float
    """Mean r_c - r_r."""
    n_pairs: int
    """Pairs in the global step."""
    real_tokens: int
    """Non-pad tokens computed over all ranks."""
    computed_tokens: int
    """Tokens computed (pad included) over all ranks."""
    unshared_tokens: int
    """Real tokens the padded two-row layout would compute (prompt twice) over all ranks."""
    micro_steps: int
    """Micro-steps this step took on each rank."""
    grad_norm: float | None
    lr: float
    nonfinite_micro: int | None = None
    """This rank's first micro-batch whose loss was NaN or inf (None: all finite)."""


@contextlib.contextmanager
def model_build_context(ds_config: dict):
    """Inside this context a ZeRO-3 config makes transformers build the model partitioned.

    The HfDeepSpeedConfig must stay alive while the model is created and is dropped afterwards
    (while it lives, every model build runs collectives).
    """
    if zero_stage(ds_config) == 3:
        hf_ds = HfDeepSpeedConfig(ds_config)
        try:
            yield
        finally:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            del hf_ds
            unset_hf_deepspeed_config()
    else:
        yield


def build_engine(model, ds_config: dict, train: TrainConfig, *, total_steps: int, head: str | None = None,
                 head_lr: float | None = None):
    """deepspeed.initialize with a client AdamW (no FusedAdam JIT on CPU) and a warmup schedule.

    With ``head_lr`` (LoRA's ``lora.head_lr``) the reward head (named ``head``) gets its own learning
    rate; the schedule scales both groups alike. ``train`` gives the optimizer and schedule settings.
    """
    t = train
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if head_lr is not None and head is not None:
        from rm_ds.model import is_head_param

        groups = [{"params": [p for n, p in named if not is_head_param(n, head)], "lr": t.lr},
                  {"params": [p for n, p in named if is_head_param(n, head)], "lr": head_lr}]
    else:
        groups = [{"params": [p for _, p in named], "lr": t.lr}]
    if zero_stage(ds_config) == 3 and ds_config["bf16"]["enabled"]:
        # parameters created after zero.Init (LoRA adapters) must share ZeRO's bf16 dtype, or its
        # defragmentation fails on mixed dtypes
        for p in model.parameters():
            if not hasattr(p, "ds_id"):
                p.data = p.data.to(torch.bfloat16)
    # the fused kernel (no temporaries; 14 ms against 85 ms for 22.7M parameters on 2 CPU cores), as TRL's default
    optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=t.adam_betas, eps=t.adam_eps, weight_decay=t.weight_decay,
                                  fused=_fused_adamw_ok(model))
    scheduler = transformers.get_scheduler(
        "constant_with_warmup" if t.lr_scheduler == "constant" else t.lr_scheduler,
        optimizer, num_warmup_steps=math.ceil(t.warmup_ratio * total_steps), num_training_steps=total_steps)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False)
    if clips_itself(engine):
        # ZeRO-0 fp32: train_step sums the gradients itself (dist.all_reduce_sum_, in place). DeepSpeed's own
        # path flattens every gradient into one buffer, all-reduces it and copies it back: 84 ms of a 219 ms
        # step of a 12M model on 2 ranks x 1 thread here, 22 ms on one rank, where it reduces with itself
        engine.enable_backward_allreduce = False
    return engine


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX or AVX512-BF16; Linux's /proc/cpuinfo flags)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return True  # unknown: say nothing
    return "amx_bf16" in flags or "avx512_bf16" in flags


def clips_itself(engine) -> bool:
    """ZeRO-0 in fp32: the path on which ``train_step`` reduces the gradients over ranks and clips them
    (``build_ds_config`` leaves DeepSpeed's clipping off there)."""
    return zero_stage(engine.config) == 0 and not engine.bfloat16_enabled()


def _fused_adamw_ok(model) -> bool:
    """torch's fused AdamW takes floating parameters on CPU or CUDA (ZeRO flattens them later, same devices)."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())


STEP_SUMS = ("loss", "correct", "margin", "real_tokens", "computed_tokens", "unshared_tokens")
"""What a step sums over its micro-batches and ranks (float64, one all-reduce for all of them)."""


def train_step(engine, micro_batches: list[dict], *, loss_fn: LossFn, world_size: int,
               autocast: torch.dtype | None = None, max_grad_norm: float = 0.0) -> StepStats:
    """One optimizer step over this rank's micro-batches (every rank passes the same count).

    ``loss_fn(chosen, rejected, batch)`` returns the per-pair loss; the step masks filler pairs and
    reduces it once by the global pair count. With several objectives the count is that of labelled
    (pair, objective) entries (``batch["n_terms"]``), and the stats are means over those entries.
    ``autocast`` (``model.dtype=bf16-mixed``: torch.bfloat16) runs the forwards under torch.autocast.
    ``max_grad_norm`` (``train.max_grad_norm``) is applied here on the ZeRO-0 fp32 path (``clips_itself``);
    DeepSpeed clips the others from its config.
    """
    # from_pretrained returns the model in eval mode and scoring switches to it: dropout needs train mode
    engine.train()
    local_pairs = sum(b.get("n_terms", b["n_pairs"]) for b in micro_batches)
    global_pairs = float(dist.all_reduce_sum([local_pairs])[0])  # the one all-reduce of counts
    if global_pairs <= 0:
        raise RuntimeError("optimizer step with no pairs on any rank")
    own_reduce = clips_itself(engine)  # gradients summed over ranks here, not averaged by DeepSpeed
    scale = (1.0 if own_reduce else world_size) / global_pairs
    sums = {k: torch.zeros((), dtype=torch.float64) for k in STEP_SUMS}
    nonfinite, own_norm = None, None
    for i, batch in enumerate(micro_batches):
        engine.set_gradient_accumulation_boundary(i == len(micro_batches) - 1)
        with torch.autocast(engine.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            chosen, rejected = rewards(engine, batch)
        per_pair = loss_fn(chosen, rejected, batch)
        mask = batch["pair_mask"]
        # scale the summed loss so the accumulated, rank-reduced gradient is the mean over all pairs
        micro_loss = (per_pair * mask).sum()
        if nonfinite is None and not bool(torch.isfinite(micro_loss.detach())):
            nonfinite = i
        engine.backward(micro_loss * scale, scale_wrt_gas=False)
        if i == len(micro_batches) - 1 and own_reduce:
            grads, row_sparse = _grads(engine)
            dist.all_reduce_sum_(grads, row_sparse=row_sparse)
            own_norm = _clip(grads, max_grad_norm)
        elif i == len(micro_batches) - 1 and zero_stage(engine.config) == 0:
            # DeepSpeed's bf16 ZeRO-0 may clip without keeping the norm
            own_norm = _clip([p.grad for p in engine.module.parameters() if p.grad is not None], 0.0)
        engine.step()
        with torch.no_grad():
            diff = (chosen - rejected).double()
            correct = (diff > 0).double() + 0.5 * (diff == 0).double()
            entries = mask.double() if diff.dim() == 1 else _labelled(batch, diff) * mask.double()[:, None]
            sums["loss"] += (per_pair.double() * mask).sum()
            sums["correct"] += (correct * entries).sum()
            sums["margin"] += (diff * entries).sum()
            sums["real_tokens"] += float(batch["real_tokens"])
            sums["computed_tokens"] += float(batch["computed_tokens"])
            sums["unshared_tokens"] += float(batch.get("unshared_tokens", batch["real_tokens"]))
    g = dict(zip(STEP_SUMS, dist.all_reduce_sum(torch.stack([sums[k] for k in STEP_SUMS])).tolist()))
    grad_norm = engine.get_global_grad_norm()
    if grad_norm is None:
        grad_norm = own_norm
    return StepStats(loss=g["loss"] / global_pairs, accuracy=g["correct"] / global_pairs,
                     margin=g["margin"] / global_pairs, n_pairs=int(global_pairs), real_tokens=int(g["real_tokens"]),
                     computed_tokens=int(g["computed_tokens"]), unshared_tokens=int(g["unshared_tokens"]),
                     micro_steps=len(micro_batches), grad_norm=None if grad_norm is None else float(grad_norm),
                     lr=float(engine.get_lr()[0]), nonfinite_micro=nonfinite)


def _grads(engine) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """Every trainable parameter's gradient, zeros where a rank's micro-batches did not reach a parameter
    (so that every rank all-reduces the same list), and the positions of the embedding tables among them
    (row-sparse: a step's gradient is non-zero only in the rows of the tokens it read)."""
    tables = {id(m.weight) for m in engine.module.modules() if isinstance(m, torch.nn.Embedding)}
    out, row_sparse = [], []
    for p in engine.module.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dense_table = id(p) in tables and p.dim() == 2 and p.grad.layout == torch.strided
            if dense_table and p.numel() >= dist.GRAD_BUCKET_MIN:
                row_sparse.append(len(out))
            out.append(p.grad)
    return out, tuple(row_sparse)


def _clip(grads: list[torch.Tensor], max_norm: float) -> float:
    """L2 norm of the whole (rank-summed) gradients; scales them to ``max_norm`` when it is > 0 and exceeded
    (torch's foreach kernels: one pass, no copies)."""
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    if max_norm > 0:  # torch.nn.utils.clip_grad_norm_'s rule
        torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
    return float(norm)


def _labelled(batch: dict, diff: torch.Tensor) -> torch.Tensor:
    """(B, K) 0/1: which (pair, objective) entries are labelled (none in a filler batch)."""
    lab = batch.get("labelled")
    return torch.zeros_like(diff) if lab is None else lab.double()


@torch.no_grad()
def score_batches(engine, micro_batches: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rewards for eval micro-batches (every rank runs the same number of forwards, fillers included)."""
    was_training = engine.module.training
    engine.eval()
    out = [rewards(engine, b) for b in micro_batches]
    if was_training:
        engine.train()
    return out


def gathered_state_dict(engine) -> dict[str, torch.Tensor]:
    """The full weights on every rank (ZeRO-3 partitions are gathered), detached CPU copies."""
    named = list(engine.module.named_parameters())
    if zero_stage(engine.config) == 3:
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().float().cpu().clone() for n, p in named}
    return {n: p.detach().float().cpu().clone() for n, p in named}


# ------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(engine, root: str, tag: str, client_state: dict) -> None:
    """DeepSpeed's sharded checkpoint (model, optimizer, scheduler), without touching ``latest``."""
    engine.save_checkpoint(root, tag=tag, client_state=client_state, save_latest=False)


def load_checkpoint(engine, root: str, tag: str) -> dict:
    """Restore model, optimizer and scheduler states; returns the client state saved with them."""
    path, client_state = engine.load_checkpoint(root, tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"{root}/{tag}: DeepSpeed found no checkpoint to load")
    return client_state or {}
