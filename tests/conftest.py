import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Files computed for Hub SAEs (statistics, labels) go to a fresh folder, never the user's own.
os.environ["STEERING_HOME"] = tempfile.mkdtemp(prefix="steering-home-")
sys.path.insert(0, str(Path(__file__).parent))  # tiny_models, sae_fixtures

# The vLLM backend's suite needs vLLM (its own virtualenv): `make test-vllm` runs it.
collect_ignore = [] if os.environ.get("STEERING_TEST_VLLM") == "1" else ["vllm_backend"]
# Replicas on Ray Serve need Ray: `make test-ray` runs them.
if os.environ.get("STEERING_TEST_RAY") != "1":
    collect_ignore.append("ray_serve")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def own_steering_home(tmp_path_factory, monkeypatch):
    """Each test its own STEERING_HOME: statistics or labels one test computes for the demo SAE
    (its user folder) never reach another test's demo SAE."""
    monkeypatch.setenv("STEERING_HOME", str(tmp_path_factory.mktemp("steering-home")))
