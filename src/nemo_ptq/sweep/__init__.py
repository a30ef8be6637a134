"""Sweeps across machines: each point of a params grid runs as `dvc exp run` in its own clone of the
repository on a Ray worker, and comes back through DVC (`dvc exp push` to the Git remote and the DVC
remote, `dvc exp pull` on the driver). `python -m nemo_ptq.sweep --help` says how to run one."""
