"""microcae's allocator setting reaches the Python API, not only the command line."""

import subprocess
import sys
from pathlib import Path

from microcae.util import runtime

PROBE = r"""
import numpy as np, torch
from microcae.util import runtime
from microcae.models.hyperprior import HyperpriorCodec, HyperpriorConfig
from microcae.models.inference import compress_whole
model = HyperpriorCodec(HyperpriorConfig(N=8, M=8)).eval()
model.update()
before = runtime._configured
compress_whole(model, np.zeros((64, 64), np.float32))
print(before, runtime._configured)
"""


def test_coding_through_the_python_api_sets_the_allocator():
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120, check=True,
                         env={"PYTHONPATH": str(Path(runtime.__file__).parents[2])})
    expected = "False True" if sys.platform.startswith("linux") else "False False"
    assert run.stdout.strip().splitlines()[-1] == expected
