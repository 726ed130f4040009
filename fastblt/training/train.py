"""``fastblt train``: train the entropy model, a BLT, or a BLT-D on the byte corpus.

Objectives (``--objective``):
- ``entropy``: the small causal byte LM of the preset (``cfg.entropy``), next-byte CE (BLT §2.3).
  It is trained inside a full BLT model as ``model.patcher`` (the rest stays frozen and untouched),
  so its checkpoint is an ordinary fastblt checkpoint. Calibrate its threshold afterwards with
  ``python -m fastblt.training.calibrate``.
- ``blt``: next-byte CE; patches from the frozen, calibrated entropy model (``--entropy-model``).
- ``bltd``: BLT-D, L_clean + L_mask (Fast BLT §3.2) with block size ``--block-size``; which blocks
  are scored and how L_mask is weighed: ``--blocks``, ``--block-stride``, ``--fused-frac``,
  ``--mask-norm``, ``--distill`` (:class:`fastblt.training.objectives.BLTDLoss`).

Warm start (``--init-from DIR``, not in the paper): start from a trained BLT or BLT-D of the same
shape; its entropy model and patching come along (no ``--entropy-model`` needed). A plain BLT's
byte table gets fresh MASK / BLOCK_PAD rows.

Optimisation (Fast BLT §4, App. A; BLT §4.8): AdamW β 0.9/0.95, ε 1e-8, weight decay 0.1 on matrices, linear
warmup then cosine to 0 over ``--steps``, global grad-norm clip 1.0.

Run folder (:mod:`fastblt.training.state`): an existing run is refused unless ``--resume`` or
``--overwrite``; ``OUT/.lock`` allows one training per folder; Ctrl-C or SIGTERM stops after the
current step and saves; crashed saves are repaired at the next start.

The loop: :func:`resume` (checkpoint → model, optimizer, RNGs), :class:`Batches` (this rank's rows),
:func:`train_step` (one AdamW step), :class:`RunLogger` (log.jsonl, progress bar).

Multi-process: ``torchrun --nproc_per_node K -m fastblt.cli train ...`` runs DistributedDataParallel
(gloo on CPU, NCCL on CUDA). Rank r takes rows [r·b/K, (r+1)·b/K) of every global batch (rows
are deterministic per (seed, step, row)); only rank 0 logs and saves.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .. import checkpoint
from ..commands.train import add_arguments  # noqa: F401  (the flags live in commands/train.py)
from ..config import preset
from ..data.dataset import VAL_SEED, ByteDataset, open_split
from ..model.blt import BLT
from . import state as S
from .objectives import LN2, BLTDLoss, Objective, mask_denominator_of
from .state import resolve_model_dir

__all__ = ["VAL_SEED", "add_arguments", "open_split", "resolve_model_dir", "run"]  # open_split etc.: re-exported


# ---------------------------------------------------------------------------- setup helpers
def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def check_memory(model: torch.nn.Module, trainable: int) -> None:
    """Refuse configs whose fp32 AdamW training state (≈ 16 bytes per trainable parameter, plus 4 per
    frozen one) cannot fit into the available RAM."""
    total = sum(p.numel() for p in model.parameters())
    need = 16 * trainable + 4 * (total - trainable)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > avail:
        raise RuntimeError(f"config too large for memory: {trainable / 1e6:.1f}M trainable parameters need about "
                           f"{need / 2**30:.1f} GiB for weights + AdamW state (fp32), only {avail / 2**30:.1f} GiB available")


def load_entropy_run(path: str | Path) -> tuple[BLT, dict[str, Any]]:
    """(model holding the trained patcher, calibration dict) of an entropy run folder."""
    if path is None:
        raise ValueError("--entropy-model DIR is required for the blt and bltd objectives "
                         "(train one with --objective entropy, then calibrate it)")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--entropy-model {p} does not exist")
    ent = checkpoint.load(resolve_model_dir(p))
    for cal in (p / "calibration.json", p.parent / "calibration.json"):
        if cal.exists():
            return ent, json.loads(cal.read_text())
    raise FileNotFoundError(f"{p} has no calibration.json: run `python -m fastblt.training.calibrate "
                            f"--entropy-model {p}` first")


def _init_objective(path: Path) -> str | None:
    """The objective a model folder was trained with, where its files say so (None: unknown)."""
    cfg = json.loads((path / checkpoint.CONFIG_NAME).read_text())
    if isinstance(cfg.get("training"), dict) and cfg["training"].get("objective"):
        return str(cfg["training"]["objective"])
    if (path / S.STATE_NAME).exists() or (path / S.LEGACY_STATE_NAME).exists():
        try:
            return str(S.load_trainer_state(path).get("extra", {}).get("objective") or "") or None
        except Exception:  # noqa: BLE001 - a state we cannot read tells us nothing
            return None
    return None


def warm_start(model: BLT, path: str | Path, objective: str, src: BLT | None = None) -> BLT:
    """Copy a trained model's weights into ``model`` (same shape), patcher and patching included.

    A plain BLT's encoder byte table (260 rows) fills the first rows of a BLT-D's (262); MASK and
    BLOCK_PAD keep their fresh initialisation; ``src``: the model at ``path`` if already loaded.
    Raises ValueError for a model of another shape, an entropy-model run, or a BLT-D trained for
    another block size.
    """
    src_dir = resolve_model_dir(path)
    kind = _init_objective(src_dir)
    if kind == "entropy":
        raise ValueError(f"--init-from {src_dir}: an entropy-model run, not a trained BLT (objective {objective})")
    src = (src if src is not None else checkpoint.load(src_dir)).float()
    a, b = src.cfg, model.cfg
    src_b, dst_b = a.diffusion_block_size, b.diffusion_block_size
    if src_b is not None and dst_b is not None and src_b != dst_b:
        raise ValueError(f"--init-from {src_dir} is a BLT-D trained for block size B = {src_b}, "
                         f"not the requested B = {dst_b}")
    shape = ("encoder", "global_", "decoder", "entropy", "cross_attn_k", "encoder_cross_attn_all_layers",
             "decoder_cross_attn_all_layers", "hash_ngram_sizes", "hash_vocab", "hash_functions", "double_residual",
             "global_input_dim")
    diff = {f: (getattr(a, f, None), getattr(b, f, None)) for f in shape if getattr(a, f, None) != getattr(b, f, None)}
    if diff:
        raise ValueError(f"--init-from {src_dir} has another shape than the run's model: "
                         + ", ".join(f"{k}: {x} (checkpoint) vs {y} (run)" for k, (x, y) in diff.items()))
    sd = src.state_dict()
    own = model.state_dict()
    for k, v in own.items():
        w = sd[k]
        if w.shape != v.shape and k == "local_encoder.embed_tokens.weight" and w.shape[0] <= v.shape[0]:
            w = torch.cat([w, v[w.shape[0]:]], 0)
        own[k] = w
    model.load_state_dict(own)
    return model


def build_model(args: argparse.Namespace) -> BLT:
    """A fresh model for the run; blt/bltd get the trained patcher and calibrated threshold
    (from ``--entropy-model``, or from the ``--init-from`` model)."""
    cfg = preset(args.preset, diffusion_block_size=args.block_size if args.objective == "bltd" else None)
    if args.objective != "entropy" and args.init_from is not None:
        src_dir = resolve_model_dir(args.init_from)
        src = checkpoint.load(src_dir)
        cfg.entropy, cfg.patching = src.cfg.entropy, src.cfg.patching
        torch.manual_seed(args.seed)
        return warm_start(BLT(cfg), src_dir, args.objective, src)
    if args.objective != "entropy":
        ent, cal = load_entropy_run(args.entropy_model)
        cfg.entropy = ent.cfg.entropy
        cfg.patching.mode = "entropy"
        cfg.patching.threshold = float(cal["threshold"])
        cfg.patching.max_patch_length = cal.get("max_patch_length", cfg.patching.max_patch_length)
    torch.manual_seed(args.seed)
    model = BLT(cfg)
    if args.objective == "entropy":
        model.requires_grad_(False)
        model.patcher.requires_grad_(True)
    else:
        model.patcher.load_state_dict(ent.patcher.state_dict())
        model.patcher.requires_grad_(False)
    return model


def _run_config(args: argparse.Namespace) -> dict[str, Any]:
    skip = ("resume", "no_progress", "threads", "stop_after_steps", "time_budget_min", "debug_nan_at_step")
    return {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in skip}


_MUST_MATCH = ("objective", "preset", "block_size", "steps", "batch_size", "seq_len", "seed", "lr", "warmup",
               "entropy_model", "data", "weight_decay", "grad_clip", "blocks", "block_stride", "fused_frac",
               "mask_norm", "distill", "init_from", "self_data", "self_rows")


def bltd_loss_config(args: argparse.Namespace) -> BLTDLoss:
    """The BLT-D loss configuration of the command line (raises ValueError for bad values)."""
    return BLTDLoss(args.block_size, args.blocks, args.block_stride, args.fused_frac, args.mask_norm, args.distill)


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(objective: Objective, val: ByteDataset, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Mean val loss over ``--eval-batches`` fixed val batches: {"val_bpb", ("val_mask")}."""
    model = objective.model
    was = model.training
    model.eval()
    ce = mask = 0.0
    for i in range(args.eval_batches):
        row = val.sample_batch(i, args.batch_size, args.seq_len, seed=VAL_SEED).to(device)
        _, stats = objective(row, step=i)
        ce += float(stats["ce"])
        mask += float(stats.get("mask", 0.0))
    model.train(was)
    out = {"val_bpb": ce / args.eval_batches / LN2}
    if objective.kind == "bltd":
        out["val_mask"] = mask / args.eval_batches
    return out


def plot_curves(log_path: Path, png_path: Path) -> None:
    """Train (bpb, total loss) and val bpb curves from log.jsonl → PNG (matplotlib Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    tr = [r for r in recs if "loss" in r]
    va = [r for r in recs if "val_bpb" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if tr:
        ax.plot([r["step"] for r in tr], [r["bpb"] for r in tr], lw=0.8, alpha=0.7, label="train bpb (next byte)")
        if any(r["loss"] / LN2 != r["bpb"] for r in tr):
            ax.plot([r["step"] for r in tr], [r["loss"] / LN2 for r in tr], lw=0.8, alpha=0.5, label="train total loss / ln2")
    if va:
        ax.plot([r["step"] for r in va], [r["val_bpb"] for r in va], "o-", label="val bpb")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- the loop
class _StopFlag:
    """The first Ctrl-C (SIGINT) or SIGTERM (what cluster schedulers send) asks the loop to stop at
    the next step boundary and save; a second one aborts."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = signal.Signals(signum).name
        print(f"\nfastblt: {name} — stopping after this step and saving (send it again to abort)", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class RunLogger:
    """``log.jsonl`` (one flushed JSON line per record), the progress bar and the start/end lines.

    On resume the log keeps the records up to the checkpoint's step (a torn last line, from a crash
    mid-write, is dropped with a message); a fresh run starts an empty log. Only rank 0 writes.
    """

    def __init__(self, out: Path, step: int, args: argparse.Namespace, enabled: bool):
        self.path, self.enabled, self.ema_bps, self.last_eval = out / "log.jsonl", enabled, None, {}
        self.file = self.bar = None
        if not enabled:
            return
        keep = S.read_log(self.path, upto_step=step) if args.resume else []
        checkpoint.atomic_write_bytes(self.path, b"".join(json.dumps(r).encode() + b"\n" for r in keep))
        self.file = open(self.path, "a")
        if not args.no_progress:
            from tqdm import tqdm
            self.bar = tqdm(total=args.steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)

    def __call__(self, rec: dict[str, Any]) -> None:
        if "bytes_per_s" in rec:
            self.ema_bps = rec["bytes_per_s"] if self.ema_bps is None else 0.9 * self.ema_bps + 0.1 * rec["bytes_per_s"]
        if "val_bpb" in rec:
            self.last_eval = {k: v for k, v in rec.items() if k.startswith("val_")}
        if self.file is not None:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
        if self.bar is not None and "loss" in rec:
            post = {"loss": f"{rec['loss']:.3f}", "bpb": f"{rec['bpb']:.3f}", "B/s": f"{self.ema_bps:.0f}"}
            if self.last_eval:
                post["val"] = f"{self.last_eval['val_bpb']:.3f}"
            self.bar.set_postfix(post)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        self.bar = self.file = None


def resume(out: Path, model: BLT, optimizer: torch.optim.Optimizer, run_config: dict[str, Any]) -> int:
    """Load ``out``'s last checkpoint into ``model``/``optimizer`` and the RNGs; returns its step.

    Raises FileNotFoundError without a checkpoint, ValueError when the run config or the model
    config (patching threshold included) differs from the checkpoint's.
    """
    last = S.find_last(out)
    if last is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {out}/last")
    st = S.load_trainer_state(last)
    old = st["run_config"]
    diff = {k: (old.get(k), run_config.get(k)) for k in _MUST_MATCH if old.get(k) != run_config.get(k)}
    if diff:
        raise ValueError(f"--resume: the run config differs from the checkpoint's: {diff}")
    saved = checkpoint.load(last)
    if saved.cfg != model.cfg:
        raise ValueError(f"--resume: the model config (patching threshold included) differs from {last}'s; "
                         "was the entropy model re-calibrated?")
    model.load_state_dict(saved.state_dict())
    optimizer.load_state_dict(st["optimizer"])
    S.set_rng_state(st["rng"])
    return int(st["step"])


class Batches:
    """This rank's rows of the global batch of a step, with BLT-D's L_mask denominator.

    ``batches(step) -> (rows [b/K, N + 1], scored [b/K, N] or None, denom or None)`` on ``device``.
    With ``--self-data``, the first ``--self-rows`` rows come from the model's own continuations and
    ``scored`` masks their generated part out of L_clean.
    """

    def __init__(self, args: argparse.Namespace, ds: ByteDataset, objective: Objective, rank: int, world: int,
                 device: torch.device, distributed: bool):
        self.args, self.ds, self.objective, self.world, self.device, self.distributed = (
            args, ds, objective, world, device, distributed)
        per_rank = args.batch_size // world
        self.row_ids = list(range(rank * per_rank, (rank + 1) * per_rank))
        self.self_rows = self.self_prompt = None
        if args.self_data:
            from .self_data import load_self_rows
            self.self_rows, self.self_prompt = load_self_rows(args.self_data, args.seq_len)

    def global_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Global batch [b, N + 1] and, with self-data, the L_clean positions it scores [b, N]."""
        a = self.args
        row = self.ds.sample_batch(step, a.batch_size, a.seq_len, seed=a.seed)
        if self.self_rows is None:
            return row, None
        rng = np.random.default_rng([a.seed, step, 7])
        pick = torch.from_numpy(rng.integers(len(self.self_rows), size=a.self_rows))
        row[: a.self_rows] = self.self_rows[pick]
        scored = torch.ones(a.batch_size, a.seq_len, dtype=torch.bool)
        scored[: a.self_rows, self.self_prompt - 1:] = False  # targets at positions ≥ prompt_len are generated
        return row, scored

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        row, scored = self.global_batch(step)
        mine = slice(self.row_ids[0], self.row_ids[-1] + 1)
        row = row[mine].to(self.device)
        scored = scored[mine].to(self.device) if scored is not None else None
        denom = None
        if self.args.objective == "bltd":
            model = self.objective.model
            denom = mask_denominator_of(model, row, self.objective.bltd, self.args.seed, step, self.row_ids)
            denom = denom.to(self.device)
            if self.distributed:
                dist.all_reduce(denom)
            denom = denom.clamp(min=1).float() / self.world  # DDP averages: world · Σ_rank / global count
        return row, scored, denom


def train_step(net: torch.nn.Module, model: BLT, optimizer: torch.optim.Optimizer, batch, row_ids: list[int],
               step: int, args: argparse.Namespace, distributed: bool, world: int) -> dict[str, Any]:
    """One optimizer step (lr schedule, forward, backward, clip, AdamW) on this rank's ``batch``
    (rows ``row_ids`` of the global batch, see :class:`Batches`).

    Returns the log record of the step (loss and bpb averaged over ranks). Raises FloatingPointError
    for a non-finite loss or gradient norm (before the weights change).
    """
    t0 = time.time()
    lr = S.lr_at(step, args.lr, args.warmup, args.steps)
    for g in optimizer.param_groups:
        g["lr"] = lr
    row, scored, denom = batch
    autocast = torch.autocast(device_type=row.device.type, dtype=torch.bfloat16, enabled=args.bf16)
    with autocast:
        loss, stats = net(row, step, row_ids, denom, scored)
    if args.debug_nan_at_step is not None and step == args.debug_nan_at_step:
        loss = loss * float("nan")
    vals = torch.stack([loss.detach().float(), stats["ce"].float()])                       # [2]
    if distributed:
        dist.all_reduce(vals)
        vals /= world
    if not torch.isfinite(vals).all():
        raise FloatingPointError(f"non-finite loss {float(vals[0])} at step {step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.grad_clip)
    if not torch.isfinite(gnorm):
        raise FloatingPointError(f"non-finite gradient norm at step {step}")
    optimizer.step()
    dt = max(time.time() - t0, 1e-9)
    rec = {"step": step + 1, "loss": float(vals[0]), "bpb": float(vals[1]) / LN2, "lr": lr,
           "bytes_per_s": round(args.batch_size * args.seq_len / dt, 1), "grad_norm": float(gnorm)}
    if args.objective == "bltd":
        rec["mask"] = float(stats["mask"])
    return rec


def run(args: argparse.Namespace) -> int:
    rank, world, local_rank = _dist_info()
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the number of processes {world}")
    if args.steps < 1 or args.seq_len < 2 or args.batch_size < 1:
        raise ValueError("--steps, --batch-size must be ≥ 1 and --seq-len ≥ 2")
    if not (args.lr > 0 and args.eval_batches >= 1 and args.save_every >= 0 and args.eval_every >= 0
            and args.weight_decay >= 0 and args.grad_clip > 0 and (args.warmup is None or args.warmup >= 0)):
        raise ValueError("--lr and --grad-clip must be > 0, --eval-batches ≥ 1, and --save-every, --eval-every, "
                         "--weight-decay, --warmup ≥ 0")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be in [0, 2**63 - 1], got {args.seed}")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite replaces it: pass one of them")
    if args.objective == "bltd":
        bltd_loss_config(args)  # raises ValueError for bad --blocks/--block-stride/--fused-frac/--distill
    if (args.self_rows or args.self_data) and not (args.objective == "bltd" and args.self_data
                                                   and 0 < args.self_rows <= args.batch_size):
        raise ValueError("--self-data DIR and --self-rows K (1 ≤ K ≤ --batch-size) go together, for bltd only")
    if args.init_from is not None and args.objective == "entropy":
        raise ValueError("--init-from is for the blt and bltd objectives")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    device = torch.device(f"cuda:{local_rank}" if args.device.startswith("cuda") and world > 1 else args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    torch.set_num_threads(threads)
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        # rank 0 owns the run folder: lock, refuse a reused folder, repair crashed saves
        with S.open_run_folder(Path(args.out), args.resume, args.overwrite) if rank == 0 else nullcontext():
            if distributed:
                dist.barrier()
            return _train(args, rank, world, device, distributed)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(args: argparse.Namespace, rank: int, world: int, device: torch.device, distributed: bool) -> int:
    t_start = time.time()
    out, is_main = Path(args.out), rank == 0
    train_ds, val_ds = open_split(args.data, "train"), open_split(args.data, "val")
    model = build_model(args)
    if args.seq_len > model.cfg.max_seq_len:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the preset's max_seq_len {model.cfg.max_seq_len}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    check_memory(model, trainable)
    args.warmup = args.warmup if args.warmup is not None else max(1, args.steps // 20)
    run_config = _run_config(args)
    optimizer = S.build_optimizer(model, args.lr, args.weight_decay)
    step = resume(out, model, optimizer, run_config) if args.resume else 0
    model.to(device).train()
    S.optimizer_to(optimizer, device)
    objective = Objective(model, args.objective, args.block_size, args.seed,
                          bltd_loss_config(args) if args.objective == "bltd" else None)
    net: torch.nn.Module = objective
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None)
    batches = Batches(args, train_ds, objective, rank, world, device, distributed)
    if is_main:
        print(f"fastblt train: {args.objective} preset={args.preset} trainable={trainable / 1e6:.2f}M "
              f"batch={args.batch_size}×{args.seq_len} steps={args.steps} lr={args.lr} warmup={args.warmup} "
              f"world={world} device={device} threads={torch.get_num_threads()}"
              + (f" threshold={model.cfg.patching.threshold:.4f}" if args.objective != "entropy" else ""), flush=True)
    log = RunLogger(out, step, args, is_main)

    def save(tag: str) -> None:
        if is_main:
            S.save_checkpoint(out, model, optimizer, step, run_config, extra={"objective": args.objective, "tag": tag})
        if distributed:
            dist.barrier()

    stop_reason, first_step = "done", step
    with _StopFlag() as stop:
        try:
            while step < args.steps:
                rec = train_step(net, model, optimizer, batches(step), batches.row_ids, step, args, distributed, world)
                step += 1
                rec["time_s"] = round(time.time() - t_start, 2)
                if is_main and args.eval_every and (step % args.eval_every == 0 or step == args.steps):
                    rec.update(evaluate(objective, val_ds, args, device))
                log(rec)
                out_of_time = ((args.time_budget_min is not None and time.time() - t_start > 60 * args.time_budget_min)
                               or (args.stop_after_steps is not None and step - first_step >= args.stop_after_steps))
                flags = torch.tensor([float(stop.requested), float(out_of_time)])
                if distributed:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                if flags.any():
                    stop_reason = "interrupted" if flags[0] > 0 else "budget"
                    break
                if args.save_every and step % args.save_every == 0 and step < args.steps:
                    save("periodic")
            save(stop_reason)  # Ctrl-C / SIGTERM during the save itself: the second signal aborts it
        except FloatingPointError as e:
            log.close()
            last = S.find_last(out)
            raise RuntimeError(f"training stopped: {e}. The last good checkpoint is kept "
                               f"({last if last else 'none written yet'}); lower --lr or check the data.") from None
        except BaseException:
            log.close()
            raise
    if is_main:
        _finish(args, objective, val_ds, device, log, out, run_config,
                {"step": step, "stop_reason": stop_reason, "wall_s": round(time.time() - t_start, 1),
                 "bytes_per_s": round(log.ema_bps or 0.0, 1)})
    if distributed:
        dist.barrier()
    return 0


def _finish(args: argparse.Namespace, objective: Objective, val_ds: ByteDataset, device: torch.device,
            log: RunLogger, out: Path, run_config: dict[str, Any], result: dict[str, Any]) -> None:
    """Final evaluation (unless the last step just had one), run.json, loss.png and the summary line."""
    if args.eval_every == 0 or not log.last_eval or result["stop_reason"] != "done":
        log({"step": result["step"], **evaluate(objective, val_ds, args, device)})
    log.close()
    result.update(log.last_eval)
    checkpoint.atomic_write_bytes(out / "run.json", json.dumps({"run_config": run_config, "result": result},
                                                               indent=2).encode())
    if not args.no_plot:
        plot_curves(out / "log.jsonl", out / "loss.png")
    print(f"fastblt train: {result['stop_reason']} at step {result['step']}; val bpb "
          f"{result.get('val_bpb', float('nan')):.4f}; {result['bytes_per_s']:.0f} bytes/s; checkpoint {out / 'last'}",
          flush=True)
