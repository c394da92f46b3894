"""What every DRA claim the operator writes says about its GPU (a group's claim, a profiler's).

Pure: returns strings, talks to nothing.
"""

from __future__ import annotations

from slm_operator.constants import DRA_DRIVER

__all__ = ["dra_product_selector"]


def dra_product_selector(product: str) -> str:
    """A CEL selector for NVIDIA's DRA devices of ``product`` as feature discovery labels it.

    NB: the driver publishes product names with spaces ("NVIDIA H100 80GB HBM3") where feature
    discovery's label uses dashes; compare in the label's spelling.
    """
    return f'device.attributes["{DRA_DRIVER}"].productName.replace(" ", "-") == "{product}"'
