"""EDA-style floorplanning for the wafer: place kernels as rectangles, route their streams.

An abstract problem (:class:`Block`, :class:`Net`, :class:`PlacementProblem`) so the placer
works with or without the compiler; :func:`place_and_route` returns a legal placement, its
routes and colours, and figures against the naive strip baseline. See docs/placement.md.
"""

from waferscale.compiler.floorplan.errors import (
    BlockSramError,
    ConstraintError,
    PlacementError,
    RoutingError,
)
from waferscale.compiler.floorplan.objective import FloorplanConfig, Geometry
from waferscale.compiler.floorplan.placer import FloorplanResult, place_and_route
from waferscale.compiler.floorplan.problem import Block, Net, PlacementProblem
from waferscale.compiler.floorplan.quality import Quality, compare, measure
from waferscale.compiler.floorplan.route import Routing, route
from waferscale.compiler.floorplan.strip import strip_placement

__all__ = [
    "Block", "BlockSramError", "ConstraintError", "FloorplanConfig", "FloorplanResult",
    "Geometry", "Net", "PlacementError", "PlacementProblem", "Quality", "Routing",
    "RoutingError", "compare", "measure", "place_and_route", "route", "strip_placement",
]
