"""Fit a converted model's trust checks: temperature, "unlike the training data", heat-map.

    python -m converters.trust --model edge/models --data ../shared/data/brain-tumor-mri \\
        --out edge/models --force

Also run by ``python -m converters.tflite`` for every model that passes the gate. Steps:

1. **Outputs**: the model's own logits, stage descriptors and last spatial-attention map
   are exposed as extra outputs (``converters.outputs``); the original output must stay
   bit-identical on probe images, or nothing is written.
2. **Data**: the Training split, and in it the validation split the trainer held out
   (stratified ``val_fraction``, ``seed``, as ``trainer.data.stratified_split`` makes it;
   read from the manifest's source run when recorded). The model never trained on the
   validation images; the trainer did use them to pick its best epoch.
3. **Temperature**: the T minimising the validation images' negative log-likelihood of
   ``softmax(logits / T)``.
4. **Unlike the training data**: class means and one shared covariance (shrunk towards its
   mean variance by ``shrinkage``) of the pooled stage descriptors of the *training* part,
   kept as its leading principal directions plus one variance for the rest (``fit_ood``:
   how many directions is chosen by the validation images' likelihood, within a size
   budget); the score is the Mahalanobis distance to the nearest class mean; the threshold
   is the ``pass_rate`` quantile of the validation images' scores.
5. **Heat-map** (``choose_heatmap``): a class activation map when the classifier reads a
   global average pool of the last feature map (the int8 model's classifier weights and the
   map's mean over the training part go into ``trust.npz``), else CBAM's last spatial
   attention.
6. The model, ``trust.npz`` and the manifest (format 2, the statistics hashed) are written,
   the manifest last.

The external checks (``../shared/data/br35h-tumour``, the test split) play no part here.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters import outputs as model_outputs
from converters.errors import ConversionFailedError, ConverterError, OutputError, UsageError
from converters.outdir import check_output_folder, output_folder
from edge.durable import install_files
from edge.manifest import (
    MANIFEST_NAME,
    TRUST_VERSION,
    ModelManifest,
    NamedOutput,
    load_verified,
    sha256_file,
    write_manifest,
)
from edge.preprocess import scale
from edge.runtime import TFLiteClassifier
from edge.trust import (
    STATISTICS_FORMAT,
    calibration_error,
    feature_vector,
    softmax,
    subspace_distances,
    subspace_mahalanobis,
)
from edge.views import NONE, views

log = logging.getLogger(__name__)

STATISTICS_NAME = "trust.npz"
DEFAULT_PASS_RATE = 0.95
DEFAULT_SHRINKAGE = 1e-3
# The number of principal directions the "unlike the training data" statistics keep is chosen
# among these (and the feature count) by the validation features' likelihood, within a size
# budget: the directions are stored as float16, D x k x 2 bytes.
COMPONENT_CANDIDATES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
STATISTICS_BUDGET_BYTES = 4 * 2**20
PROBE_IMAGES = 32


@dataclass(frozen=True)
class TrustOptions:
    data: Path
    val_fraction: float | None = None  # None: the source run's, else 0.1
    seed: int | None = None  # None: the source run's, else 0
    pass_rate: float = DEFAULT_PASS_RATE
    shrinkage: float = DEFAULT_SHRINKAGE
    components: int | None = None  # None: chosen by the validation likelihood (fit_ood)
    negative_label: str | None = None  # None: "notumor" when the model has that label
    model_version: str | None = None  # None: keep the manifest's
    progress: bool = False


def check_options(opts: TrustOptions) -> None:
    """The option ranges, before the model runs over the Training split (minutes)."""
    if not 0.5 <= opts.pass_rate < 1.0:
        raise UsageError(f"--pass-rate must be in [0.5, 1), got {opts.pass_rate}")
    if opts.components is not None and opts.components < 1:
        raise UsageError(f"--components must be at least 1 (and at most the model's feature "
                         f"count), got {opts.components}")
    if opts.val_fraction is not None and not 0.0 < opts.val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be between 0 and 1, got {opts.val_fraction}")
    if opts.seed is not None and opts.seed < 0:
        raise UsageError(f"--seed must be 0 or more, got {opts.seed}")
    if not 0.0 <= opts.shrinkage < float("inf"):
        raise UsageError(f"shrinkage must be a finite number, 0 or more, got {opts.shrinkage}")


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the mean negative log-likelihood (golden-section search on
    log T over [0.02, 50]; the NLL is convex in 1/T).

    ``logits`` is (N, classes), or (views, N, classes) for a model run on several test-time
    views (``edge.views``): the answer the agent gives is then the mean of the views'
    ``softmax(logits / T)``, and that mean is what is calibrated."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 2:
        logits = logits[None]
    labels = np.asarray(labels, dtype=np.int64)

    def nll(log_t: float) -> float:
        p = softmax(logits, float(np.exp(log_t))).mean(axis=0)[np.arange(len(labels)), labels]
        return float(-np.mean(np.log(np.clip(p, 1e-300, 1.0))))

    low, high = np.log(0.02), np.log(50.0)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return float(np.exp((low + high) / 2))


def fit_ood(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
            pass_rate: float = DEFAULT_PASS_RATE, shrinkage: float = DEFAULT_SHRINKAGE,
            components: int | None = None,
            budget_bytes: int = STATISTICS_BUDGET_BYTES) -> dict[str, Any]:
    """Class means and the shared covariance in the compact form ``edge.trust`` reads
    (statistics format 2), the validation scores, and the threshold ``pass_rate`` of the
    validation images stay under.

    The features are standardised by their within-class standard deviation. The covariance
    of the standardised residuals (shrunk towards its mean variance by ``shrinkage``) keeps
    its ``k`` leading principal directions and their variances; every other direction gets
    their mean variance (probabilistic PCA, Tipping and Bishop 1999). ``k`` is
    ``components`` when given, else the candidate (``COMPONENT_CANDIDATES``, and ``D``
    itself) under which the validation features are most likely, among those whose
    directions fit in ``budget_bytes`` as float16. Only the training features and the
    validation features take part.
    """
    x = np.asarray(train_features, dtype=np.float64)
    y = np.asarray(train_labels, dtype=np.int64)
    val = np.asarray(val_features, dtype=np.float64)
    if not 0.5 <= pass_rate < 1.0:
        raise UsageError(f"--pass-rate must be in [0.5, 1), got {pass_rate}")
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    residual = x - means[np.searchsorted(classes, y)]
    spread = residual.std(axis=0)
    scale = np.where(spread > 1e-6 * max(float(spread.max()), 1e-300), spread, 1.0)
    z = residual / scale
    dim = z.shape[1]
    covariance = z.T @ z / max(1, len(z) - len(classes))
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.maximum(eigenvalues[order], 0.0)
    eigenvectors = eigenvectors[:, order]
    floor = max(shrinkage * float(eigenvalues.mean()), 1e-12)

    def model(k: int) -> tuple[np.ndarray, np.ndarray, float]:
        directions = eigenvectors[:, :k].astype(np.float16).astype(np.float64)  # as stored
        rest = float(eigenvalues[k:].mean()) + floor if k < dim else 0.0
        return directions, eigenvalues[:k] + floor, rest

    def log_likelihood(k: int) -> float:
        """Mean log-density of the validation features under the nearest class (up to a
        constant the same for every k)."""
        directions, variances, rest = model(k)
        q = subspace_distances(val, means, scale, directions, variances, rest).min(axis=1)
        log_det = float(np.log(variances).sum()) + ((dim - k) * np.log(rest) if k < dim else 0)
        return float(np.mean(-0.5 * (log_det + q)))

    affordable = [k for k in sorted({*COMPONENT_CANDIDATES, dim})
                  if k <= dim and dim * k * 2 <= budget_bytes]
    if components is not None:
        if not 1 <= components <= dim:
            raise UsageError(f"--components must be between 1 and the feature count {dim}, "
                             f"got {components}")
        chosen, likelihoods = components, {components: log_likelihood(components)}
    else:
        if not affordable:
            affordable = [1]
        likelihoods = {k: log_likelihood(k) for k in affordable}
        chosen = max(likelihoods, key=likelihoods.__getitem__)
    directions, variances, rest = model(chosen)
    val_scores = np.sort(subspace_mahalanobis(val, means, scale, directions, variances, rest))
    threshold = float(np.quantile(val_scores, pass_rate))
    return {"means": means, "scale": scale, "components": directions, "variances": variances,
            "residual_variance": rest, "validation_scores": val_scores, "threshold": threshold,
            "features": dim, "kept_variance": float(eigenvalues[:chosen].sum()
                                                    / max(eigenvalues.sum(), 1e-300)),
            "validation_log_likelihood": {int(k): round(v, 2) for k, v in likelihoods.items()}}


def write_statistics(path: Path, inputs: list[str], fit: dict[str, Any],
                     activation: dict[str, np.ndarray] | None = None) -> None:
    """``fit_ood``'s result as ``trust.npz`` (statistics format 2; NumPy, no pickles), with
    the class activation map's arrays when the heat-map is one: ``class_weights`` (features
    x classes) and ``class_activation_baseline`` (H x W x classes, the map's mean over the
    training images)."""
    extra = {key: np.asarray(value, dtype=np.float32)
             for key, value in (activation or {}).items()}
    with open(path, "wb") as handle:
        np.savez_compressed(handle, format=np.array(STATISTICS_FORMAT), **extra,
                            inputs=np.array(list(inputs)),
                            means=fit["means"].astype(np.float32),
                            scale=fit["scale"].astype(np.float32),
                            components=fit["components"].astype(np.float16),
                            variances=fit["variances"].astype(np.float32),
                            residual_variance=np.float32(fit["residual_variance"]),
                            validation_scores=fit["validation_scores"].astype(np.float32))


def ood_fit_record(fit: dict[str, Any], shrinkage: float) -> dict[str, Any]:
    """What the manifest's ``trust.ood.fit`` records of a fit."""
    return {"features": int(fit["features"]), "components": int(fit["components"].shape[1]),
            "kept_variance": round(fit["kept_variance"], 4), "shrinkage": shrinkage,
            "classes": len(fit["means"]),
            "validation_log_likelihood": {str(k): v for k, v in
                                          fit["validation_log_likelihood"].items()}}


def _run(classifier: TFLiteClassifier, images: np.ndarray, spec: Any, keys: list[str],
         desc: str, progress: bool, summed: str | None = None,
         sum_over: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Probabilities and the ``keys`` outputs of every image; the ``summed`` output is not
    kept per image (a feature map is large) but averaged over the images ``sum_over`` marks,
    and returned under its key."""
    from tqdm import tqdm

    probs, collected = [], {k: [] for k in keys}
    total, count = None, 0
    for i, image in enumerate(tqdm(images, desc=desc, unit="img", disable=not progress,
                                   leave=False, file=sys.stderr)):
        p, out = classifier.predict_with_outputs(scale(image, spec))
        probs.append(p)
        for key in keys:
            collected[key].append(out[key])
        if summed is not None and (sum_over is None or sum_over[i]):
            value = np.asarray(out[summed], dtype=np.float64)
            total = value.copy() if total is None else total + value
            count += 1
    result = {k: np.stack(v) for k, v in collected.items()}
    if summed is not None and count:
        result[summed] = total / count
    return np.stack(probs), result


def _named(exposed: list[model_outputs.Exposed]) -> dict[str, NamedOutput]:
    return {e.key: NamedOutput(e.tensor, e.spec) for e in exposed}


def expose_checked(model_path: Path, manifest: ModelManifest, target: Path,
                   probe: np.ndarray) -> tuple[dict[str, NamedOutput], dict[str, str]]:
    """Write ``model_path`` with its trust tensors exposed to ``target``; verify the original
    output is bit-identical on ``probe`` (float inputs). A model exposed before (a refit)
    keeps its outputs and gains those it lacks. Returns the outputs and the heat-map kind of
    each output that can serve as one."""
    original = model_path.read_bytes()
    tensors = model_outputs.find_trust_tensors(original)
    already = model_outputs.exposed_outputs(original)
    taken = {e.key for e in already}
    missing = {key: index for key, index in tensors.items() if key not in taken}
    if not tensors and not already:
        raise ConversionFailedError(
            f"{model_path} has none of the tensors the trust checks use (logits, stage "
            "descriptors, attention map)")
    if not missing:
        target.write_bytes(original)
        exposed = already
    else:
        target.write_bytes(model_outputs.expose(original, missing))
        exposed = model_outputs.exposed_outputs(target.read_bytes())
        before = TFLiteClassifier(model_path, dataclasses.replace(manifest, outputs={}),
                                  num_threads=1)
        after = TFLiteClassifier(target, dataclasses.replace(manifest, outputs=_named(exposed)),
                                 num_threads=1)
        for image in probe:
            if not np.array_equal(before.predict(image), after.predict(image)):
                raise ConversionFailedError(
                    "exposing the trust outputs changed the model's probabilities; nothing "
                    "was written (please report this)")
    return _named(exposed), {e.key: e.heatmap_kind for e in exposed if e.heatmap_kind}


def choose_heatmap(target: Path, outputs: dict[str, NamedOutput], kinds: dict[str, str],
                   labels: list[str]) -> tuple[str, str, np.ndarray | None] | None:
    """The heat-map: (output, kind, classifier weights or None). A class activation map
    (Zhou et al., 2016) where the classifier reads a global average pool of the last feature
    map: the logit of a class is then exactly the mean over positions of the map plus a
    bias, so the map is what the answer is made of. Otherwise CBAM's last spatial attention.
    """
    if "feature_map" in kinds:
        weights = model_outputs.classifier_weights(target.read_bytes())
        channels = outputs["feature_map"].spec.shape[-1]
        if weights is not None and weights.shape == (channels, len(labels)):
            return "feature_map", kinds["feature_map"], weights
    if "heatmap" in kinds:
        return "heatmap", kinds["heatmap"], None
    return None


def fit_trust(model_path: Path, manifest: ModelManifest, staging: Path,
              opts: TrustOptions) -> tuple[ModelManifest, dict[str, Any]]:
    """Expose, run, fit; write ``staging/model.tflite`` and ``staging/trust.npz``. Returns
    the new manifest (not yet written) and a summary of the fit."""
    from trainer.data import load_split, stratified_indices, stratified_split

    run = (manifest.provenance.get("source") or {}).get("run") or {}
    val_fraction = opts.val_fraction if opts.val_fraction is not None else float(
        run.get("val_fraction", 0.1))
    seed = opts.seed if opts.seed is not None else int(run.get("seed", 0))
    labels = list(manifest.labels)
    negative = opts.negative_label
    if negative is None:
        negative = next((x for x in labels if x.lower() in ("notumor", "no_tumor", "no_tumour")),
                        None)
    elif negative not in labels:
        raise UsageError(f"--negative-label {negative!r} is not one of the model's labels "
                         f"({', '.join(labels)})")
    spec = manifest.preprocess
    log.info("decoding %s/Training", opts.data)
    train = load_split(opts.data, "Training", spec, classes=labels, progress=opts.progress)
    train_idx, val_idx = stratified_split(train.labels, val_fraction, seed)
    probe = scale(train.images[stratified_indices(train.labels, PROBE_IMAGES, seed)], spec)
    target = staging / manifest.model_file
    outputs, heatmap_kinds = expose_checked(model_path, manifest, target, probe)
    new = dataclasses.replace(manifest, outputs=outputs, model_sha256=sha256_file(target))
    stages = sorted((k for k in outputs if k.startswith("stage")), key=lambda k: int(k[5:]))
    ood_inputs = stages or [k for k in ("features",) if k in outputs]
    has_logits = "logits" in outputs or manifest.output_kind == "logits"
    keys = [k for k in ("logits",) if k in outputs] + ood_inputs
    heatmap = choose_heatmap(target, outputs, heatmap_kinds, labels)
    if heatmap is not None and heatmap[2] is not None and not ood_inputs:  # nowhere to keep
        heatmap = choose_heatmap(target, outputs, {k: v for k, v in heatmap_kinds.items()
                                                   if k != heatmap[0]}, labels)
    cam = heatmap is not None and heatmap[2] is not None
    in_training_part = np.zeros(len(train.labels), dtype=bool)
    in_training_part[train_idx] = True
    classifier = TFLiteClassifier(target, new, num_threads=None)
    probs, collected = _run(classifier, train.images, spec, keys, "trust: Training split",
                            opts.progress, summed=heatmap[0] if cam else None,
                            sum_over=in_training_part)
    y = train.labels

    def logits_of(p: np.ndarray, out: dict[str, np.ndarray]) -> np.ndarray:
        return out["logits"] if "logits" in out else np.log(np.clip(p, 1e-12, 1.0))

    # a model run on test-time views (edge.views) is calibrated on the mean of its views'
    # answers, as the agent gives them; the "unlike the training data" statistics and the
    # heat-map stay the picture's own
    val_views = [(probs[val_idx], {k: v[val_idx] for k, v in collected.items()
                                   if k == "logits"})]
    for view in views(train.images[val_idx], new.test_time)[1:]:
        val_views.append(_run(classifier, view, spec, [k for k in ("logits",) if k in outputs],
                              f"trust: validation split, {new.test_time}", opts.progress))
    val_probs = np.mean([p for p, _ in val_views], axis=0)
    summary: dict[str, Any] = {
        "data": str(opts.data), "split": "Training", "val_fraction": val_fraction, "seed": seed,
        "train_images": int(len(train_idx)), "validation_images": int(len(val_idx)),
        "validation_accuracy": round(float((val_probs.argmax(1) == y[val_idx]).mean()), 4),
        "primary_output_identical_on": PROBE_IMAGES,
    }
    if new.test_time != NONE:
        summary["test_time"] = new.test_time
    trust: dict[str, Any] = {"version": TRUST_VERSION}
    if negative is not None:
        trust["negative_label"] = negative
    if has_logits:
        val_logits = np.stack([logits_of(p, out) for p, out in val_views])
        temperature = fit_temperature(val_logits, y[val_idx])
        trust["temperature"] = round(temperature, 6)
        summary.update(
            temperature=round(temperature, 6),
            validation_ece_before=round(calibration_error(val_probs, y[val_idx]), 4),
            validation_ece_after=round(calibration_error(
                softmax(val_logits, temperature).mean(axis=0), y[val_idx]), 4))
    if ood_inputs:
        feats = np.stack([feature_vector({k: collected[k][i] for k in ood_inputs},
                                         tuple(ood_inputs)) for i in range(len(y))])
        fit = fit_ood(feats[train_idx], y[train_idx], feats[val_idx], opts.pass_rate,
                      opts.shrinkage, components=opts.components)
        stats_path = staging / STATISTICS_NAME
        activation = None
        if cam:  # the class activation map, and its mean over the training part
            weights = heatmap[2]
            baseline = np.asarray(collected[heatmap[0]], dtype=np.float64).reshape(
                outputs[heatmap[0]].spec.shape[1:]) @ weights
            activation = {"class_weights": weights, "class_activation_baseline": baseline}
        write_statistics(stats_path, ood_inputs, fit, activation)
        trust["ood"] = {"method": "mahalanobis", "inputs": ood_inputs,
                        "statistics": STATISTICS_NAME,
                        "statistics_sha256": sha256_file(stats_path),
                        "threshold": round(fit["threshold"], 6), "pass_rate": opts.pass_rate,
                        "fit": ood_fit_record(fit, opts.shrinkage)}
        summary.update(ood_inputs=ood_inputs, ood_features=int(fit["features"]),
                       ood_components=int(fit["components"].shape[1]),
                       ood_kept_variance=round(fit["kept_variance"], 4),
                       ood_threshold=round(fit["threshold"], 4), ood_pass_rate=opts.pass_rate,
                       ood_statistics_bytes=stats_path.stat().st_size)
    if heatmap is not None:
        trust["heatmap"] = {"output": heatmap[0], "kind": heatmap[1]}
        summary["heatmap"] = heatmap[1]
    trust["fit"] = summary
    provenance = dict(new.provenance)
    provenance["trust"] = {"tool": "neuroedge converters.trust", "from_version": manifest.version,
                           "from_sha256": manifest.model_sha256}
    version = opts.model_version or manifest.version
    return dataclasses.replace(new, trust=trust, provenance=provenance, version=version), summary


def refit(model_dir: Path, out: Path, opts: TrustOptions, force: bool = False) -> dict[str, Any]:
    """Fit the trust checks of the model in ``model_dir`` and write the result to ``out``."""
    check_options(opts)
    manifest, model_path = load_verified(model_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    if (out / MANIFEST_NAME).exists() and not force:
        raise OutputError(f"--out {out} already holds a model; pass --force to replace it")
    check_output_folder(out)
    with output_folder(out):
        try:
            staging = Path(tempfile.mkdtemp(prefix=".trust-", dir=out))
        except OSError as exc:
            raise OutputError(f"cannot write to --out {out}: {exc.strerror}") from None
        try:
            new, summary = fit_trust(model_path, manifest, staging, opts)
            write_manifest(new, staging / MANIFEST_NAME)
            load_verified(staging)  # exactly what the device will do
            install_files([(staging / name, out / name)  # the manifest last
                           for name in (STATISTICS_NAME, manifest.model_file, MANIFEST_NAME)
                           if (staging / name).exists()], mode=0o644)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m converters.trust", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True,
                        help="model folder (model.tflite + model.json)")
    parser.add_argument("--data", type=Path, required=True,
                        help="data set folder with Training/<class>/ (the model's labels)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the model")
    parser.add_argument("--val-fraction", type=float,
                        help="validation share of Training (default: the source run's, else 0.1)")
    parser.add_argument("--seed", type=int,
                        help="seed of the validation split (default: the source run's, else 0)")
    parser.add_argument("--pass-rate", type=float, default=DEFAULT_PASS_RATE,
                        help="share of validation images under the OOD threshold (%(default)s)")
    parser.add_argument("--components", type=int,
                        help="principal directions the 'unlike the training data' statistics "
                             "keep (default: chosen by the validation images' likelihood "
                             "within a 4 MiB budget)")
    parser.add_argument("--negative-label", help="the 'no tumour' label (default: notumor)")
    parser.add_argument("--model-version",
                        help="version of the new model (default: the old one's; a published "
                             "version never changes, so give a new one when replacing)")
    parser.add_argument("--force", action="store_true", help="replace a model in --out")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from edge.errors import EdgeError
    from trainer.errors import TrainerError

    opts = TrustOptions(data=args.data, val_fraction=args.val_fraction, seed=args.seed,
                        pass_rate=args.pass_rate, components=args.components,
                        negative_label=args.negative_label,
                        model_version=args.model_version,
                        progress=sys.stderr.isatty())
    try:
        summary = refit(args.model, args.out, opts, force=args.force)
    except (ConverterError, TrainerError, EdgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    for key, value in summary.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
