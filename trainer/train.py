"""Training: paper defaults, a seeded stratified validation split, a checkpoint every epoch,
and ``resume`` that continues a stopped run to the same final weights.

The paper's settings are the defaults (Adam, learning rate 1e-3, beta_1 0.9, beta_2 0.99,
categorical cross-entropy, 35 epochs, batch 64: ``trainer.recipes.RECIPES["paper"]``);
other recipes change optimizer, schedule, label smoothing and augmentation. The loss is
computed from the logits (``trainer.logits``). The model kept in ``model.keras`` is the
epoch with the best validation accuracy; the test split is never touched here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.durable import atomic_file, atomic_path
from edge.manifest import sha256_file
from edge.preprocess import DEFAULT_SPEC, PreprocessSpec
from trainer.data import Dataset, load_split, stratified_split
from trainer.errors import DivergedError, OptionError, RunError
from trainer.lesions import lesion_class
from trainer.reweight import PLANE_METHODS, REWEIGHT_METHODS
from trainer.runs import RUN_NAME, RunFolder, default_run_name, environment
from trainer.xla import avoid_cpu_xla, jit_compile_setting

log = logging.getLogger(__name__)

VAL_LESION_KEY = "val_lesion_missed"
VAL_LESION_STREAM = 7  # the generator stream of the painted validation pictures


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; stored in run.json and reused by ``resume``."""

    arch: str
    data_dir: str
    runs_dir: str = "runs"
    name: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 35
    batch_size: int = 64
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.99
    epsilon: float = 1e-7
    seed: int = 0
    limit: int | None = None
    val_fraction: float = 0.1
    augment: str = "none"  # none | light | strong (trainer.augment)
    patience: int | None = None
    distribute: bool = False
    recalibrate_bn: int = 0
    cache_dir: str | None = None
    use_cache: bool = True
    spec: PreprocessSpec = DEFAULT_SPEC
    cpu_kernels: bool = False  # trainer/cpu_kernels.py (opt-in; same mathematics)
    recipe: str = "paper"  # trainer/recipes.py: where the defaults below came from
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0  # adamw only (decoupled)
    schedule: str = "constant"  # constant | cosine (to COSINE_FLOOR of the peak)
    warmup_epochs: float = 0.0  # linear warm-up from 1 % of the peak
    label_smoothing: float = 0.0
    reweight: str = "none"  # none | shortcuts | planes | shortcuts+planes (trainer.reweight)
    planes_file: str | None = None  # --reweight planes|shortcuts+planes; None: the default table
    init_from: str | None = None  # --init-from RUN: start from that run's model (fine-tuning)

    def __post_init__(self) -> None:
        from trainer.batches import augment_policy

        try:  # True / False: the older boolean --augment (light / none)
            object.__setattr__(self, "augment", augment_policy(self.augment))
        except ValueError as exc:
            raise OptionError(str(exc)) from None

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (math.isfinite(self.learning_rate) and self.learning_rate > 0,
             f"--learning-rate must be a finite positive number, got {self.learning_rate}"),
            (self.seed >= 0, f"--seed must be 0 or more, got {self.seed}"),
            (self.name is None or bool(RUN_NAME.fullmatch(self.name)),
             f"--name {self.name!r}: a run name may only contain letters, digits, '.', '_' "
             f"and '-' (no '/'; it is one folder inside --runs-dir), and must start with a "
             f"letter or digit"),
            (0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1,
             f"--beta-1/--beta-2 must be in [0, 1), got {self.beta_1}, {self.beta_2}"),
            (0 < self.val_fraction < 1,
             f"--val-fraction must be between 0 and 1, got {self.val_fraction}"),
            (self.limit is None or self.limit >= 4,
             f"--limit must be at least 4, got {self.limit}"),
            (self.patience is None or self.patience >= 1,
             f"--patience must be at least 1, got {self.patience}"),
            (self.recalibrate_bn >= 0,
             f"--recalibrate-bn must be 0 (off) or a number of batches, got {self.recalibrate_bn}"),
            (self.reweight in REWEIGHT_METHODS,
             f"--reweight must be one of {', '.join(REWEIGHT_METHODS)}, got {self.reweight!r}"),
            (self.planes_file is None or self.reweight in PLANE_METHODS,
             "--planes FILE is the plane table of --reweight planes or shortcuts+planes; "
             "give both or neither"),
        ]
        for ok, message in checks:
            if not ok:
                raise OptionError(message)
        from trainer.recipes import validate as validate_recipe

        validate_recipe(self.recipe_values())
        from trainer.models import check_option_values

        check_option_values(self.model_options)

    def recipe_values(self) -> dict[str, Any]:
        """The settings a recipe decides (``trainer.recipes.Recipe`` fields)."""
        from trainer.recipes import Recipe

        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Recipe)}

    def optimizer_config(self) -> dict[str, Any]:
        config = {"name": self.optimizer, "learning_rate": self.learning_rate,
                  "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}
        if self.optimizer == "adamw":
            config["weight_decay"] = self.weight_decay
        if self.schedule != "constant" or self.warmup_epochs:
            from trainer.recipes import COSINE_FLOOR

            config.update(schedule=self.schedule, warmup_epochs=self.warmup_epochs)
            if self.schedule == "cosine":
                config["final_learning_rate"] = self.learning_rate * COSINE_FLOOR
        return config

    def loss_config(self) -> dict[str, Any]:
        from trainer.losses import loss_name

        return {"name": loss_name(self.augment), "from_logits": True,
                "label_smoothing": self.label_smoothing}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["spec"] = self.spec.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data["spec"] = PreprocessSpec.from_dict(data.get("spec", DEFAULT_SPEC.to_dict()))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainingData:
    train: Dataset
    val: Dataset

    @property
    def labels(self) -> list[str]:
        return self.train.class_names


def load_training_data(config: TrainConfig, progress: bool = False) -> TrainingData:
    """Training split (optionally a stratified --limit subset), cut into train/validation."""
    full = load_split(config.data_dir, "Training", config.spec, limit=config.limit,
                      seed=config.seed, progress=progress, cache_dir=config.cache_dir,
                      use_cache=config.use_cache)
    train_idx, val_idx = stratified_split(full.labels, config.val_fraction, config.seed)
    return TrainingData(full.subset(train_idx), full.subset(val_idx))


def _sample_weights(run: RunFolder, config: TrainConfig, data: TrainingData,
                    create: bool) -> np.ndarray | None:
    """The training images' sampling weights (``--reweight``): measured and written to the
    run folder when it starts, read back from there when it resumes."""
    if config.reweight == "none":
        return None
    from trainer.planes import DEFAULT_PLANES
    from trainer.reweight import (
        ShortcutWeights,
        combined_weights,
        plane_weights,
        shortcut_weights,
    )

    if create:
        if config.reweight == "planes":
            found = plane_weights(data.train.paths, data.train.labels, data.labels,
                                  config.planes_file or DEFAULT_PLANES)
        elif config.reweight == "shortcuts+planes":
            log.info("measuring the training pictures' properties for --reweight %s",
                     config.reweight)
            found = combined_weights(config.data_dir, data.train.paths, data.train.labels,
                                     data.labels, config.planes_file or DEFAULT_PLANES)
        else:
            log.info("measuring the training pictures' properties for --reweight %s",
                     config.reweight)
            found = shortcut_weights(config.data_dir, data.train.paths, data.train.labels,
                                     data.labels)
        run.write_sample_weights(found.to_dict())
        summary = found.summary(data.train.labels, data.labels)
        run.update_config(sample_weights=summary)
        log.info("--reweight %s: effective sample size %.0f of %d; pictures weighted over 2x "
                 "per class: %s", config.reweight, summary["effective_samples"],
                 len(data.train), {k: v["over_2x"] for k, v in summary["per_class"].items()})
    else:
        found = ShortcutWeights.from_dict(run.read_sample_weights(),
                                          str(run.sample_weights_json))
        if found.paths != data.train.paths:
            raise RunError(f"{run.sample_weights_json} names other training files than this "
                           f"run's; it cannot be resumed with these weights")
    return found.weights


def _resolved_model_options(arch: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options as recorded: a backbone weights path made absolute (checked to exist)."""
    options = dict(options)
    if arch == "mobilenetv2":
        from trainer.models import resolve_backbone_weights

        path = resolve_backbone_weights(options.get("backbone_weights"))
        options["backbone_weights"] = "none" if path is None else str(path.resolve())
    return options


def _learning_rate(config: TrainConfig, steps_per_epoch: int) -> Any:
    """A float for the paper's constant rate, else a warm-up + cosine (or flat) schedule."""
    if config.schedule == "constant" and not config.warmup_epochs:
        return config.learning_rate
    import keras

    from trainer.recipes import COSINE_FLOOR

    peak = config.learning_rate
    warmup = round(config.warmup_epochs * steps_per_epoch)
    total = config.epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak * 0.01 if warmup else peak,
        decay_steps=max(1, total - warmup),
        alpha=COSINE_FLOOR if config.schedule == "cosine" else 1.0,  # 1.0: flat after warm-up
        warmup_target=peak if warmup else None, warmup_steps=warmup)


def _optimizer(config: TrainConfig, steps_per_epoch: int = 1) -> Any:
    import keras

    rate = _learning_rate(config, steps_per_epoch)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=config.weight_decay,
                                      beta_1=config.beta_1, beta_2=config.beta_2,
                                      epsilon=config.epsilon)
    return keras.optimizers.Adam(learning_rate=rate, beta_1=config.beta_1,
                                 beta_2=config.beta_2, epsilon=config.epsilon)


def _loss(config: TrainConfig, from_logits: bool) -> Any:
    from trainer.losses import training_loss

    return training_loss(config.augment, config.label_smoothing, from_logits)


def compile_model(model: Any, config: TrainConfig, steps_per_epoch: int = 1,
                  from_logits: bool = False) -> None:
    """``model`` is the logits view (``from_logits``) or, for an old run, the softmax model."""
    model.compile(optimizer=_optimizer(config, steps_per_epoch), loss=_loss(config, from_logits),
                  metrics=["accuracy"], jit_compile=jit_compile_setting())


def steps_per_epoch(config: TrainConfig, train_images: int) -> int:
    return -(-train_images // config.batch_size)


def save_model_atomic(model: Any, path: Path) -> None:
    """``model.save`` through ``edge.durable``: a temporary ``.keras`` name beside ``path``,
    fsynced and renamed over it."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_file(dst) as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)


def _run_record(config: TrainConfig, data: TrainingData, options: dict[str, Any],
                distribution: str) -> dict[str, Any]:
    import keras

    from trainer.losses import CROSSENTROPY
    from trainer.models import ARCHITECTURE_INFO, deviations, is_no_imagenet
    from trainer.recipes import deviations as recipe_deviations

    loss = config.loss_config()
    record: dict[str, Any] = {
        "format": 1,
        "architecture": config.arch,
        "architecture_summary": ARCHITECTURE_INFO[config.arch].summary,
        "model_options": options,
        "labels": data.labels,
        "preprocess": config.spec.to_dict(),
        "data_dir": str(Path(config.data_dir).expanduser().resolve()),
        "data": {"train": len(data.train), "validation": len(data.val),
                 "train_per_class": data.train.class_counts(),
                 "validation_per_class": data.val.class_counts(), "limit": config.limit},
        "seed": config.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "recipe": config.recipe,
        "optimizer": config.optimizer_config(),
        "loss": loss["name"],
        "loss_settings": loss,
        "val_fraction": config.val_fraction,
        "augment": config.augment,
        "reweight": config.reweight,
        "early_stopping_patience": config.patience,
        "selection": "best val_accuracy",
        "distribution": distribution,
        "jit_compile": jit_compile_setting(),
        "cpu_kernels": _cpu_kernels_active(config),
        "bn_recalibration_batches": config.recalibrate_bn,
        "backend": keras.backend.backend(),
        "environment": environment(),
        "deviations": deviations(config.arch, options) + recipe_deviations(
            config.recipe, config.recipe_values()) + (
            [f"training pictures drawn with weights (--reweight {config.reweight}), not "
             f"once each per epoch"] if config.reweight != "none" else []) + (
            [f"loss {loss['name']} (painted pictures labelled 'one of the tumour classes'), "
             f"not categorical cross-entropy"] if loss["name"] != CROSSENTROPY else []),
        "no_imagenet_weights": is_no_imagenet(config.arch, options),
        "status": "running",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.to_dict(),
    }
    weights = options.get("backbone_weights")
    if weights and weights != "none":
        record["backbone_weights_sha256"] = sha256_file(weights)
    return record


def _cpu_kernels_active(config: TrainConfig) -> bool:
    from trainer.cpu_kernels import wanted

    return bool(config.cpu_kernels and wanted())


def _new_state() -> dict[str, Any]:
    return {"epochs_done": 0, "checkpoint": None, "best_epoch": None,
            "best_val_accuracy": None, "wait": 0, "stopped_early": False,
            "history": {}, "seconds": 0.0}


class _Validator:
    """Validation loss and accuracy after an epoch, BN statistics recalibrated first if asked.

    Done here rather than by Keras' ``validation_data`` so that ``--recalibrate-bn`` can
    fix the moving statistics *before* the epoch is scored: model selection then compares
    what the saved model will really predict.

    For the lesion policies also ``val_lesion_missed``: one synthetic lesion drawn into each
    validation "no tumour" picture (``trainer.lesions``, the same draws every epoch, no
    other augmentation), and the share of them the model still answers "no tumour". It says
    whether the network is learning the lesions it is shown (docs/results.md: the first
    lesion runs had not); it is recorded, not used to choose the epoch.
    """

    def __init__(self, config: TrainConfig, data: TrainingData) -> None:
        from trainer.batches import EvaluationBatches, TrainingBatches

        num_classes = len(data.labels)
        self.inputs = EvaluationBatches(data.val.images, None, num_classes, config.batch_size,
                                        spec=config.spec)
        self.labels = data.val.labels
        self.recalibration = None
        if config.recalibrate_bn:
            stream = TrainingBatches(data.train.images, data.train.labels, num_classes,
                                     config.batch_size, seed=config.seed + 1, spec=config.spec)
            self.recalibration = (stream, min(config.recalibrate_bn, len(stream)))
        self.negative = lesion_class(config.augment, data.labels)
        self.lesions = None
        if self.negative is not None:
            painted = painted_validation(data.val.images[data.val.labels == self.negative],
                                         config.seed)
            if len(painted):
                self.lesions = EvaluationBatches(painted, None, num_classes, config.batch_size,
                                                 spec=config.spec)

    def __call__(self, model: Any) -> dict[str, float]:
        if self.recalibration is not None:
            from trainer.bn import recalibrate_batchnorm

            stream, steps = self.recalibration
            recalibrate_batchnorm(model, (stream[i][0] for i in range(steps)))
        probs = np.asarray(model.predict(self.inputs, verbose=0), dtype=np.float64)
        picked = np.clip(probs[np.arange(len(self.labels)), self.labels], 1e-7, 1.0)
        scores = {"val_loss": float(-np.mean(np.log(picked))) if np.isfinite(probs).all()
                  else float("nan"),  # NaN weights: the run has diverged (_recorder)
                  "val_accuracy": float(np.mean(probs.argmax(axis=1) == self.labels))}
        if self.lesions is not None:
            answers = np.asarray(model.predict(self.lesions, verbose=0)).argmax(axis=1)
            scores[VAL_LESION_KEY] = float(np.mean(answers == self.negative))
        return scores


def painted_validation(images: np.ndarray, seed: int) -> np.ndarray:
    """One lesion drawn into each picture that has room (uint8, fixed draws per seed)."""
    from trainer.lesions import lesion_in_picture

    rng = np.random.default_rng([seed, VAL_LESION_STREAM])
    drawn = [result[0] for image in images
             if (result := lesion_in_picture(image, rng)) is not None]
    return np.stack(drawn) if drawn else images[:0]


def _recorder(run: RunFolder, state: dict[str, Any], patience: int | None,
              validate: _Validator, inference: Any, deadline: float | None = None) -> Any:
    import keras

    class RunRecorder(keras.callbacks.Callback):
        """After each epoch: validation (of ``inference``, the softmax model), checkpoint
        (of the model being fitted, with its optimizer state), best model, history, state."""

        def on_train_begin(self, logs: dict | None = None) -> None:
            self._first_epoch = True  # of this session: it includes compilation

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._started = time.perf_counter()

        def _past_deadline(self, seconds: float) -> bool:
            """Would the next epoch end past the deadline? The first epoch of a session is
            no guide to the next (compilation), so it only stops the run once past it."""
            predicted = 0.0 if self._first_epoch else seconds
            self._first_epoch = False
            return time.perf_counter() + predicted > deadline

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is None:
                logs = {}
            logs.update(validate(inference))  # in place: the progress bar shows them too
            done = epoch + 1
            seconds = time.perf_counter() - self._started
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            history = state["history"]
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                history.setdefault(key, []).append(float(logs.get(key, float("nan"))))
            if VAL_LESION_KEY in logs:  # NaN for the epochs of a run resumed by older code
                history.setdefault(VAL_LESION_KEY, [float("nan")] * (done - 1)).append(
                    float(logs[VAL_LESION_KEY]))
            history.setdefault("learning_rate", []).append(lr)
            history.setdefault("seconds", []).append(round(seconds, 3))
            if not (math.isfinite(history["loss"][-1]) and math.isfinite(history["val_loss"][-1])):
                # Diverged: keep the honest history, but no checkpoint of NaN weights; the
                # last good epoch stays what --resume and best.keras hold (_fit raises).
                run.write_history(history)
                state["diverged_at_epoch"] = done
                self.model.stop_training = True
                return
            checkpoint = run.epoch_checkpoint(done)
            save_model_atomic(self.model, checkpoint)
            val_acc = history["val_accuracy"][-1]
            best = state["best_val_accuracy"]
            if best is None or val_acc > best:
                _copy_atomic(checkpoint, run.best_checkpoint)
                state.update(best_epoch=done, best_val_accuracy=val_acc, wait=0)
            else:
                state["wait"] += 1
            if patience and state["wait"] >= patience:
                self.model.stop_training = True
                state["stopped_early"] = True
            elif deadline is not None and done < self.params.get("epochs", done + 1) and (
                    self._past_deadline(seconds)):
                self.model.stop_training = True
                state["stopped_time_limit"] = True
            state.update(epochs_done=done, checkpoint=checkpoint.name,
                         seconds=round(state["seconds"] + seconds, 3))
            run.write_state(state)  # the commit point: --resume starts from here
            run.write_history(history)
            for old in run.checkpoints.glob("epoch-*.keras"):
                if old != checkpoint:
                    old.unlink()
            lesions = (f" {VAL_LESION_KEY} {logs[VAL_LESION_KEY]:.4f}"
                       if VAL_LESION_KEY in logs else "")
            log.info("epoch %d: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f%s "
                     "(%.0f s)%s", done, history["loss"][-1], history["accuracy"][-1],
                     history["val_loss"][-1], val_acc, lesions, seconds,
                     "  [best so far]" if state["best_epoch"] == done else "")
            if state["stopped_early"]:
                log.info("early stopping: no val_accuracy gain for %d epoch(s)", patience)
            if state.get("stopped_time_limit"):
                log.info("time limit: stopping after epoch %d (another would end past it); "
                         "continue with: python -m trainer train --resume %s", done, run.path)

    return RunRecorder()


def augmentation_workers(augment: str) -> int:
    """Threads that build augmented batches (Pillow and numpy release the GIL)."""
    from trainer.augment import STRONG_POLICIES

    return min(8, os.cpu_count() or 1) if augment in STRONG_POLICIES else 1


def _initial_weights(config: TrainConfig, data: TrainingData,
                     options: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """``--init-from RUN``: the weights of RUN's model, to fine-tune from, and what to record.

    RUN must be the same architecture with the same options, labels and preprocessing, and
    must have been trained on exactly this run's training files with this run's validation
    files held out: a validation picture the starting model trained on would make model
    selection (best validation accuracy) flatter the fine-tuned run.
    """
    import keras

    import trainer.layers  # noqa: F401 - registers the custom layers for loading

    run = RunFolder.open(config.init_from)
    where = str(run.run_json)
    record = run.read_record()
    raw = record.raw

    def as_recorded(value: Any) -> Any:  # tuples come back from run.json as lists
        return json.loads(json.dumps(value))

    mismatches = [
        f"{what}: {theirs!r} there, {ours!r} here"
        for what, theirs, ours in (
            ("architecture", raw.get("architecture"), config.arch),
            ("model options", raw.get("model_options"), options),
            ("labels", raw.get("labels"), data.labels),
            ("preprocessing", raw.get("preprocess"), config.spec.to_dict()))
        if theirs != as_recorded(ours)]
    if mismatches:
        raise OptionError(f"--init-from {run.path}: that run's model cannot start this one ("
                          + "; ".join(mismatches) + ")")
    split = run.read_split()
    if split.get("train") != data.train.paths or split.get("validation") != data.val.paths:
        raise OptionError(
            f"--init-from {run.path} was trained on other training/validation files than "
            f"this run's (its {run.path / 'data_split.json'}); give this run the same --seed, "
            f"--val-fraction and --limit as that one ({where}: seed {raw.get('seed')}, "
            f"val_fraction {raw.get('val_fraction')}), so that no validation picture here "
            f"was a training picture there")
    if not run.model.is_file():
        raise OptionError(f"--init-from {run.path} has no {run.model.name}: that run never "
                          f"finished an epoch; finish it (--resume) or start from another")
    try:
        model = keras.saving.load_model(run.model, compile=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: say which and why
        raise OptionError(f"--init-from {run.path}: {run.model} cannot be loaded ({exc})"
                          ) from None
    return model.get_weights(), {"run": str(run.path.resolve()),
                                 "model_sha256": sha256_file(run.model),
                                 "recipe": raw.get("recipe"), "augment": raw.get("augment"),
                                 "reweight": raw.get("reweight"),
                                 "best_epoch": raw.get("best_epoch")}


def _fit(run: RunFolder, model: Any, config: TrainConfig, data: TrainingData,
         state: dict[str, Any], callbacks: Sequence[Any], verbose: Any,
         deadline: float | None = None, inference: Any = None,
         weights: np.ndarray | None = None) -> None:
    """Fit ``model`` (the logits view, or an old run's softmax model); validate ``inference``."""
    from trainer.batches import TrainingBatches
    from trainer.cpu_kernels import cpu_kernels

    train_batches = TrainingBatches(
        data.train.images, data.train.labels, len(data.labels), config.batch_size,
        seed=config.seed, start_epoch=state["epochs_done"], spec=config.spec,
        augment=config.augment, weights=weights,
        negative_class=lesion_class(config.augment, data.labels),
        workers=augmentation_workers(config.augment))
    recorder = _recorder(run, state, config.patience, _Validator(config, data),
                         inference if inference is not None else model, deadline)
    try:
        with cpu_kernels(config.cpu_kernels):  # traced inside fit: must enclose it
            model.fit(train_batches, steps_per_epoch=len(train_batches), epochs=config.epochs,
                      initial_epoch=state["epochs_done"], shuffle=False, verbose=verbose,
                      callbacks=[recorder, *callbacks])
    except KeyboardInterrupt:
        run.update_config(status="interrupted", epochs_done=state["epochs_done"])
        log.warning("interrupted after %d completed epoch(s); continue with: "
                    "python -m trainer train --resume %s", state["epochs_done"], run.path)
        raise
    if state.get("diverged_at_epoch"):
        _stop_diverged(run, config, state)


def _stop_diverged(run: RunFolder, config: TrainConfig, state: dict[str, Any]) -> None:
    """A NaN or infinite loss: mark the run, keep its folder, say what to change."""
    epoch, done = state.pop("diverged_at_epoch"), state["epochs_done"]
    run.update_config(status="diverged", epochs_done=done, diverged_at_epoch=epoch)
    loss = state["history"]["loss"][-1]
    what = (f"training loss {loss}" if not math.isfinite(loss)
            else "NaN or infinite outputs on the validation images")
    kept = ("no epoch finished before it" if not done else
            f"{'epoch 1 is' if done == 1 else f'epochs 1-{done} are'} kept in "
            f"{run.checkpoints} (best.keras: epoch {state['best_epoch']})")
    raise DivergedError(
        f"training diverged in epoch {epoch} ({what}): the learning rate "
        f"{config.learning_rate:g} is most likely too high for {config.arch}. Start a new run "
        f"with a lower --lr (e.g. {config.learning_rate / 10:g}) and another --name. Run "
        f"{run.path} is kept, marked 'diverged', for inspection: {kept}; history.json has "
        f"the losses")


FINISHED = ("completed", "stopped_early")  # statuses whose model.keras is the final one


def _restore_model(run: RunFolder, config: TrainConfig) -> None:
    """A finished run whose model.keras was deleted: write it again from best.keras, as the
    end of training did. Nothing is trained."""
    if not run.best_checkpoint.is_file():
        raise RunError(f"{run.path} finished training, but its {run.model.name} and "
                       f"{run.best_checkpoint} are both gone: there is nothing to rebuild the "
                       f"model from; train it again (another --name, or delete the folder)")
    best = run.read_record().raw.get("best_epoch")
    _write_model(run, config, len(run.read_split().get("train", [])),
                 {"best_epoch": best if isinstance(best, int) else 0})
    log.info("run %s: %s was missing; written again from %s (epoch %s), nothing trained",
             run.path, run.model.name, run.best_checkpoint, best)


def _write_model(run: RunFolder, config: TrainConfig, train_images: int,
                 state: dict[str, Any]) -> None:
    """model.keras = the best epoch (checkpoints/best.keras) as the softmax model."""
    import keras

    import trainer.layers  # noqa: F401 - registers the custom layers for loading
    from trainer.logits import is_logits_view, with_softmax

    model = keras.saving.load_model(run.best_checkpoint, compile=False)
    model = avoid_cpu_xla(with_softmax(model) if is_logits_view(model) else model)
    if not config.recalibrate_bn:
        _warn_if_bn_unsettled(model, config, train_images, state)
    model.compile(optimizer=_optimizer(config, steps_per_epoch(config, train_images)),
                  loss=_loss(config, from_logits=False), metrics=["accuracy"])
    save_model_atomic(model, run.model)


def _finish(run: RunFolder, config: TrainConfig, data: TrainingData,
            state: dict[str, Any], started: float) -> None:
    """model.keras = the best epoch, without optimizer state; run.json gets the outcome."""
    _write_model(run, config, len(data.train), state)
    status = ("stopped_early" if state["stopped_early"]
              else "stopped_time_limit" if state.get("stopped_time_limit") else "completed")
    run.update_config(
        status=status, epochs_done=state["epochs_done"], best_epoch=state["best_epoch"],
        best_val_accuracy=state["best_val_accuracy"],
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        train_seconds=state["seconds"], wall_seconds=round(time.perf_counter() - started, 1))
    log.info("run %s: %s after %d epoch(s); best val_accuracy %.4f at epoch %d -> %s",
             run.path, status, state["epochs_done"], state["best_val_accuracy"],
             state["best_epoch"], run.model)


def _warn_if_bn_unsettled(model: Any, config: TrainConfig, train_images: int,
                          state: dict[str, Any]) -> None:
    """Warn when BatchNormalization moving statistics still remember their initial values.

    They start at mean 0 / variance 1 while this model's real activation variances are
    ~1e-4 or less, so a short run (few steps) evaluates with wrong statistics.
    """
    from trainer.bn import batchnorm_layers

    layers = batchnorm_layers(model)
    if not layers:
        return
    steps = state["best_epoch"] * steps_per_epoch(config, train_images)
    remaining = max(layer.momentum for layer in layers) ** steps
    if remaining > 0.01:
        log.warning("BatchNormalization moving statistics have had only %d update(s); their "
                    "initial values still weigh %.0f%%, so test-time predictions may be poor. "
                    "Train longer or pass --recalibrate-bn 32.", steps, 100 * remaining)


def _deadline(started: float, time_limit: float | None) -> float | None:
    if time_limit is None:
        return None
    if not 0 < time_limit < math.inf:
        raise OptionError(f"--time-limit must be a positive number of seconds (and finite), "
                          f"got {time_limit}")
    return started + time_limit


def train(config: TrainConfig, *, callbacks: Sequence[Any] = (), verbose: Any = "auto",
          progress: bool = False, command: str | None = None,
          time_limit: float | None = None) -> RunFolder:
    """Train a new run; returns its folder. ``callbacks`` run after the run recorder.

    ``time_limit`` (seconds from this call): stop after the last epoch that ends within it;
    the run is kept as ``stopped_time_limit`` and ``resume`` continues it.
    """
    import keras

    from trainer.distribute import distribution_scope
    from trainer.logits import logits_view
    from trainer.models import build_model

    config.validate()
    options = _resolved_model_options(config.arch, config.model_options)
    name = config.name or default_run_name(config.arch)
    runs_dir = Path(config.runs_dir).expanduser()
    RunFolder.check_new(runs_dir, name)  # a bad name or runs folder: before the slow work
    started = time.perf_counter()
    deadline = _deadline(started, time_limit)
    data = load_training_data(config, progress)
    if data.train.images.shape[1:] != config.spec.shape:
        raise OptionError(f"images are {data.train.images.shape[1:]}, expected {config.spec.shape}")
    lesion_class(config.augment, data.labels)  # a lesion recipe without notumor fails here
    initial = _initial_weights(config, data, options) if config.init_from else None
    keras.utils.set_random_seed(config.seed)
    with distribution_scope(config.distribute) as distribution:
        model = build_model(config.arch, input_shape=config.spec.shape,
                            num_classes=len(data.labels), **options)
        if initial is not None:
            model.set_weights(initial[0])
        view = logits_view(model)
        fitted = view if view is not None else model
        avoid_cpu_xla(model)  # it only predicts (validation)
        compile_model(fitted, config, steps_per_epoch(config, len(data.train)),
                      from_logits=view is not None)
        run = RunFolder.create(runs_dir, name)
        record = _run_record(config, data, options, distribution)
        record["command"] = command
        if initial is not None:
            record["init_from"] = initial[1]
            record["deviations"].append(
                f"started from the weights of run {initial[1]['run']} (fine-tuning), not "
                f"from a random initialisation")
        run.write_config(record)
        run.write_split(data.train.paths, data.val.paths)
        weights = _sample_weights(run, config, data, create=True)
        log.info("run folder %s: %s, %d training / %d validation images, %d epoch(s)",
                 run.path, config.arch, len(data.train), len(data.val), config.epochs)
        state = _new_state()
        _fit(run, fitted, config, data, state, callbacks, verbose, deadline, inference=model,
             weights=weights)
    _finish(run, config, data, state, started)
    return run


def resume(run_path: str | os.PathLike, *, epochs: int | None = None,
           data_dir: str | None = None, callbacks: Sequence[Any] = (), verbose: Any = "auto",
           progress: bool = False, time_limit: float | None = None) -> RunFolder:
    """Continue a stopped run from its last checkpoint (model, optimizer state, epoch).

    Data order and augmentation are pure functions of (seed, epoch), so the resumed run
    ends with the weights an uninterrupted run would have had. ``epochs`` may extend a
    finished run; ``data_dir`` points at the same data set if it moved.
    """
    import keras

    import trainer.layers  # noqa: F401 - registers the custom layers for loading
    import trainer.losses  # noqa: F401 - and the set-valued loss a checkpoint is compiled with
    from trainer.distribute import distribution_scope
    from trainer.logits import is_logits_view, with_softmax

    started = time.perf_counter()
    deadline = _deadline(started, time_limit)
    run = RunFolder.open(run_path)
    record = run.read_record()
    record.require("config", where=str(run.run_json))
    assert record.config is not None
    changes: dict[str, Any] = {}
    if epochs is not None:
        changes["epochs"] = epochs
    if data_dir is not None:
        changes["data_dir"] = data_dir
    config = dataclasses.replace(TrainConfig.from_dict(record.config), **changes)
    config.validate()
    if record.status == "diverged" and epochs is None:
        raise RunError(f"{run.path} diverged in epoch {record.raw.get('diverged_at_epoch')}; "
                       f"resumed with the same settings (--resume cannot change --lr) it would "
                       f"most likely diverge there again. Start a new run with a lower --lr, "
                       f"or pass --epochs N to resume it from its last good epoch anyway")
    if record.status in FINISHED and epochs is None and not run.model.is_file():
        _restore_model(run, config)
        return run
    if not run.state_json.is_file():
        raise RunError(f"{run.path} has no completed epoch to resume from; start it again "
                       f"(delete the folder or choose another --name)")
    state = run.read_state()
    checkpoint = run.checkpoints / str(state.get("checkpoint"))
    if not checkpoint.is_file():
        raise RunError(f"checkpoint {checkpoint} named in {run.state_json} is missing")
    if state["epochs_done"] >= config.epochs:
        raise RunError(f"{run.path} has already trained {state['epochs_done']} of "
                       f"{config.epochs} epoch(s); pass --epochs N (more than "
                       f"{state['epochs_done']}) to train further")
    if state.get("stopped_early"):
        if epochs is None:
            raise RunError(f"{run.path} stopped early (no val_accuracy gain for "
                           f"{config.patience} epochs); pass --epochs N to train further anyway")
        state.update(stopped_early=False, wait=0)
    state["stopped_time_limit"] = False
    data = load_training_data(config, progress)
    recorded = run.read_split()
    if recorded.get("train") != data.train.paths or recorded.get("validation") != data.val.paths:
        raise RunError(f"the training files under {config.data_dir} differ from those this run "
                       f"started with ({run.path / 'data_split.json'}); resume needs the same data")
    weights = _sample_weights(run, config, data, create=False)
    run.update_config(status="running", epochs=config.epochs, config=config.to_dict())
    log.info("resuming %s after epoch %d of %d", run.path, state["epochs_done"], config.epochs)
    keras.utils.set_random_seed(config.seed)
    with distribution_scope(config.distribute):
        fitted = avoid_cpu_xla(keras.saving.load_model(checkpoint))
        model = avoid_cpu_xla(with_softmax(fitted)) if is_logits_view(fitted) else fitted
        _fit(run, fitted, config, data, state, callbacks, verbose, deadline, inference=model,
             weights=weights)
    _finish(run, config, data, state, started)
    return run
