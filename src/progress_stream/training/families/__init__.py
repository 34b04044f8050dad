"""Structurally different families of synthetic features, all on the real annotation timings.

Users train on their own encoder's features, which look like none of these; the default recipe is
chosen by its worst case across them. Each family differs in how an action's phase maps to its
embeddings (see each module's docstring and the docs' Training page, "Synthetic feature families").
"""

from __future__ import annotations

from progress_stream.training.families.base import Family, FamilyConfig
from progress_stream.training.families.cyclic import Cyclic
from progress_stream.training.families.shifted import Shifted
from progress_stream.training.families.smooth import Smooth
from progress_stream.training.families.substeps import Substeps

FAMILIES: dict[str, type[Family]] = {f.name: f for f in (Smooth, Substeps, Cyclic, Shifted)}


def make_family(name: str, cfg: FamilyConfig) -> Family:
    """The generator ``name`` (one of :data:`FAMILIES`) with its shared knobs."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name](cfg)


__all__ = ["FAMILIES", "Family", "FamilyConfig", "make_family"]
