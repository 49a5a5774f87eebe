"""The pipeline's Beam metrics: counters `<modality>_<name>` in the namespace `soundsight`."""
from apache_beam.metrics import Metrics

METRICS_NAMESPACE = "soundsight"


class ModalityCounters:
    """The counters of one modality, each created once, not per element."""

    def __init__(self, modality: str):
        self._modality = modality
        self._counters = {}

    def inc(self, name: str) -> None:
        if name not in self._counters:
            self._counters[name] = Metrics.counter(METRICS_NAMESPACE, f"{self._modality}_{name}")
        self._counters[name].inc()
