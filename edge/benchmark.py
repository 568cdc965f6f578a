"""``python -m edge.benchmark --model DIR``: how fast the agent is on this machine.

Prints two Markdown tables: the time of each stage for typical inputs (median of repeats),
and a burst of N new files through the whole agent (claim, hash, decode, classify, reports,
archive, index) with the throughput and the process's peak memory. Each burst runs in its
own process so that peak memory is per burst: it should not grow with N (the agent tracks
at most ``[watch] max_pending`` files at a time). Run it on the device itself; the figures in
docs/performance.md say on which machine they were measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def new_mr_dataset() -> Any:
    """An empty MR Image Storage data set with its file meta and fresh UIDs (study, series,
    instance), explicit VR little endian: what the benchmarks and tests build on."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    return ds


def synthetic_mr(path: Path, size: int = 512, pixels: np.ndarray | None = None,
                 **tags: Any) -> Path:
    """A 16-bit (12 bits stored) MR-like DICOM built on the fly; no patient data.

    ``pixels`` (8-bit grayscale) become the image, scaled to 12 bits; default: the phantom.
    ``tags`` (keyword=value) are set last: a study's UIDs, an instance number, ...
    """
    from .sample_inbox import phantom

    picture = phantom(size) if pixels is None else np.asarray(pixels, dtype=np.uint8)
    ds = new_mr_dataset()
    ds.Rows, ds.Columns = int(picture.shape[0]), int(picture.shape[1])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (picture.astype(np.uint16) * 16).tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    try:
        ds.save_as(str(path), enforce_file_format=True)
    except TypeError:  # pydicom 2.4
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)
    return path


def time_bare(classifier: Any, config: Any, paths: list[Path]
              ) -> tuple[list[float], list[float], list[float]]:
    """Decode and classify each path in turn: (decode, preprocess, inference) ms per file."""
    from .inputs import decode_file

    decode, prep, infer = [], [], []
    for path in paths:
        t0 = time.perf_counter()
        decoded = decode_file(path, config.dicom, config.limits)
        decode.append((time.perf_counter() - t0) * 1000)
        prediction = classifier.classify(decoded)
        prep.append(prediction.timings_ms["preprocess"])
        infer.append(prediction.timings_ms["inference"])
    return decode, prep, infer


def stage_table(model: str, work: Path, repeats: int) -> list[dict[str, Any]]:
    from .classifier import Classifier
    from .config import AgentConfig
    from .errors import ConfigError
    from .sample_inbox import phantom, pydicom_test_file

    # the stages up to the model's answer, with its own (nearly free) heat-map as before the
    # occlusion map, whose 49 more runs the agent rows below include
    config = AgentConfig().override("paths", model=model).override("report", heatmap="model")
    classifier = Classifier(config)
    Image.fromarray(phantom(512)).save(str(work / "phantom512.png"))
    Image.fromarray(phantom(512)).convert("RGB").save(str(work / "phantom512.jpg"), quality=92)
    inputs = [("DICOM MR 64x64 (MR_small)", pydicom_test_file("MR_small.dcm")),
              ("DICOM MR 64x64 JPEG 2000", pydicom_test_file("MR_small_jp2klossless.dcm"))]
    try:  # shipped by pydicom >= 3 only
        inputs.append(("DICOM MR 484x300 (examples_overlay)",
                       pydicom_test_file("examples_overlay.dcm")))
    except ConfigError:
        pass
    inputs += [("DICOM MR 512x512 16-bit", synthetic_mr(work / "mr512.dcm")),
               ("PNG 512x512", work / "phantom512.png"),
               ("JPEG 512x512", work / "phantom512.jpg")]
    rows = []
    for label, path in inputs:
        decode, prep, infer = time_bare(classifier, config, [path] * repeats)
        rows.append({"input": label, "decode_ms": statistics.median(decode),
                     "preprocess_ms": statistics.median(prep),
                     "inference_ms": statistics.median(infer)})
    return rows


def burst_child(model: str, count: int) -> dict[str, Any]:
    """Run in a fresh process: N files through the agent's backlog run."""
    from .classifier import Classifier
    from .config import config_from_dict
    from .watch import Agent

    root = Path(tempfile.mkdtemp(prefix="neuroedge-bench-"))
    try:
        inbox = root / "inbox"
        inbox.mkdir()
        rng = np.random.default_rng(0)
        base = np.asarray(Image.open(str(_phantom_png(root))))
        for i in range(count):
            noisy = np.clip(base.astype(np.int16) + rng.integers(-3, 4, base.shape), 0, 255)
            Image.fromarray(noisy.astype(np.uint8)).save(str(inbox / f"img{i:05d}.png"))
        config = config_from_dict({"paths": {"inbox": str(inbox), "outbox": str(root / "out"),
                                             "model": model},
                                   "watch": {"settle_seconds": 0.0}}, "benchmark")
        rss_before = _peak_rss_mb()
        agent = Agent(config, Classifier(config), once=True)
        t0 = time.perf_counter()
        counts = agent.run()
        seconds = time.perf_counter() - t0
        return {"files": count, "classified": counts["classified"], "seconds": seconds,
                "files_per_s": count / seconds, "peak_rss_mb": _peak_rss_mb(),
                "rss_before_run_mb": rss_before}
    finally:
        shutil.rmtree(str(root), ignore_errors=True)


def _phantom_png(root: Path) -> Path:
    from .sample_inbox import phantom
    path = root / "base.png"
    Image.fromarray(phantom(256)).save(str(path))
    return path


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Linux's ru_maxrss also counts the parent's size at the
    moment this process was started (it survives exec), so VmHWM is read where it exists."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edge.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (model.tflite + model.json)")
    parser.add_argument("--repeats", type=int, default=20, help="repeats per stage timing")
    parser.add_argument("--bursts", default="200,2000", help="burst sizes, comma-separated")
    parser.add_argument("--burst-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.burst_child:
        print(json.dumps(burst_child(args.model, args.burst_child)))
        return
    import platform

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        rows = stage_table(args.model, Path(tmp), args.repeats)
    print(f"Per-stage time, median of {args.repeats} (ms)\n")
    print("| input | decode | preprocess | inference |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['input']} | {r['decode_ms']:.1f} | {r['preprocess_ms']:.1f} | "
              f"{r['inference_ms']:.1f} |")
    print("\nBurst of new 256x256 PNG files through the whole agent (one process each)\n")
    print("| files | seconds | files/s | peak RSS (MB) | RSS before the run (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.bursts.split(",") if s.strip()):
        out = subprocess.run([sys.executable, "-m", "edge.benchmark", "--model", args.model,
                              "--burst-child", str(size)], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['files']} | {r['seconds']:.1f} | {r['files_per_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['rss_before_run_mb']:.0f} |")


if __name__ == "__main__":
    main()
