"""Image-folder throughput: jaxconv's Grain pipeline against torchvision's ImageFolder + DataLoader.

Both read the same generated folder of 64x64 JPEG files (Pillow decoding),
apply the same training transforms (random resized crop to 64x64 with
torchvision's default scale and ratio, horizontal flip, ImageNet
normalisation) and deliver float32 batches of 64, with the same number of
worker processes:

- jaxconv: ``image_folder(image_size=64, augment=Augment(), mean=IMAGENET_MEAN,
  std=IMAGENET_STD)`` and ``Loader(batch_size=64, workers=W)`` (defaults
  otherwise: 2 batches prefetched per worker, or by one thread without workers);
- torchvision: ``ImageFolder`` with ``RandomResizedCrop(64)``,
  ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(...)`` and
  ``DataLoader(batch_size=64, shuffle=True, drop_last=True, num_workers=W,
  persistent_workers=W > 0)``.

Each case runs two epochs per round; the rounds alternate between the two
libraries. Throughput is counted from the 10th batch to the end (steady state),
with the CPU time all processes spent meanwhile (robust to other load on a
shared machine); the time to the first batch (worker start-up included) is
reported apart. The statistic is the median over rounds.

Run from the repository root::

    python benchmarks/loader.py             # prints the table
    python benchmarks/loader.py --write     # also writes the loader section of RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SECTION = "loader"
BATCH = 64
SIZE = 64
SKIP = 10  # batches before the steady-state clock starts


def generate(root: str, count: int, classes: int = 50) -> str:
    """``count`` 64x64 JPEG photos-like images (smooth gradients plus noise) in ``classes`` folders, once."""
    from PIL import Image

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, SIZE)
    for i in range(count):
        colour = rng.uniform(0, 255, 3)
        base = np.outer(ramp, ramp)[..., None] * colour + rng.normal(0, 20, (SIZE, SIZE, 3))
        path = os.path.join(root, f"class{i % classes:02d}", f"{i:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=90)
    open(done, "w").close()
    return root


def process_tree_cpu() -> float:
    """CPU seconds (user + system) used so far by this process and its live descendants (the workers)."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.Error:  # a worker that exited in between
            continue
        total += times.user + times.system
    return total


def timed(batches, epochs_batches: int) -> dict:
    """Iterates ``batches``: the time to the first batch, the steady-state images per second and the
    CPU time of every process per batch (from the ``SKIP``-th batch on)."""
    start = time.perf_counter()
    first = steady = cpu = None
    count = 0
    for x, _ in batches:
        count += 1
        assert x.shape[0] == BATCH
        if count == 1:
            first = time.perf_counter() - start
        if count == SKIP:
            steady, cpu = time.perf_counter(), process_tree_cpu()
        if count == epochs_batches:  # the workers are still alive
            cpu = process_tree_cpu() - cpu
    assert count == epochs_batches, (count, epochs_batches)
    return {"first_batch_s": first, "images_per_s": (count - SKIP) * BATCH / (time.perf_counter() - steady),
            "cpu_ms_per_batch": cpu / (count - SKIP) * 1e3}


def jaxconv_case(root: str, workers: int, epochs: int) -> dict:
    from jaxconv.data import IMAGENET_MEAN, IMAGENET_STD, Augment, Loader, image_folder

    folder = image_folder(root, image_size=SIZE, augment=Augment(), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          val_fraction=0)
    loader = Loader(folder.train, batch_size=BATCH, seed=0, workers=workers)
    with loader.iterator(epochs=epochs) as stream:
        return timed(stream, epochs * loader.batches_per_epoch)


def import_torchvision():
    """torchvision, with its compiled-operator registrations stubbed (they need ops this CPU torch lacks)."""
    name = "torchvision._meta_registrations"
    sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision

    return torchvision


def torchvision_case(root: str, workers: int, epochs: int) -> dict:
    import torch

    torchvision = import_torchvision()
    t = torchvision.transforms
    transform = t.Compose([t.RandomResizedCrop(SIZE), t.RandomHorizontalFlip(), t.ToTensor(),
                           t.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    dataset = torchvision.datasets.ImageFolder(root, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)

    def batches():
        for _ in range(epochs):
            yield from loader

    return timed(batches(), epochs * len(loader))


def run(root: str, workers_list: list[int], rounds: int, epochs: int) -> dict:
    """``{(library, workers): [result per round]}``, the libraries alternating within each round."""
    results: dict = {}
    for r in range(rounds):
        for workers in workers_list:
            for name, case in (("jaxconv (Grain)", jaxconv_case), ("torchvision", torchvision_case)):
                out = case(root, workers, epochs)
                results.setdefault((name, workers), []).append(out)
                print(f"round {r} {name} workers={workers}: {out}", flush=True)
    return results


def report(results: dict, info: dict, count: int, rounds: int, epochs: int) -> str:
    rows, rates, cpus = [], {}, {}
    for (name, workers), runs in results.items():
        rate = rates[name, workers] = statistics.median(r["images_per_s"] for r in runs)
        cpu = cpus[name, workers] = statistics.median(r["cpu_ms_per_batch"] for r in runs)
        first = statistics.median(r["first_batch_s"] for r in runs)
        spread = (max(r["images_per_s"] for r in runs) - min(r["images_per_s"] for r in runs)) / rate
        rows.append([name, workers, f"{rate:.0f}", f"{spread:.0%}", f"{cpu:.1f}", f"{first:.2f}"])
    ours, theirs = "jaxconv (Grain)", "torchvision"
    ratios = [f"- workers={w}: jaxconv / torchvision = {rates[ours, w] / rates[theirs, w]:.2f}x the images per "
              f"second, {cpus[ours, w] / cpus[theirs, w]:.2f}x the CPU time per batch"
              for w in sorted({w for _, w in results})]
    table = common.markdown_table(["pipeline", "workers", "images/s (median)", "spread", "CPU ms per batch",
                                   "first batch (s)"], rows)
    return (f"## Image-folder throughput: jaxconv (Grain) vs torchvision (`benchmarks/loader.py`)\n\n"
            f"{common.describe_machine(info)}\n- grain {info.get('grain')}, pillow {info.get('PIL')}, "
            f"torchvision {info.get('torchvision')}\n\n"
            f"{count} generated 64x64 JPEG files (quality 90) in 50 classes; both pipelines decode with Pillow, "
            "random-resized-crop to 64x64 (scale (0.08, 1), ratio (3/4, 4/3)), flip, normalise, batch 64 "
            f"(last batch dropped). {rounds} rounds of {epochs} epochs per case, alternating; images/s from the "
            f"{SKIP}th batch to the end; spread = (max - min) / median over rounds; CPU ms per batch = CPU "
            "time (user + system) of the main process and its workers over the same batches, the cost that "
            "does not depend on what else the machine runs; the first batch includes starting the workers "
            "(jaxconv's are spawned and import JAX, torch's are forked).\n\n"
            f"{table}\n\n" + "\n".join(ratios) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "jaxconv-loader-jpeg64"))
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write the loader section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    import_torchvision()
    info = common.machine_info(["grain", "PIL", "torchvision"])
    root = generate(os.path.join(args.cache, str(args.images)), args.images)
    text = report(run(root, args.workers, args.rounds, args.epochs), info, args.images, args.rounds, args.epochs)
    print(text)
    if args.write:
        common.write_section(common.RESULTS_MD, SECTION, text)


if __name__ == "__main__":
    main()
