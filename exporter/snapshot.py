"""One collection's metric families and their encodings, made at most once per format.

Serialisation is CPU work: it is done once per collection and format, never once per scrape.
Large snapshots are encoded on a worker thread so that a 15,000-series IPVS table does not
stall /healthz, and the heap they freed is handed back to the system afterwards.

Each collector's families are encoded apart and the pieces joined: a family that cannot be
encoded (a value too long to print, a broken family) costs its own collector that scrape
(success 0, none of its series), never the response.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .exposition import CompactFamily, LabelSets, openmetrics_pieces, text_pieces
from .logs import log_event
from .metrics import Metric


class Submitter(Protocol):
    """Where large encodings run: the scheduler's encoder worker (a thread)."""

    def submit(self, fn: Callable[[], Body]) -> concurrent.futures.Future: ...


# An encoded exposition: gzip-compressed bytes, or the uncompressed text in pieces that are
# written one after another (never joined: a large IPVS table's 4 MB would be copied again).
Body = bytes | tuple[bytes, ...]


log = logging.getLogger("netstack.exporter")

OPENMETRICS = "openmetrics"
TEXT = "text"
CONTENT_TYPES = {
    TEXT: "text/plain; version=0.0.4; charset=utf-8",
    OPENMETRICS: "application/openmetrics-text; version=1.0.0; charset=utf-8",
}
# Below this many samples encoding is cheap enough to run inline on the event loop.
INLINE_ENCODE_SAMPLES = 2000
_EOF = b"# EOF\n"
_COLLECTOR_LABELS = LabelSets("collector")  # one per collector name: a bounded set


@dataclass
class Outcome:
    """One collector's part of a collection."""

    collector: str
    families: list[Metric]
    success: bool
    duration: float
    available: bool  # False only when the source is known to be absent
    # Told how encoding the families went: None, or the exception (then the collector failed).
    encoded: Callable[[BaseException | None], None] | None = None


def _sample_count(families: list[Metric]) -> int:
    count = 0
    for family in families:
        try:
            count += len(getattr(family, "rows", None) or family.samples)
        except Exception:  # a broken family: the encoder will say so
            pass
    return count


class Snapshot:
    """The metric families of one collection, encoded at most once per format and encoding."""

    def __init__(self, outcomes: list[Outcome], own: Sequence[Metric] = ()):
        self.outcomes = outcomes
        self.own = list(own)  # the exporter's own families, after the collectors' status
        self.samples = sum(_sample_count(o.families) for o in outcomes) + _sample_count(self.own)
        self._bodies: dict[str, tuple[bytes, ...]] = {}
        self._encoded: dict[tuple[str, bool], Body | asyncio.Future] = {}

    def encode(self, fmt: str, compress: bool) -> Body:
        pieces = self._bodies.get(fmt)
        if not compress:
            if pieces is None:
                pieces = self._bodies[fmt] = tuple(self._pieces(fmt))
            return pieces
        # Compressed straight from the pieces, which are kept only if an uncompressed request
        # made them (Prometheus asks for gzip: the text is then never held whole).
        gzipper = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
        out = [gzipper.compress(piece) for piece in (pieces or self._pieces(fmt))]
        out.append(gzipper.flush())
        return b"".join(out)

    def _pieces(self, fmt: str) -> list[bytes]:
        """The exposition in pieces: each collector's, then the status and own families."""
        openmetrics = fmt == OPENMETRICS

        def piece(families: list[Metric]) -> list[bytes]:
            # every part but the last goes without the end marker
            return openmetrics_pieces(families, eof=False) if openmetrics else text_pieces(families)

        pieces: list[bytes] = []
        success = CompactFamily(
            "netstack_scrape_collector_success",
            "1 if the collector's last collection succeeded, 0 if it failed or its source is unavailable.",
            "gauge",
        )
        duration = CompactFamily(
            "netstack_scrape_collector_duration_seconds",
            "Time the collector's last collection took.",
            "gauge",
        )
        available = CompactFamily(
            "netstack_collector_available",
            "1 if the collector's source exists on this host (see / for the reason when 0).",
            "gauge",
        )
        for o in self.outcomes:
            ok = o.success
            if o.families:
                try:
                    pieces += piece(o.families)
                except Exception as e:
                    ok = False
                    if o.success and o.encoded is not None:
                        o.encoded(e)
                    else:  # unavailable_families() of an absent source: nothing else to fail
                        log.debug("families of an unavailable collector failed to encode", exc_info=e)
            if ok and o.encoded is not None:
                o.encoded(None)
            labels = _COLLECTOR_LABELS(o.collector)
            success.add(labels, 1 if ok else 0)
            duration.add(labels, o.duration)
            available.add(labels, 1 if o.available else 0)
        pieces += piece([success, duration, available])
        try:
            pieces += piece(self.own)
        except Exception as e:  # a bug of ours; the collectors' series are still worth serving
            log_event(
                log,
                logging.WARNING,
                "exporter self-metrics failed to encode",
                error=f"{type(e).__name__}: {e}",
            )
        if openmetrics:
            pieces.append(_EOF)
        return pieces

    async def encoded(self, fmt: str, compress: bool, worker: Submitter) -> Body:
        key = (fmt, compress)
        body = self._encoded.get(key)
        if body is None:
            if self.samples < INLINE_ENCODE_SAMPLES:
                body = self._encoded[key] = self.encode(fmt, compress)
            else:
                future = worker.submit(lambda: self.encode(fmt, compress))
                body = self._encoded[key] = asyncio.wrap_future(future)
        if not isinstance(body, asyncio.Future):
            return body
        return await asyncio.shield(body)


def release_freed_heap() -> None:
    """Give memory that was freed back to the system: glibc keeps freed heap mapped, so one large
    collection (a big IPVS table) would otherwise set the RSS for good."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        pass
