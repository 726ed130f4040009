"""Next-byte sampling: greedy, temperature, top-k and top-p with a seeded generator per call.

Order of operations (as in transformers): suppress special ids → temperature → top-k → top-p →
sample. Temperature 0 means greedy (argmax; ties go to the lowest id). The ids BOE (0), BOS (1)
and BPE (3) are never generated: they are not bytes, and a random model would otherwise emit
them; EOS (2) stays allowed and ends generation, unless ``ignore_eos`` (the paper's fixed-length
accounting: always generate L bytes) suppresses it too.
"""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from ..config import BOE_ID, BOS_ID, BPE_ID, EOS_ID

SUPPRESSED_IDS = (BOE_ID, BOS_ID, BPE_ID)


MIN_TEMPERATURE = 1e-4  # below this, logits / T overflows float32 for logits ≳ 3e34 · T; use 0 (greedy)
MAX_SEED = 2**64 - 1  # torch.Generator seeds are unsigned 64-bit


def _real(v: object) -> object:
    """numpy / other ``numbers.Real`` scalars → Python float (bools and non-numbers unchanged)."""
    return float(v) if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) else v


def _integer(v: object) -> object:
    """numpy / other ``numbers.Integral`` scalars → Python int (bools and non-integers unchanged)."""
    return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) else v


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings. temperature 0 (greedy) or in [1e-4, 1e6]; top_k ≥ 1 or None; top_p in
    (0, 1] or None; ignore_eos: never generate EOS (fixed-length generation). numpy scalars are
    accepted (stored as Python numbers).

    Raises ValueError for out-of-range values, including temperatures that float32 sampling cannot
    represent (a positive T below 1e-4 would overflow logits / T).
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        t = _real(self.temperature)
        if not isinstance(t, float) or not math.isfinite(t) or not (t == 0 or MIN_TEMPERATURE <= t <= 1e6):
            raise ValueError(f"temperature must be 0 (greedy) or a number in [{MIN_TEMPERATURE:g}, 1e6], got {t!r}")
        k = _integer(self.top_k)
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"top_k must be an integer >= 1 or None, got {k!r}")
        p = _real(self.top_p)
        if p is not None and (not isinstance(p, float) or not 0 < p <= 1):
            raise ValueError(f"top_p must be in (0, 1] or None, got {p!r}")
        object.__setattr__(self, "temperature", t)
        object.__setattr__(self, "top_k", k)
        object.__setattr__(self, "top_p", p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN/inf logits: its weights or numerics are broken (never turned into EOS)."""


_BIAS: dict[tuple[int, torch.device, bool], torch.Tensor] = {}


def suppress(logits: torch.Tensor, ignore_eos: bool = False) -> torch.Tensor:
    """Copy of logits [..., V] (float32) with the non-byte specials (BOE, BOS, BPE; and EOS if
    ignore_eos) at −inf: one addition of a cached bias row (0 elsewhere, so other values are unchanged).

    Every byte decision goes through here. Raises NonFiniteLogitsError if any logit is NaN or ±inf
    (the argmax of all-NaN logits would otherwise be id 0 and end generation silently).
    """
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteLogitsError(
            "the model produced non-finite logits (NaN/inf): its weights are broken (was it loaded with "
            f"check_weights=False?) or its dtype ({logits.dtype}) overflowed")
    key = (logits.shape[-1], logits.device, bool(ignore_eos))
    bias = _BIAS.get(key)
    if bias is None:
        bias = torch.zeros(logits.shape[-1], device=logits.device)
        bias[list(SUPPRESSED_IDS) + ([EOS_ID] if ignore_eos else [])] = float("-inf")
        _BIAS[key] = bias
    return logits.float() + bias


@functools.lru_cache(maxsize=None)
def _bias_np(vocab: int, ignore_eos: bool) -> np.ndarray:
    """:func:`suppress`'s bias row as a NumPy array (cached)."""
    return suppress(torch.zeros(vocab), ignore_eos).numpy()


def filtered_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Logits [..., V] after suppression, temperature, top-k and top-p (removed ids at −inf).

    Only meaningful for temperature > 0.
    """
    x = suppress(logits, params.ignore_eos) / params.temperature
    if params.top_k is not None and params.top_k < x.shape[-1]:
        kth = torch.topk(x, params.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the strictly more likely ids
        drop_sorted = before >= params.top_p  # keeps the smallest prefix reaching top_p (≥ 1 id)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution a :class:`Sampler` draws from: [..., V] float32 (one-hot when greedy)."""
    if params.greedy:
        return torch.nn.functional.one_hot(suppress(logits, params.ignore_eos).argmax(-1), logits.shape[-1]).float()
    return filtered_logits(logits, params).softmax(-1)


class Sampler:
    """Draws next bytes with ``params`` from a ``torch.Generator`` seeded once per generation call.

    seed None draws a fresh random seed (reported as ``self.seed``).
    """

    def __init__(self, params: SamplingParams, seed: int | None = None, device: torch.device | str = "cpu"):
        """seed: an integer in [0, 2**64 − 1] (numpy integers accepted) or None. Raises ValueError otherwise."""
        self.params = params
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.seed = int(self.generator.seed())
        else:
            seed = _integer(seed)
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                raise ValueError(f"seed must be an integer in [0, 2**64 - 1] or None, got {seed!r}")
            self.seed = seed
            self.generator.manual_seed(seed)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] → ids LongTensor [B]."""
        if self.params.greedy:
            return self.suppress(logits).argmax(-1)
        probs = filtered_logits(logits, self.params).softmax(-1)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]

    def pick(self, logits: torch.Tensor) -> int:
        """Batch-1 convenience: logits [1, V] (or [V]) → one id."""
        if self.params.greedy:
            return self.draft_pick(logits)
        return int(self.sample(logits.reshape(1, -1))[0])

    def suppress(self, logits: torch.Tensor) -> torch.Tensor:
        """:func:`suppress` with this sampler's ``ignore_eos``."""
        return suppress(logits, self.params.ignore_eos)

    def draft_pick(self, logits: torch.Tensor) -> int:
        """Draft byte for speculation: the argmax of logits [1, V] (or [V]) with specials suppressed.

        Under the match rule a drafted byte d is accepted with probability p_target(d); drafting the
        mode of the drafter's distribution maximises that, so drafts are greedy at any temperature.
        """
        if logits.device.type == "cpu" and logits.dtype == torch.float32:
            row = logits.detach().reshape(-1).numpy()  # one decode step: the same argmax in NumPy, ~10x less overhead
            if not np.isfinite(row).all():
                suppress(logits)  # raises NonFiniteLogitsError
            return int(np.argmax(row + _bias_np(row.shape[0], self.params.ignore_eos)))
        return int(self.suppress(logits.reshape(-1)).argmax())
