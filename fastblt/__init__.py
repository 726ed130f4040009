"""fastblt: a faithful Byte Latent Transformer and fast byte-level generation (BLT, BLT-S, BLT-D, BLT-DV)."""
from .checkpoint import load, save, save_hf
from .config import BLTConfig, PatchingConfig, StackConfig, preset
from .model.blt import BLT

__all__ = ["BLT", "BLTConfig", "PatchingConfig", "StackConfig", "preset", "load", "save", "save_hf", "generate", "stream_text"]


def generate(model, prompt, method: str = "blt", **kwargs):
    """Generate bytes after ``prompt`` with one of the generation methods; see fastblt.generation.api."""
    from .generation.api import generate as _generate

    return _generate(model, prompt, method=method, **kwargs)


def stream_text(model, prompt, **kwargs):
    """Iterate over generated text as it becomes final (no split UTF-8 characters); see fastblt.generation.api."""
    from .generation.api import stream_text as _stream_text

    return _stream_text(model, prompt, **kwargs)
