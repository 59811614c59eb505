"""Prometheus figures of the node.  Labels are stages, statuses and AE titles, never patient data."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

STAGE_BUCKETS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


class NodeMetrics:
    """One registry per node, so that tests and several nodes in one process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.instances_received = Counter(
            "xiqa_instances_received", "Instances stored and acknowledged", registry=registry)
        self.instances_refused = Counter(
            "xiqa_instances_refused", "C-STORE requests answered with a failure status",
            ["reason"], registry=registry)
        self.instances_rejected = Counter(
            "xiqa_instances_rejected", "Stored instances the graph could not use", registry=registry)
        self.instances_processed = Counter(
            "xiqa_instances_processed", "Instances the graph processed", registry=registry)
        self.instances_not_chest = Counter(
            "xiqa_instances_not_chest", "Processed instances that are not frontal chest radiographs "
            "(not scored; also counted as processed, never as rejected)", registry=registry)
        self.studies_processed = Counter(
            "xiqa_studies_processed", "Studies processed with every instance good", registry=registry)
        self.studies_failed = Counter(
            "xiqa_studies_failed", "Studies with a rejected or failed instance", registry=registry)
        self.queue_depth = Gauge(
            "xiqa_queue_depth", "Stored instances not yet processed", registry=registry)
        self.outbox_depth = Gauge(
            "xiqa_outbox_depth", "Output files waiting to be forwarded", registry=registry)
        self.forwarded = Counter(
            "xiqa_forwarded", "Output files a destination accepted", ["destination"], registry=registry)
        self.forward_failures = Counter(
            "xiqa_forward_failures", "Forwarding attempts that failed", ["destination"],
            registry=registry)
        self.forward_given_up = Counter(
            "xiqa_forward_given_up", "Output files that ran out of retries", ["destination"],
            registry=registry)
        self.acquisition_failures = Counter(
            "xiqa_acquisition_failures", "Scored instances that failed an acquisition check (cut-off, "
            "rotation, inspiration, exposure, collimation)", ["check"], registry=registry)
        self.stage_seconds = Histogram(
            "xiqa_stage_seconds", "Seconds per image and graph stage", ["stage"],
            buckets=STAGE_BUCKETS, registry=registry)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Expose ``/metrics`` over HTTP (a daemon thread)."""
        start_http_server(port, addr=address, registry=self.registry)
