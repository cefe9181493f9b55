"""Scale out: classify, features and explain over many images, on Ray Data or in one process.

``kerascope batch`` and `run_batch` write Parquet shards, one per fixed block of the sorted
inputs, each written atomically by the worker that ran it: every input appears exactly once
(a result or an error row), a stopped job resumes where it stopped, and a worker killed
mid-block is retried by Ray without duplicating rows. Ray is optional (the ``ray`` extra:
``pip install -e '.[ray]'`` in the clone).
"""

from kerascope.scale.plan import BatchError
from kerascope.scale.run import BatchReport, run_batch
from kerascope.scale.work import shard_info

__all__ = ["BatchError", "BatchReport", "run_batch", "shard_info"]
