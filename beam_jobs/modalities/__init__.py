"""What an input file is and how it becomes a tensor: the modality spec, each modality, the config flags.

This module is the registry: every modality soundsight knows, by name, in a
fixed order (flags, tabs, report sections). A new modality adds its spec here;
everything else finds it through `MODALITIES` or `get`.
"""
from beam_jobs.modalities.audio import AUDIO
from beam_jobs.modalities.image import IMAGE
from beam_jobs.modalities.spec import Modality

MODALITIES: dict[str, Modality] = {spec.name: spec for spec in (AUDIO, IMAGE)}


def get(name: str) -> Modality:
    """The spec of `name`; ValueError listing the known ones for any other name."""
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}: soundsight knows {', '.join(MODALITIES)}")
    return MODALITIES[name]
