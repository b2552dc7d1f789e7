"""The vLLM backend's suite (``make test-vllm``): vLLM's CPU build, engines on loopback.

Engines run in this process (``multiprocess=False``) and eager unless a test says otherwise:
they start in seconds. vLLM's Transformers backend (GPT-NeoX here) patches transformers'
classes in the process it runs in, so that architecture runs multiprocess.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
sys.path.insert(0, str(Path(__file__).parent))  # worlds

if importlib.util.find_spec("vllm") is None:
    pytest.exit("the vLLM backend's tests need vLLM: run `make test-vllm`", returncode=4)
