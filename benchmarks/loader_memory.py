"""Peak memory of the image-folder pipeline: one epoch over 5,000 images, then over 50,000.

The claim measured: the loader streams, so its memory does not grow with the
size of the folder (only its packed file list does, a few bytes per file).
Each run is a fresh process that lists a generated folder of 16x16 PNG images
(100 classes), then iterates one epoch through ``jaxconv.data.Loader``
(random resized crop, flip, normalise; batch 100; ``--workers`` worker
processes) into a tiny jitted consumer. Reported per run, in MiB: the main
process's resident set before listing the folder (after the imports and the
consumer's compilation) and its peak from then to the end of the epoch
(sampled every 20 ms), its ``ru_maxrss`` (the peak over the whole process,
start-up included), the largest worker's ``ru_maxrss`` (``RUSAGE_CHILDREN``),
and the peak of the whole process tree's summed RSS (sampled).

Run from the repository root::

    python benchmarks/loader_memory.py              # generates the folders once (--cache), prints
    python benchmarks/loader_memory.py --write      # also writes the loader-memory section of RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SECTION = "loader-memory"
CLASSES = 100
SIZES = (5_000, 50_000)


def generate(root: str, count: int, size: int = 16) -> str:
    """Writes ``count`` random ``size x size`` RGB PNGs as ``root/<class>/<i>.png`` (once: kept if complete)."""
    from PIL import Image

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(count)
    for c in range(CLASSES):
        os.makedirs(os.path.join(root, f"class{c:03d}"), exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, f"class{i % CLASSES:03d}", f"{i:06d}.png"))
    open(done, "w").close()
    return root


class TreeSampler:
    """Samples, every ``interval`` seconds, the RSS of this process and the sum over it and its descendants."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.start = self.main_peak = self.tree_peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        main = self.process.memory_info().rss
        total = main
        for p in self.process.children(recursive=True):
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
                pass
        self.main_peak, self.tree_peak = max(self.main_peak, main), max(self.tree_peak, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def child(root: str, workers: int, batch_size: int) -> dict:
    """One epoch over ``root`` in this process; the measurements as a dict."""
    import jax
    import jax.numpy as jnp

    from jaxconv.data import Augment, Loader, image_folder

    consume = jax.jit(lambda x, y: jnp.mean(x) + jnp.sum(y))
    consume(np.zeros((batch_size, 16, 16, 3), np.float32), np.zeros(batch_size, np.int32)).block_until_ready()
    with TreeSampler() as sampler:
        start = time.perf_counter()
        folder = image_folder(root, image_size=16, augment=Augment(), val_fraction=0)
        loader = Loader(folder.train, batch_size=batch_size, seed=0, workers=workers)
        images = 0
        with loader.iterator() as stream:
            for x, y in stream:
                consume(x, y).block_until_ready()
                images += len(y)
        seconds = time.perf_counter() - start
        time.sleep(0.2)  # a last sample after the workers have gone
    mib = 2**-20
    return {"files": len(folder.train), "images": images, "batches": loader.batches_per_epoch,
            "seconds": seconds, "main_before_mb": sampler.start * mib, "main_peak_mb": sampler.main_peak * mib,
            "main_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
            "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "tree_peak_mb": sampler.tree_peak * mib}


def measure(root: str, workers: int, batch_size: int) -> dict:
    """``child`` in a fresh process (so each peak is that run's own)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", root, "--workers", str(workers),
                          "--batch-size", str(batch_size)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(runs: list[tuple[int, int, dict]], info: dict) -> str:
    rows, by_workers = [], {}
    for count, workers, r in runs:
        by_workers.setdefault(workers, {})[count] = r
        rows.append([f"{count:,}", workers, r["batches"], f"{r['seconds']:.1f}", f"{r['images'] / r['seconds']:.0f}",
                     f"{r['main_before_mb']:.0f}", f"{r['main_peak_mb']:.0f}", f"{r['main_maxrss_mb']:.0f}",
                     f"{r['worker_peak_mb']:.0f}", f"{r['tree_peak_mb']:.0f}"])
    ratios = []
    for workers, r in sorted(by_workers.items()):
        small, large = r[SIZES[0]], r[SIZES[1]]
        ratios.append(f"- workers={workers}: 50,000 / 5,000 images: main process peak "
                      f"{large['main_peak_mb'] / small['main_peak_mb']:.3f}x, process tree peak "
                      f"{large['tree_peak_mb'] / small['tree_peak_mb']:.3f}x (the claim: within 1.2x)")
    table = common.markdown_table(["images", "workers", "batches", "epoch (s)", "images/s", "main before (MiB)",
                                   "main peak (MiB)", "main ru_maxrss (MiB)", "largest worker (MiB)",
                                   "tree peak (MiB)"], rows)
    return (f"## Image-folder pipeline: peak memory over one epoch (`benchmarks/loader_memory.py`)\n\n"
            f"{common.describe_machine(info)}\n- grain {info.get('grain')}, pillow {info.get('PIL')}\n\n"
            "Generated folders of 16x16 RGB PNG files in 100 classes; one epoch each, in a fresh process: "
            "`image_folder(image_size=16, augment=Augment())` (random resized crop, flip), "
            "`Loader(batch_size=100, seed=0)`, a jitted `mean(x) + sum(y)` per batch. The epoch time includes "
            "listing the folder and starting the workers. \"main before\" is the main process after its imports; "
            "\"main peak\" and \"tree peak\" are sampled from there to the end of the epoch (every 20 ms); "
            "`ru_maxrss` covers the whole process, start-up included.\n\n"
            f"{table}\n\n" + "\n".join(ratios) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "jaxconv-loader-memory"))
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workers[0], args.batch_size)))
        return
    info = common.machine_info(["grain", "PIL"])
    runs = []
    for count in SIZES:
        start = time.perf_counter()
        root = generate(os.path.join(args.cache, f"png16-{count}"), count)
        print(f"folder of {count} images ready in {time.perf_counter() - start:.1f}s", flush=True)
        for workers in args.workers:
            runs.append((count, workers, measure(root, workers, args.batch_size)))
            print(count, workers, runs[-1], flush=True)
    text = report(runs, info)
    print(text)
    if args.write:
        common.write_section(common.RESULTS_MD, SECTION, text)


if __name__ == "__main__":
    main()
