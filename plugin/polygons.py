"""Instance masks as filled polygons: one closed, filled ``fo.Polyline`` per object (the largest
outline of its mask, traced by FiftyOne's ``Detection.to_polyline``), which is what CVAT's video
format stores per track and frame (FiftyOne's CVAT exporter keeps only the first shape of a
Polyline, so each object gets exactly one)."""
from __future__ import annotations

from typing import Optional

import fiftyone as fo

POLYGON_TOLERANCE = 1  # pixels of the mask a polygon's outline may deviate (FiftyOne's default is 2)


def _area(points) -> float:
    """Unsigned shoelace area of a polygon (relative coordinates)."""
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))) / 2


def mask_polygon(detection: fo.Detection, keyframe: bool, tolerance: int = POLYGON_TOLERANCE) -> Optional[fo.Polyline]:
    """``detection``'s mask as one closed, filled Polyline (its largest outline; holes are not
    kept) with the detection's label, index, confidence and attributes, and ``keyframe``; None
    when the mask traces no polygon (fewer than 3 points)."""
    polyline = detection.to_polyline(tolerance=tolerance, filled=True)
    shapes = [list(shape) for shape in polyline.points if len(shape) >= 3]
    if not shapes:
        return None
    polyline.points = [max(shapes, key=_area)]
    polyline.closed = polyline.filled = True
    polyline["keyframe"] = bool(keyframe)
    return polyline


def detections_to_polylines(detections: Optional[fo.Detections], keyframe: bool,
                            tolerance: int = POLYGON_TOLERANCE) -> Optional[fo.Polylines]:
    """One filled polygon per detection with a mask (:func:`mask_polygon`), each marked
    ``keyframe``; None for None."""
    if detections is None:
        return None
    polygons = (mask_polygon(detection, keyframe, tolerance) for detection in detections.detections)
    return fo.Polylines(polylines=[polygon for polygon in polygons if polygon is not None])
