"""runner: a batch prompt runner and usage accountant for the Anthropic Messages API."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# polars' allocator (jemalloc) keeps freed pages resident for 0.5 s + 1 s by default, so
# compaction and the summary, a second after the pool's last part write, stacked on top
# of them: purging at once took 6-8 MB off a 500-stream run's peak RSS (issue 17). polars
# reads this variable when it is imported, appending it to its own settings; a value the
# user set is left alone.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
