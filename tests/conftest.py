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

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))
