"""Probes: cross-lingual features on parallel text, safety-relevant features found by held-out AUROC, and a
monitor that flags texts on which chosen features fire (docs/probes.md)."""

from featurescope.featuredb.probes import (
    multilingual_for_feature,
    multilingual_json,
    multilingual_top,
    probe_summaries,
    probes_for_feature,
    reported_features,
)
from featurescope.probes.monitor import MonitorConfig, run_monitor
from featurescope.probes.multilingual import MultilingualConfig, run_multilingual
from featurescope.probes.probe import ProbeConfig, run_probe
from featurescope.probes.sets import BUILTIN_SETS, load_probe_set

__all__ = [
    "BUILTIN_SETS",
    "MonitorConfig",
    "MultilingualConfig",
    "ProbeConfig",
    "load_probe_set",
    "multilingual_for_feature",
    "multilingual_json",
    "multilingual_top",
    "probe_summaries",
    "probes_for_feature",
    "reported_features",
    "run_monitor",
    "run_multilingual",
    "run_probe",
]
