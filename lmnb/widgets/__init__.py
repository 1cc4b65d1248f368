"""Notebook views of lmnb objects: a cell's output, the radix cache, the throughput.

Each view has a deterministic `text/plain` form and self-contained HTML, and nothing
else: live views (the cache tree, the meter, progress) are redrawn in place through
display handles, so a saved notebook shows each one's last state without a kernel.
"""
from __future__ import annotations

from lmnb.widgets.base import View
from lmnb.widgets.cache_tree import CacheTreeView, tree_snapshot
from lmnb.widgets.output_view import BatchView, DryRunView, OutputView, cache_counts, snapshot
from lmnb.widgets.progress import BatchProgress, LoadProgress
from lmnb.widgets.throughput import ThroughputMeter, throughput_snapshot

__all__ = [
           "BatchProgress",
           "BatchView",
           "CacheTreeView",
           "DryRunView",
           "LoadProgress",
           "OutputView",
           "ThroughputMeter",
           "View",
           "cache_counts",
           "snapshot",
           "throughput_snapshot",
           "tree_snapshot",
]
