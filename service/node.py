"""Start and stop the node: models first, then the listener, then the worker loop until a signal."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xiqa.app import build_settings
from xiqa.operators.loader import LoaderConfig

from .listener import Listener, forward_tls_context
from .metrics import NodeMetrics
from .outbox import Outbox
from .review import NodeState, ReviewServer
from .settings import ServeSettings
from .spool import Spool
from .worker import Worker

logger = logging.getLogger(__name__)

OUTBOX = "outbox"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: what the node creates is not readable by others: files 0640 or 0600, folders 0750
UMASK = 0o027


class Node:
    """One ``xiqa serve``: spool, listener, worker and (where configured) outbox and metrics."""

    def __init__(self, settings: ServeSettings) -> None:
        """Raises ``StorageInUse`` when another node owns the storage folder."""
        self.settings = settings
        self.metrics = NodeMetrics()
        os.umask(UMASK)
        self.spool = Spool(settings.storage, settings.min_free_bytes)
        self.spool.lock()  # before anything reads or cleans the storage
        self.outbox = None
        if settings.forward:
            self.outbox = Outbox(Path(settings.storage) / OUTBOX, settings.forward,
                                 calling_ae_title=settings.ae_title, metrics=self.metrics,
                                 retries=settings.forward_retries, retry_delay=settings.forward_retry_delay,
                                 max_pdu_size=settings.max_pdu_size,
                                 ssl_context=forward_tls_context(settings))
        loader = LoaderConfig(allowed_modalities=frozenset(m.strip().upper() for m in settings.modalities))
        # models load before the port opens, so a health check that passes means ready
        run_settings = build_settings([], settings.output, model=settings.model, device=settings.device,
                                      saliency=settings.saliency, loader=loader,
                                      summary_model=settings.summary_model,
                                      count_devices=settings.count_devices,
                                      acquisition=settings.acquisition_config(),
                                      reject_kos=settings.reject_kos)
        self.worker = Worker(run_settings, self.spool, self.metrics, settings.study_timeout, self.outbox,
                             run_guard=self._signals_held, housekeeping=self._expire)
        self.listener = Listener(settings, self.spool, self.metrics, self.worker.add)

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the study in progress finishes, waiting ones stay spooled."""
        waiting = self.spool.waiting()
        for instance in waiting:  # left by an earlier run: their clock restarts at their file time
            self.worker.add(instance, arrived=instance.path.stat().st_mtime)
        if waiting:
            logger.info("%d instances from an earlier run are waiting", len(waiting))
        if self.outbox is not None:
            self.outbox.start()
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_port, self.settings.metrics_bind)
        review = None
        if self.settings.review_port is not None:
            state = NodeState(self.metrics, self.settings.ae_title, self.listener.listening)
            review = ReviewServer(self.settings.review_bind, self.settings.review_port, self.settings.output,
                                  self.settings.storage, state)
            review.start()
        self._catch_signals()
        self.listener.start()
        logger.warning("xiqa serve ready: %s on port %d, storage %s, output %s", self.settings.ae_title,
                       self.listener.port, self.settings.storage, self.settings.output)
        try:
            self.worker.run()
        finally:
            self.listener.stop()
            if self.outbox is not None:
                self.outbox.stop()
            if review is not None:
                review.stop()
        logger.warning("xiqa serve stopped; %d instances wait for the next start", self.worker.pending())
        return 0

    def _expire(self) -> None:
        deleted = self.spool.expire(self.settings.retention_days, self.settings.retention_bytes)
        if deleted:
            logger.info("retention: deleted %d finished instances from processed/ and rejected/", deleted)

    def _catch_signals(self) -> None:
        for signal_number in STOP_SIGNALS:
            signal.signal(signal_number, lambda *_: self.worker.stop())

    @contextmanager
    def _signals_held(self) -> Iterator[None]:
        """Hold SIGTERM/SIGINT during a graph run: Holoscan installs its own handlers, which would
        interrupt the study half-way; the held signal stops the node once the study is done."""
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            yield
        finally:
            self._catch_signals()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
