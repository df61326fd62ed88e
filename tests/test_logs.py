"""One console line per event: Lightning's own console handlers give way to the root's (Hydra's), its
advert is dropped, and the known harmless warnings are silenced by message, nothing else."""

from __future__ import annotations

import io
import logging
import warnings

import pytest

from optsweep.logs import one_line_per_event


@pytest.fixture
def lightning_as_imported():
    """The loggers as `import lightning` leaves them, and a root handler as Hydra's job logging adds it."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names}
    root, root_out = logging.getLogger(), io.StringIO()
    root_handler = logging.StreamHandler(root_out)
    root.addHandler(root_handler)
    own_out = io.StringIO()
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers = [logging.StreamHandler(own_out)]
        logger.propagate = name == "lightning"  # lightning.pytorch/fabric: propagate=False, own handler
        logger.setLevel(logging.INFO)
    yield root_out, own_out
    root.removeHandler(root_handler)
    for name, (handlers, propagate) in saved.items():
        logging.getLogger(name).handlers, logging.getLogger(name).propagate = handlers, propagate


def test_each_lightning_record_is_printed_once_by_the_root_handler(lightning_as_imported):
    root_out, own_out = lightning_as_imported
    with warnings.catch_warnings():
        one_line_per_event()
    logging.getLogger("lightning.fabric.utilities.seed").info("Seed set to 42")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False, used: False")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").info("💡 Tip: For seamless cloud logging ...")
    assert root_out.getvalue().splitlines() == ["Seed set to 42", "GPU available: False, used: False"]
    assert own_out.getvalue() == ""


def test_only_the_known_warnings_are_silenced():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        one_line_per_event()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("Your `IterableDataset` has `__len__` defined. In combination ...", UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]
