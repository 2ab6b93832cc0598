"""Declaration of a metric: its name, which direction is better, and the paper it implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Metric:
    """What a number in a report means.

    Attributes
    ----------
    name
        Column name in the comparison table.
    better
        ``"higher"`` or ``"lower"``: which values indicate the better saliency method.
    reference
        The paper the metric implements (short citation).
    description
        One sentence on what is measured.
    """

    name: str
    better: Literal["higher", "lower"]
    reference: str
    description: str
