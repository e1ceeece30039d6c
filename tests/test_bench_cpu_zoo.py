"""benchmarks/cpu.py's zoo section without timing: its same-network guard and its table rows."""

import os
import sys

import pytest

import jaxconv as jc
from jaxconv.bench import Stats
from tests.torchvision_ref import import_torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import cpu  # noqa: E402

SHAPE = (1, 32, 32, 3)


def test_same_network_guard_passes_equal_models_and_stops_a_different_head():
    import_torchvision()
    model = jc.models.get_model("resnet18", cpu.ZOO_CLASSES)
    logged = []
    count = cpu.check_same_network("resnet18", model, SHAPE, cpu.torchvision_net("resnet18"),
                                   logged.append)
    assert count == 11_181_642  # ResNet-18 with a 10-class head
    assert "torchvision 11,181,642" in logged[0]
    other_head = import_torchvision().models.resnet18(weights=None, num_classes=1000)
    with pytest.raises(RuntimeError, match="resnet18: jaxconv and torchvision differ"):
        cpu.check_same_network("resnet18", model, SHAPE, other_head, logged.append)


def test_zoo_rows_compare_every_row_with_the_faster_pytorch_row():
    stats = {name: Stats(name, [seconds], items_per_call=2)
             for name, seconds in (("jaxconv auto", 0.1), ("PyTorch contiguous", 0.4),
                                   ("PyTorch channels_last", 0.2))}
    rows = cpu.zoo_rows("resnet18", stats)
    assert [row[1] for row in rows] == list(stats)
    assert [row[2] for row in rows] == ["20.0", "5.0", "10.0"]  # images/s
    assert [row[-1] for row in rows] == ["2.00x (channels_last)", "0.50x (channels_last)",
                                         "1.00x (channels_last)"]
