import pytest
import torch

import fastblt

# Tests run on shared 2-core machines: one intra-op thread avoids oversubscription (a 50x slowdown
# was measured with the default two threads next to another busy process).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _float32_and_seed():
    torch.manual_seed(0)
    yield


def random_ids(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """BOS followed by n random byte ids."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.ones(batch, 1, dtype=torch.long), torch.randint(4, 260, (batch, n), generator=g)], 1)


def midpoint_threshold(entropies: torch.Tensor) -> float:
    """A threshold halfway between two adjacent entropies near the median: no entropy sits on it,
    so float rounding cannot flip a patch boundary between implementations."""
    v = entropies.flatten().sort().values
    m = len(v) // 2
    return float((v[m] + v[m + 1]) / 2)


def tiny_model(diffusion_block_size=None, seed: int = 0) -> fastblt.BLT:
    """A random tiny model whose threshold sits at the median entropy, so patches vary in length."""
    torch.manual_seed(seed)
    m = fastblt.BLT(fastblt.preset("tiny", diffusion_block_size=diffusion_block_size)).eval()
    m.cfg.patching.threshold = midpoint_threshold(m.entropies(random_ids(200, seed=99)))
    return m
