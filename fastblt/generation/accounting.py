"""Cost accounting of one generation call: network function evaluations (NFEs) and the eq. 8
bandwidth estimate of Fast BLT (Kallini et al., arXiv 2605.08044, §4 "efficiency metrics", eq. 8).

Every method counts its calls in one :class:`Counters` (usually through
:class:`~fastblt.generation.state.BLTState`, which counts each component call it makes);
:func:`statistics` turns the counters into the numbers ``generate`` reports.

Paper counting. The paper's tables (Tables 3–10) count **2 encoder+global calls per speculative
iteration** (§5.1 BLT-S, §5.2 BLT-DV: one call for the drafting latent, one for verification),
whatever an implementation actually runs; ``Counters.global_nfe_paper`` reproduces that count next
to ``global_nfe`` (the calls we ran).

Eq. 8 (16-bit weights, hash tables and entropy model excluded)::

    MemBW_GB = b · (N_dec · P_dec + N_eg · (P_enc + P_glob)) / 1e9,   b = 2 bytes per parameter
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import PAPER_COUNTS

PAPER_EG_CALLS_PER_ITERATION = 2  # Fast BLT §5.1–5.2, as Tables 3–10 count a speculative iteration
BYTES_PER_PARAM = 2  # eq. 8: 16-bit weights



def eq8_counts(counts: dict[str, float]) -> tuple[float, float]:
    """(P_dec, P_enc + P_glob), the counts eq. 8 prices NFEs with, from per-component counts
    (:func:`fastblt.model.params.param_breakdown` or ``config.PAPER_COUNTS``; hash tables and the
    entropy model are not streamed, so not counted)."""
    return counts["local_decoder"], counts["local_encoder"] + counts["global"]


# The paper's 3B counts (§4.1, hash tables excluded), from their one home, config.PAPER_COUNTS.
PAPER_3B_P_DEC, PAPER_3B_P_ENC_GLOB = eq8_counts(PAPER_COUNTS["3b"])


@dataclass
class Counters:
    """Calls made so far in one generation call.

    decoder_nfe: local-decoder forward calls (each may cover several rows);
    global_nfe: calls in which the global transformer ran (with the local encoder's patch pooling);
    entropy_nfe: entropy-model calls; encoder_steps: local-encoder layer-stack calls;
    iterations: speculative draft-and-verify iterations (Algorithm 2), or BLT-D blocks;
    drafted_bytes / accepted_bytes: bytes proposed / accepted by verification;
    diffusion_steps: decoder passes spent unmasking BLT-D blocks (Algorithm 1's inner loop);
    verify_passes: decoder passes spent verifying drafts (Algorithm 2: one per iteration in the
    paper schedule; 0 to 2 in the fused one, :func:`~fastblt.generation.speculative.verify_lazy`);
    speculative: set by :func:`~fastblt.generation.speculative.speculate`; switches
    :attr:`global_nfe_paper` to the paper's per-iteration count.
    """

    decoder_nfe: int = 0
    global_nfe: int = 0
    entropy_nfe: int = 0
    encoder_steps: int = 0
    iterations: int = 0
    drafted_bytes: int = 0
    accepted_bytes: int = 0
    diffusion_steps: int = 0
    verify_passes: int = 0
    speculative: bool = False

    def record_iteration(self, drafted: int, accepted: int) -> None:
        """One draft-and-verify iteration: ``drafted`` bytes proposed, ``accepted`` of them kept."""
        if not 0 <= accepted <= drafted:
            raise ValueError(f"accepted bytes ({accepted}) must lie in 0..drafted ({drafted})")
        self.iterations += 1
        self.drafted_bytes += drafted
        self.accepted_bytes += accepted

    @property
    def global_nfe_paper(self) -> int:
        """Encoder+global calls as the paper counts them: 2 per speculative iteration, else as run."""
        return PAPER_EG_CALLS_PER_ITERATION * self.iterations if self.speculative else self.global_nfe

    @property
    def acceptance_rate(self) -> float | None:
        """accepted / drafted bytes (Fast BLT §5, Algorithm 2: the acceptance rate); None when nothing was drafted."""
        return self.accepted_bytes / self.drafted_bytes if self.drafted_bytes else None


def bandwidth_gb(decoder_nfe: float, global_nfe: float, p_dec: float, p_enc_glob: float,
                 bytes_per_param: int = BYTES_PER_PARAM) -> float:
    """Estimated weight traffic in GB (1e9 bytes), Fast BLT eq. 8:
    ``bytes_per_param · (decoder_nfe · p_dec + global_nfe · p_enc_glob) / 1e9``."""
    return bytes_per_param * (decoder_nfe * p_dec + global_nfe * p_enc_glob) / 1e9


def model_counts(model) -> tuple[float, float]:
    """(P_dec, P_enc + P_glob) of a :class:`~fastblt.model.blt.BLT`, as eq. 8 reads them."""
    from ..model.params import param_breakdown

    return eq8_counts(param_breakdown(model))


def statistics(model, c: Counters, new_bytes: int, seconds: float) -> dict[str, Any]:
    """The numbers ``generate`` reports for one call (see :func:`fastblt.generation.api.generate`).

    Bandwidth keys: ``est_bandwidth_gb`` (eq. 8 with this model's counts and the calls as run),
    ``est_bandwidth_gb_paper_counting`` (the same with ``global_nfe_paper``) and
    ``est_bandwidth_gb_3b`` (the calls as run priced with the paper's 3B counts).
    """
    p_dec, p_eg = model_counts(model)
    g_paper = c.global_nfe_paper
    return {
        "new_bytes": new_bytes, "decoder_nfe": c.decoder_nfe, "global_nfe": c.global_nfe,
        "global_nfe_paper": g_paper, "entropy_nfe": c.entropy_nfe, "encoder_steps": c.encoder_steps,
        "iterations": c.iterations, "drafted_bytes": c.drafted_bytes, "accepted_bytes": c.accepted_bytes,
        "acceptance_rate": c.acceptance_rate, "diffusion_steps": c.diffusion_steps,
        "verify_passes": c.verify_passes,
        "bytes_per_decoder_pass": new_bytes / c.decoder_nfe if c.decoder_nfe else None,
        "est_bandwidth_gb": bandwidth_gb(c.decoder_nfe, c.global_nfe, p_dec, p_eg),
        "est_bandwidth_gb_paper_counting": bandwidth_gb(c.decoder_nfe, g_paper, p_dec, p_eg),
        "est_bandwidth_gb_3b": bandwidth_gb(c.decoder_nfe, c.global_nfe, PAPER_3B_P_DEC, PAPER_3B_P_ENC_GLOB),
        "seconds": seconds, "bytes_per_second": new_bytes / seconds if seconds > 0 else 0.0,
    }
