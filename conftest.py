"""Root pytest configuration, shared by ``tests/`` and the executed ``docs/``.

Fixtures live in ``tests/conftest.py`` and ``docs/conftest.py``; this file only
configures the test process.
"""

import os
import sys


def pytest_configure(config):
    # One intra-op thread per process for torch (and the BLAS/OpenMP under it). With
    # torch's default of one spinning thread per core, a test that trains a network
    # slows down several-fold as soon as anything else loads the CPU (measured on
    # 2 cores: the training tutorial took 147 s with the defaults under load and 46 s
    # with one thread). Set before torch is imported, so subprocesses inherit it too.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
