import os
import zlib

import pytest
import torch

from softkernels.vllm import installed as _vllm_installed

# tests/vllm runs in its own venv (make test-vllm), where vLLM is installed.
collect_ignore = [] if _vllm_installed() else ["vllm"]

# Tests draw fresh random inputs every run; the seed is printed so a failure can be replayed with
# SOFTKERNELS_TEST_SEED=<seed>.
_SEED = int(os.environ.get("SOFTKERNELS_TEST_SEED", torch.seed() % (2 ** 31)))


def pytest_report_header(config):
    return f"softkernels test seed: {_SEED} (replay with SOFTKERNELS_TEST_SEED={_SEED})"


@pytest.fixture(autouse=True)
def _seed_each_test(request):
    # Each test gets its own stream derived from the session seed and its name.
    torch.manual_seed((_SEED + zlib.crc32(request.node.nodeid.encode())) % (2 ** 31))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(scope="module")
def models():
    """models(family, tied=None): a tiny random Hugging Face model (tests/_hf_models.py), built
    once per test module and unpatched before each use."""
    import softkernels as sk
    from _hf_models import make_model
    cache = {}

    def get(family, tied=None):
        key = (family, tied)
        if key not in cache:
            cache[key] = make_model(family, tied=tied)
        sk.unpatch(cache[key])
        return cache[key]
    return get


@pytest.fixture(scope="module")
def one_thread():
    """Runs a module's tests with one torch thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
