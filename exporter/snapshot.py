"""One collection's metric families and their encodings, made at most once per format.

Serialisation is CPU work: it is done once per collection and format, never once per scrape.
Large snapshots are encoded on a worker thread so that a 15,000-series IPVS table does not
stall /healthz, and the heap they freed is handed back to the system afterwards.
"""

from __future__ import annotations

import asyncio
import ctypes
import gzip
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from .exposition import encode_openmetrics, encode_text

if TYPE_CHECKING:
    from .scheduling import Worker

OPENMETRICS = "openmetrics"
TEXT = "text"
CONTENT_TYPES = {
    TEXT: "text/plain; version=0.0.4; charset=utf-8",
    OPENMETRICS: "application/openmetrics-text; version=1.0.0; charset=utf-8",
}
# Below this many samples encoding is cheap enough to run inline on the event loop.
INLINE_ENCODE_SAMPLES = 2000


class Snapshot:
    """The metric families of one collection, encoded at most once per format and encoding."""

    def __init__(self, families: list[Metric]):
        self.families = families
        self.samples = sum(len(getattr(f, "rows", None) or f.samples) for f in families)
        self._encoded: dict[tuple[str, bool], bytes | asyncio.Future] = {}

    def encode(self, fmt: str, compress: bool) -> bytes:
        body = encode_openmetrics(self.families) if fmt == OPENMETRICS else encode_text(self.families)
        return gzip.compress(body, compresslevel=1, mtime=0) if compress else body

    async def encoded(self, fmt: str, compress: bool, worker: Worker) -> bytes:
        key = (fmt, compress)
        body = self._encoded.get(key)
        if body is None:
            if self.samples < INLINE_ENCODE_SAMPLES:
                body = self._encoded[key] = self.encode(fmt, compress)
            else:
                body = self._encoded[key] = asyncio.wrap_future(worker.submit(lambda: self.encode(fmt, compress)))
        if isinstance(body, bytes):
            return body
        return await asyncio.shield(body)


def release_freed_heap() -> None:
    """Give memory that was freed back to the system: glibc keeps freed heap mapped, so one large
    collection (a big IPVS table) would otherwise set the RSS for good."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        pass
