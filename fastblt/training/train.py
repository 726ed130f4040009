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

Optimisation (paper notes §8.2): AdamW β 0.9/0.95, ε 1e-8, weight decay 0.1 on matrices, linear
warmup then cosine to 0 over ``--steps``, global grad-norm clip 1.0.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .. import checkpoint
from ..config import preset
from ..data.dataset import ByteDataset
from ..model.blt import BLT
from . import state as S
from .objectives import LN2, OBJECTIVES, BLTDLoss, Objective, mask_denominator_of

VAL_SEED = 1_000_003  # val batches: fixed rows, independent of the training seed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objective", choices=OBJECTIVES, default="bltd", help="what to train (default bltd)")
    p.add_argument("--preset", default="small", help="model preset: tiny, small (default small)")
    p.add_argument("--data", default="data_cache/corpus", help="corpus folder from `fastblt data build`")
    p.add_argument("--out", required=True, help="run folder (checkpoints in OUT/last, log.jsonl, loss.png)")
    p.add_argument("--entropy-model", default=None,
                   help="trained entropy run folder (blt/bltd): weights → model.patcher, calibrated threshold")
    p.add_argument("--block-size", type=int, choices=(4, 8, 16), default=8, help="BLT-D block size B")
    p.add_argument("--blocks", choices=("aligned", "patch"), default="aligned",
                   help="bltd: 'patch' = one block per patch start, closed latent (the paper); 'aligned' = "
                        "blocks at sampled starts, inside patches too, each reading the latent its schedule "
                        "reads at inference (default)")
    p.add_argument("--block-stride", type=int, default=16,
                   help="bltd, aligned: one block per this many bytes of a row (default 16)")
    p.add_argument("--fused-frac", type=float, default=0.5,
                   help="bltd, aligned: share of blocks reading the fused BLT-DV latent (default 0.5)")
    p.add_argument("--mask-norm", choices=("sum", "mean"), default="sum",
                   help="bltd: L_mask weight: 'sum' = the paper's literal L_clean + L_mask (default), "
                        "'mean' = per valid slot")
    p.add_argument("--distill", type=float, default=0.0,
                   help="bltd: weight λ of the model's own next-byte distribution in the slot targets "
                        "(self-distillation; default 0)")
    p.add_argument("--self-data", default=None,
                   help="bltd: folder of the model's own greedy continuations (python -m "
                        "fastblt.training.self_data); --self-rows rows of every batch come from it")
    p.add_argument("--self-rows", type=int, default=0,
                   help="bltd: rows per batch from --self-data (their generated part is not scored by L_clean)")
    p.add_argument("--init-from", default=None,
                   help="warm start from a trained BLT/BLT-D model folder of the same shape (its entropy "
                        "model and patching come along)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps; the cosine schedule ends here")
    p.add_argument("--batch-size", type=int, default=8, help="global batch (rows)")
    p.add_argument("--seq-len", type=int, default=512, help="bytes per row (inputs)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (paper: 4e-4)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 5%% of --steps, ≥ 1)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100, help="val bpb every N steps (0: only at the end)")
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps (and at the end)")
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="stop cleanly with a checkpoint when this wall-clock budget is spent")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="stop cleanly (with a checkpoint) after this many steps in this invocation; "
                        "the schedule still follows --steps (continue with --resume)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--no-plot", action="store_true", help="skip loss.png")
    p.add_argument("--debug-nan-at-step", type=int, default=None, help=argparse.SUPPRESS)


# ---------------------------------------------------------------------------- setup helpers
def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def open_split(data: str | Path, split: str) -> ByteDataset:
    """A corpus split, with clear errors for a missing folder or an empty split."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder {root} does not exist: build it with `fastblt data build`")
    if not (root / f"{split}.bin").exists() or not (root / f"{split}.idx.npy").exists():
        raise FileNotFoundError(f"{root} has no '{split}' split ({split}.bin + {split}.idx.npy)")
    ds = ByteDataset(root / split)
    if ds.stream_len == 0 or int(ds.idx[-1]) == 0:
        raise ValueError(f"the '{split}' split of {root} is empty")
    return ds


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


def resolve_model_dir(path: str | Path) -> Path:
    """A checkpoint folder: ``path`` itself or ``path/last``."""
    p = Path(path)
    if (p / checkpoint.CONFIG_NAME).exists():
        return p
    if (p / "last" / checkpoint.CONFIG_NAME).exists():
        return p / "last"
    raise FileNotFoundError(f"no trained model at {p} (expected {p}/config.json or {p}/last/config.json)")


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
    st = path / S.STATE_NAME
    cfg = json.loads((path / checkpoint.CONFIG_NAME).read_text())
    if isinstance(cfg.get("training"), dict) and cfg["training"].get("objective"):
        return str(cfg["training"]["objective"])
    if st.exists():
        try:
            return str(S.load_trainer_state(path).get("extra", {}).get("objective") or "") or None
        except Exception:  # noqa: BLE001 - a state we cannot read tells us nothing
            return None
    return None


def warm_start(model: BLT, path: str | Path, objective: str) -> BLT:
    """Copy a trained model's weights into ``model`` (same shape), patcher and patching included.

    A plain BLT's encoder byte table (260 rows) fills the first rows of a BLT-D's (262); MASK and
    BLOCK_PAD keep their fresh initialisation. Raises ValueError for a model of another shape, an
    entropy-model run, or a BLT-D trained for another block size.
    """
    src_dir = resolve_model_dir(path)
    kind = _init_objective(src_dir)
    if kind == "entropy":
        raise ValueError(f"--init-from {src_dir}: an entropy-model run, not a trained BLT (objective {objective})")
    src = checkpoint.load(src_dir).float()
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
        src_cfg = checkpoint.load(src_dir).cfg
        cfg.entropy, cfg.patching = src_cfg.entropy, src_cfg.patching
        torch.manual_seed(args.seed)
        return warm_start(BLT(cfg), src_dir, args.objective)
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
    """First Ctrl-C asks the loop to stop at the next step boundary (and save); a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nfastblt: interrupt — stopping after this step and saving (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


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
        return _train(args, rank, world, device, distributed)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(args: argparse.Namespace, rank: int, world: int, device: torch.device, distributed: bool) -> int:
    t_start = time.time()
    out = Path(args.out)
    train_ds, val_ds = open_split(args.data, "train"), open_split(args.data, "val")
    model = build_model(args)
    if args.seq_len > model.cfg.max_seq_len:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the preset's max_seq_len {model.cfg.max_seq_len}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    check_memory(model, trainable)
    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 20)
    args.warmup = warmup
    run_config = _run_config(args)

    optimizer = S.build_optimizer(model, args.lr, args.weight_decay)
    step = 0
    if args.resume:
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
        step = int(st["step"])
    model.to(device).train()
    for s in optimizer.state.values():  # optimizer state follows the parameters' device
        for k, v in s.items():
            if torch.is_tensor(v) and k != "step":
                s[k] = v.to(device)

    objective = Objective(model, args.objective, args.block_size, args.seed,
                          bltd_loss_config(args) if args.objective == "bltd" else None)
    net: torch.nn.Module = objective
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None)

    self_rows = self_prompt = None
    if args.self_data:
        from .self_data import load_self_rows
        self_rows, self_prompt = load_self_rows(args.self_data, args.seq_len)

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Global batch [b, N + 1] and, with self-data, the L_clean positions it scores [b, N]."""
        row = train_ds.sample_batch(step, args.batch_size, args.seq_len, seed=args.seed)
        if self_rows is None:
            return row, None
        rng = np.random.default_rng([args.seed, step, 7])
        pick = torch.from_numpy(rng.integers(len(self_rows), size=args.self_rows))
        row[: args.self_rows] = self_rows[pick]
        scored = torch.ones(args.batch_size, args.seq_len, dtype=torch.bool)
        scored[: args.self_rows, self_prompt - 1:] = False  # targets at positions ≥ prompt_len are generated
        return row, scored

    per_rank = args.batch_size // world
    row_ids = list(range(rank * per_rank, (rank + 1) * per_rank))
    bytes_per_step = args.batch_size * args.seq_len
    is_main = rank == 0
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        log_path = out / "log.jsonl"
        if not args.resume and log_path.exists():
            log_path.unlink()
        elif log_path.exists():  # drop what was logged after the checkpoint we resume from
            keep = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
            checkpoint.atomic_write_bytes(log_path, ("\n".join(keep) + "\n" if keep else "").encode())
        print(f"fastblt train: {args.objective} preset={args.preset} trainable={trainable / 1e6:.2f}M "
              f"batch={args.batch_size}×{args.seq_len} steps={args.steps} lr={args.lr} warmup={warmup} "
              f"world={world} device={device} threads={torch.get_num_threads()}"
              + (f" threshold={model.cfg.patching.threshold:.4f}" if args.objective != "entropy" else ""), flush=True)
    log_f = open(out / "log.jsonl", "a") if is_main else None
    bar = None
    if is_main and not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=args.steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)

    def log(rec: dict[str, Any]) -> None:
        if log_f is not None:
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()

    def save(tag: str) -> None:
        if is_main:
            S.save_checkpoint(out, model, optimizer, step, run_config, extra={"objective": args.objective, "tag": tag})
        if distributed:
            dist.barrier()

    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if args.bf16
                else torch.autocast(device_type=device.type, enabled=False))
    stop_reason = "done"
    last_eval: dict[str, float] = {}
    ema_bps = None
    first_step = step
    with _StopFlag() as stop:
        try:
            while step < args.steps:
                t0 = time.time()
                lr = S.lr_at(step, args.lr, warmup, args.steps)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                row, scored = batch_at(step)
                row = row[row_ids[0]: row_ids[-1] + 1].to(device)
                scored = scored[row_ids[0]: row_ids[-1] + 1].to(device) if scored is not None else None
                denom = None
                if args.objective == "bltd":
                    denom = mask_denominator_of(model, row, objective.bltd, args.seed, step, row_ids).to(device)
                    if distributed:
                        dist.all_reduce(denom)
                    denom = denom.clamp(min=1).float() / world  # DDP averages: world · Σ_rank / global count
                with autocast:
                    loss, stats = net(row, step, row_ids, denom, scored)
                if args.debug_nan_at_step is not None and step == args.debug_nan_at_step:
                    loss = loss * float("nan")
                vals = torch.stack([loss.detach().float(), stats["ce"].float()])
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
                step += 1
                dt = time.time() - t0
                bps = bytes_per_step / max(dt, 1e-9)
                ema_bps = bps if ema_bps is None else 0.9 * ema_bps + 0.1 * bps
                rec = {"step": step, "loss": float(vals[0]), "bpb": float(vals[1]) / LN2, "lr": lr,
                       "bytes_per_s": round(bps, 1), "grad_norm": float(gnorm), "time_s": round(time.time() - t_start, 2)}
                if args.objective == "bltd":
                    rec["mask"] = float(stats["mask"])
                if is_main and args.eval_every and (step % args.eval_every == 0 or step == args.steps):
                    last_eval = evaluate(objective, val_ds, args, device)
                    rec.update(last_eval)
                log(rec)
                if bar is not None:
                    post = {"loss": f"{rec['loss']:.3f}", "bpb": f"{rec['bpb']:.3f}", "B/s": f"{ema_bps:.0f}"}
                    if last_eval:
                        post["val"] = f"{last_eval['val_bpb']:.3f}"
                    bar.set_postfix(post)
                    bar.update(1)
                out_of_time = ((args.time_budget_min is not None and time.time() - t_start > 60 * args.time_budget_min)
                               or (args.stop_after_steps is not None and step - first_step >= args.stop_after_steps))
                flags = torch.tensor([float(stop.requested), float(out_of_time)])
                if distributed:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                if flags[0] > 0 or flags[1] > 0:
                    stop_reason = "interrupted" if flags[0] > 0 else "budget"
                    break
                if args.save_every and step % args.save_every == 0 and step < args.steps:
                    save("periodic")
        except FloatingPointError as e:
            if bar is not None:
                bar.close()
            if log_f is not None:
                log_f.close()
            last = S.find_last(out)
            raise RuntimeError(f"training stopped: {e}. The last good checkpoint is kept "
                               f"({last if last else 'none written yet'}); lower --lr or check the data.") from None
    if bar is not None:
        bar.close()
    save(stop_reason)
    result: dict[str, Any] = {"step": step, "stop_reason": stop_reason, "wall_s": round(time.time() - t_start, 1),
                              "bytes_per_s": round(ema_bps or 0.0, 1)}
    if is_main:
        if args.eval_every == 0 or not last_eval or stop_reason != "done":
            last_eval = evaluate(objective, val_ds, args, device)
            log({"step": step, **last_eval})
        result.update(last_eval)
        log_f.close()
        (out / "run.json").write_text(json.dumps({"run_config": run_config, "result": result}, indent=2))
        if not args.no_plot:
            plot_curves(out / "log.jsonl", out / "loss.png")
        print(f"fastblt train: {stop_reason} at step {step}; val bpb {result.get('val_bpb', float('nan')):.4f}; "
              f"{result['bytes_per_s']:.0f} bytes/s; checkpoint {out / 'last'}", flush=True)
    if distributed:
        dist.barrier()
    return 0
