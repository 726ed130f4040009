import pytest
import torch

# Tests run on shared 2-core machines: one intra-op thread avoids oversubscription (a 50x slowdown
# was measured with the default two threads next to another busy process). The one place tests set it.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
