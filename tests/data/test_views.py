"""The one dataset-view wrapper: labels or source indices, all images or a subset."""

import numpy as np

from obow.data.sources import ArraySource
from obow.data.views import ViewDataset


def source() -> ArraySource:
    images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    return ArraySource(images, np.array([3, 1, 2, 0]), ["a", "b", "c", "d"])


def test_labels_of_all_images_or_of_a_subset():
    views = ViewDataset(source(), lambda image: image.size)
    assert len(views) == 4 and views[2] == ((2, 2), 2) and views.targets == [3, 1, 2, 0]
    subset = ViewDataset(source(), lambda image: image.getpixel((0, 0)), indices=[3, 1])
    assert len(subset) == 2 and subset[0] == ((12, 12, 12), 0) and subset.targets == [0, 1]


def test_source_indices_instead_of_labels():
    """The word gallery names each view by its image, to crop the patch from it later."""
    views = ViewDataset(source(), lambda image: image.getpixel((0, 0)), indices=range(1, 3), target="index")
    assert [views[i] for i in range(len(views))] == [((4, 4, 4), 1), ((8, 8, 8), 2)]
