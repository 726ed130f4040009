"""Byte generation with BLT: cached BLT, the uncached reference, and BLT-S self-speculation.

Public API: :func:`generate`, :func:`stream_text`, :class:`GenerationResult`, the method registry
(:data:`METHODS`, :func:`register_method`), and the building blocks other methods reuse:
:class:`BLTState` (incremental cached BLT), :class:`Counters`, :class:`Sampler`,
:class:`SamplingParams`, :class:`Output` and :class:`Context`.
"""
from .api import METHODS, GenerationResult, generate, method_options, prompt_ids, register_method, stream_text
from .sampling import Sampler, SamplingParams
from .state import BLTState, Counters
from .stopping import Context, Output

__all__ = ["METHODS", "GenerationResult", "generate", "method_options", "prompt_ids", "register_method",
           "stream_text", "Sampler", "SamplingParams", "BLTState", "Counters", "Context", "Output"]
