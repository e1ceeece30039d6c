"""``jaxconv predict``: a folder run's classes and preprocessing applied to image files.

A run trained on the digits written as PNG files; ``predict`` on its
validation folder must give exactly the classes ``evaluate`` scores (the same
accuracy), write the CSV atomically, and report unreadable inputs.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from jaxconv import checkpoint as ckpt
from jaxconv.cli import main
from jaxconv.cli.predict import PREDICTIONS_FILE, classify
from jaxconv.cli.training import evaluate_folder, load_run
from tests.imagefolder import write_digits_folder


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data, out = str(root / "digits"), str(root / "run")
    write_digits_folder(data)
    assert main(["train", "--data", data, "--image-size", "8", "--channels", "1", "--epochs", "2",
                 "--out", out, "--no-progress", "--no-plots"]) == 0
    return data, out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_on_the_val_folder_agrees_with_evaluate(folder_run, capsys):
    data, out = folder_run
    assert main(["evaluate", "--out", out]) == 0
    line = capsys.readouterr().out
    run = load_run(out)
    metrics, count = evaluate_folder(run)
    assert count == 360 and f"val accuracy {metrics['accuracy']:.4f}" in line
    assert main(["predict", os.path.join(data, "val"), "--out", out, "--top-k", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = read_csv(os.path.join(out, PREDICTIONS_FILE))
    assert len(rows) == 360 and len(printed) == 361  # one line per image, then "wrote ..."
    truth = [os.path.basename(os.path.dirname(r["path"])) for r in rows]
    correct = sum(r["class"] == t for r, t in zip(rows, truth))
    assert correct / len(rows) == pytest.approx(metrics["accuracy"], abs=1e-12)
    assert 0.5 < metrics["accuracy"] < 1.0  # a trained model, not a perfect one: the comparison means something
    for row in rows[:5]:
        names = [part.split(":")[0] for part in row["top_k"].split(";")]
        probs = [float(part.split(":")[1]) for part in row["top_k"].split(";")]
        assert names[0] == row["class"] and len(names) == 3 and probs == sorted(probs, reverse=True)
    # The probabilities of each image sum to one.
    _, probs, errors = classify(run, [r["path"] for r in rows[:7]], 4)
    assert not errors and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_predict_writes_the_csv_at_the_given_path_and_reports_unreadable_files(folder_run, tmp_path, capsys):
    data, out = folder_run
    images = tmp_path / "images"
    images.mkdir()
    good = os.path.join(data, "val", "3")
    for name in sorted(os.listdir(good))[:3]:
        (images / name).write_bytes(open(os.path.join(good, name), "rb").read())
    (images / "broken.png").write_bytes(b"not a png")
    target = str(tmp_path / "deep" / "p.csv")
    os.makedirs(os.path.dirname(target))
    status = main(["predict", str(images), str(tmp_path / "missing.jpg"), "--out", out, "--csv", target])
    captured = capsys.readouterr()
    assert status == 1
    assert "broken.png" in captured.err and "missing.jpg" in captured.err
    assert len(read_csv(target)) == 3 and not [p for p in os.listdir(os.path.dirname(target))
                                                 if p.startswith(ckpt.TMP_PREFIX)]
    assert len([line for line in captured.out.splitlines() if line.startswith(str(images))]) == 3


def test_predict_refuses_a_run_without_an_image_folder(tmp_path, capsys):
    out = str(tmp_path / "memory")
    assert main(["train", "--epochs", "1", "--out", out, "--no-progress", "--no-plots"]) == 0
    capsys.readouterr()
    assert main(["predict", "x.png", "--out", out]) == 1
    assert "not trained on an image folder" in capsys.readouterr().err
