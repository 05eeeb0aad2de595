"""The explicit checkpoint reader registry: every layout has its reader, and a gap is refused."""

import pytest

from obow.io.layouts import CHECKPOINT_LAYOUTS
from obow.io.readers import ReaderRegistry
from obow.models.loading import BACKBONE_READERS


def test_the_reader_registry_is_complete_and_refuses_gaps():
    assert BACKBONE_READERS.layouts == CHECKPOINT_LAYOUTS
    with pytest.raises(ValueError, match="missing layouts"):
        ReaderRegistry("partial", {CHECKPOINT_LAYOUTS[0]: lambda found, path: None})
    with pytest.raises(ValueError, match="unknown layouts"):
        ReaderRegistry("extra", {**dict.fromkeys(CHECKPOINT_LAYOUTS, lambda f, p: None), "onnx": lambda f, p: None})
