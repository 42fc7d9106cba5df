"""Small builders shared by the test modules (import as ``from helpers import ...``)."""
from __future__ import annotations

import numpy as np


def detection(label: str, region: np.ndarray, index: int | None = None, **kwargs):
    """fo.Detection whose box is the bounding box of the boolean ``region`` (H, W) and whose
    mask is ``region`` cropped to it (FiftyOne's bbox-relative instance mask)."""
    import fiftyone as fo

    h, w = region.shape
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return fo.Detection(label=label, bounding_box=[x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h],
                        mask=region[y0:y1, x0:x1].copy(), index=index, **kwargs)


def fresh_dataset(name: str):
    """An empty (non-persistent) dataset named ``name``, replacing one a failed test left behind."""
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    return fo.Dataset(name)
