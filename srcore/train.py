"""SRGAN trainer: optional SRResNet pre-training (pixel MSE), then adversarial training.

Resumable by design: a `tf.train.Checkpoint` over G, D, the three optimizers, epoch,
step and phase is saved every `checkpoint_every` epochs and at the end; rerunning the
same command restores the latest one and continues the same MLflow run (its id is
stored beside the checkpoints). Epochs are counted over both phases, so the phase to
resume in follows from the epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from srcore import gpu, tracking
from srcore.atomic import check_output_dir, claim_output_dir, write_atomic, write_text_atomic
from srcore.config import Config, ConfigError
from srcore.data.dataset import VAL_FRACTION, train_count, train_dataset, val_faces, validation_images
from srcore.data.download import DownloadLimits
from srcore.data.manifest import read_manifest
from srcore.losses import ContentLoss, adversarial_loss, discriminator_loss, pixel_mse, resolve_content_loss
from srcore.models import as_float32, build_discriminator, build_generator, dtype_policy
from srcore.precision import resolve_precision
from srcore.progress import progress

log = logging.getLogger(__name__)

PHASES = ("pretrain", "gan")
LOSS_NAMES = ("g_loss", "d_loss", "pixel_loss", "content_loss", "adversarial_loss")
RUN_ID_FILE = "mlflow_run_id"
MODEL_URI_FILE = "model_uri"
GENERATOR_FILE = "generator.keras"
SRRESNET_FILE = "srresnet.keras"
# Tests only: fail once right after epoch N is checkpointed (pod-restart simulation).
FAULT_ENV = "SRGAN_FAULT_AFTER_EPOCH"
FAULT_MARKER = "fault_injected"
OUTPUT_KIND = "train"  # srcore.atomic marker kind of a model_dir


ARCH_FILE = "architecture.json"  # the fields that shape the checkpointed variables, written at start
ARCH_FIELDS = ("gen_filters", "gen_blocks", "gen_bicubic_skip", "scale", "disc_filters", "disc_flatten")



@contextmanager
def grappler_without_remapper():
    """TensorFlow's graph remapper fails on the GAN step (Conv2D+BiasAdd+LeakyReLU fusion whose
    BiasAdd the gradient also reads) and prints one native `E... remapper failed` line per run;
    grappler then drops the remapper's work for that graph anyway, so turning it off while the
    GAN step runs costs nothing and keeps the console clean. The previous options are restored."""
    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({**before, "remapping": False})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({**before, "remapping": before.get("remapping", True)})


class ArchitectureMismatchError(ConfigError):
    """The model folder holds checkpoints of another architecture (one line, no TF restore error)."""


def architecture(cfg: Config) -> dict:
    """What the checkpointed variables' shapes depend on (the discriminator's input size only
    with the paper's Flatten)."""
    arch = {name: getattr(cfg, name) for name in ARCH_FIELDS}
    if cfg.disc_flatten:
        arch["disc_input_size"] = cfg.patch_size or cfg.hr_size
    return arch


def _recorded_architecture(model_dir: Path) -> dict | None:
    """The architecture of the checkpoints in `model_dir`: its record, else (folders from
    before the record) the params of the MLflow run stored beside them; None if unknown."""
    record = model_dir / ARCH_FILE
    try:
        if record.is_file():
            data = json.loads(record.read_text())
            return data if isinstance(data, dict) else None
        run_file = model_dir / RUN_ID_FILE
        if not (model_dir / "checkpoints").is_dir() or not run_file.is_file():
            return None
        params = mlflow.tracking.MlflowClient().get_run(run_file.read_text().strip()).data.params
    except (OSError, ValueError, mlflow.exceptions.MlflowException):
        return None
    from srcore.config import coerce

    try:
        return {k: coerce(k, params[k]) for k in ARCH_FIELDS if k in params}
    except ConfigError:
        return None


def check_architecture(cfg: Config, model_dir: str | os.PathLike | None = None) -> None:
    """Refuse, in one line naming the differing fields and --model-dir, a model folder whose
    checkpoints have another architecture, and (first) one train may not write into
    (srcore.atomic's ownership rule). Cheap: `srgan main` calls it before any run opens."""
    folder = check_output_dir(Path(model_dir or cfg.model_dir).expanduser(), OUTPUT_KIND)
    stored = _recorded_architecture(folder) if folder.is_dir() else None
    if not stored:
        return
    asked = architecture(cfg)
    differ = [f"{k} {stored[k]} vs {v}" for k, v in asked.items() if k in stored and stored[k] != v]
    if differ:
        raise ArchitectureMismatchError(
            f"--model-dir {folder} holds checkpoints of another architecture (there vs now: {', '.join(differ)}): "
            "pass a new --model-dir, or the same settings to resume")


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint is left untouched."""


@dataclasses.dataclass
class TrainResult:
    model_dir: str
    generator_path: str
    model_uri: str
    run_id: str
    epochs_done: int


def make_strategy() -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        log.info("%d GPUs visible: MirroredStrategy, global batch split across replicas", len(gpus))
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _adam(cfg: Config, lr: float, steps: int) -> keras.optimizers.Optimizer:
    if cfg.lr_schedule == "cosine" and steps > 0:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps, alpha=0.01)
    opt = keras.optimizers.Adam(lr, beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon)
    if cfg.precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def resolve(cfg: Config) -> tuple[Config, dict[str, str]]:
    """Replace `auto` choices by what this machine and these weights give, with reasons
    (logged as MLflow tags; the resolved values are the params)."""
    precision, precision_reason = resolve_precision(cfg.precision)
    if cfg.epochs or cfg.content_loss != "auto":
        content, content_reason = resolve_content_loss(cfg.content_loss, cfg.vgg_weights, cfg.cache_dir)
    else:  # no adversarial phase: nothing uses a content loss, load no network for it
        content, content_reason = "mse", "no adversarial phase"
    return cfg.replace(precision=precision, content_loss=content), {
        "precision_reason": precision_reason, "content_loss_reason": content_reason}


def steps_per_epoch(cfg: Config, data_dir: Path) -> int:
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    total = train_count(data_dir)
    n_train = total - val_faces(cfg.val_count, total)
    if n_train < cfg.batch_size:
        raise ValueError(
            f"batch_size={cfg.batch_size} is larger than the {n_train} training images in {data_dir}; lower --batch-size"
        )
    return n_train // cfg.batch_size


class Trainer:
    """Owns the models, optimizers, checkpoint and the compiled train steps."""

    def __init__(self, cfg: Config, data_dir: str | Path | None, model_dir: str | Path, steps_per_epoch: int):
        cfg, self.reasons = resolve(cfg)  # no-op for explicit choices
        self.cfg = cfg
        self.data_dir = Path(data_dir) if data_dir else None
        self.model_dir = Path(model_dir)
        self.strategy = make_strategy()
        keras.utils.set_random_seed(cfg.seed)
        self.steps_per_epoch = steps_per_epoch
        self.total_epochs = cfg.pretrain_epochs + cfg.epochs

        # the models (and the VGG loss) compute in cfg.precision; the process-wide policy is
        # restored after, so models built later in this process are float32
        with self.strategy.scope(), dtype_policy(cfg.precision):
            self.generator = build_generator(cfg.gen_filters, cfg.gen_blocks, cfg.scale, cfg.gen_init_scale,
                                             bicubic_skip=cfg.gen_bicubic_skip)
            self.discriminator = build_discriminator(cfg.patch_size or cfg.hr_size, cfg.disc_filters, cfg.disc_flatten)
            # missing weights are downloaded into cache_dir within Config's download bounds
            self.content = ContentLoss(cfg.content_loss, cfg.vgg_weights, cfg.cache_dir,
                                       DownloadLimits.from_config(cfg)) if cfg.epochs else None
            self.pre_opt = _adam(cfg, cfg.pretrain_learning_rate, cfg.pretrain_epochs * self.steps_per_epoch)
            self.g_opt = _adam(cfg, cfg.learning_rate, cfg.epochs * self.steps_per_epoch)
            self.d_opt = _adam(cfg, cfg.learning_rate, cfg.epochs * self.steps_per_epoch)
            # Build optimizer slots now so a restore fills them instead of deferring.
            self.pre_opt.build(self.generator.trainable_variables)
            self.g_opt.build(self.generator.trainable_variables)
            self.d_opt.build(self.discriminator.trainable_variables)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.phase = tf.Variable(0, dtype=tf.int64, trainable=False, name="phase")
            # running loss sums stay on the device; the host reads them every log_every_steps
            self.loss_sums = {k: tf.Variable(0.0, trainable=False, name=f"sum_{k}") for k in LOSS_NAMES}

        self.checkpoint = tf.train.Checkpoint(
            generator=self.generator,
            discriminator=self.discriminator,
            pretrain_optimizer=self.pre_opt,
            generator_optimizer=self.g_opt,
            discriminator_optimizer=self.d_opt,
            epoch=self.epoch,
            step=self.step,
            phase=self.phase,
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.model_dir / "checkpoints"), max_to_keep=cfg.keep_checkpoints
        )
        self.global_batch = cfg.batch_size
        self.pretrain_step = self._distributed(self._pretrain_replica_step)
        self.gan_step = self._distributed(self._gan_replica_step)

    # ---- compiled steps --------------------------------------------------------------
    def _average(self, per_image: tf.Tensor) -> tf.Tensor:
        return tf.nn.compute_average_loss(per_image, global_batch_size=self.global_batch)

    def _pretrain_replica_step(self, lr, hr):
        with tf.GradientTape() as tape:
            sr = self.generator(lr, training=True)
            loss = self._average(pixel_mse(hr, sr))
            scaled = self.pre_opt.scale_loss(loss)
        grads = tape.gradient(scaled, self.generator.trainable_variables)
        self.pre_opt.apply_gradients(zip(grads, self.generator.trainable_variables))
        return {"g_loss": loss, "pixel_loss": loss}

    def _gan_replica_step(self, lr, hr):
        g_vars = self.generator.trainable_variables
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            sr = self.generator(lr, training=True)
            real_logits = self.discriminator(hr, training=True)
            fake_logits = self.discriminator(sr, training=True)
            content = self._average(self.content(hr, sr))
            kind = self.cfg.gan_loss
            adversarial = self._average(adversarial_loss(fake_logits, real_logits, kind))
            g_loss = content + self.cfg.adv_weight * adversarial
            losses = {"content_loss": content, "adversarial_loss": adversarial}
            if self.cfg.pixel_weight:
                pixel = self._average(pixel_mse(hr, sr))
                g_loss += self.cfg.pixel_weight * pixel
                losses["pixel_loss"] = pixel
            d_loss = self._average(discriminator_loss(real_logits, fake_logits, kind))
            g_scaled = self.g_opt.scale_loss(g_loss)
            d_scaled = self.d_opt.scale_loss(d_loss)
        self.g_opt.apply_gradients(zip(g_tape.gradient(g_scaled, g_vars), g_vars))
        self.d_opt.apply_gradients(zip(d_tape.gradient(d_scaled, d_vars), d_vars))
        return {"g_loss": g_loss, "d_loss": d_loss, **losses}

    def _distributed(self, replica_step):
        inner = tf.function(replica_step, jit_compile=self.cfg.jit_compile or None)

        @tf.function
        def step(lr, hr):
            per_replica = self.strategy.run(inner, args=(lr, hr))
            losses = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}
            for k, v in losses.items():  # no host sync: sums are read every log_every_steps
                self.loss_sums[k].assign_add(tf.cast(v, tf.float32))
            self.step.assign_add(1)
            return losses

        return step

    # ---- loop ------------------------------------------------------------------------
    def restore(self) -> int:
        latest = self.manager.latest_checkpoint
        if latest:
            status = None
            try:
                status = self.checkpoint.restore(latest)
                status.assert_existing_objects_matched()
            except (ValueError, AssertionError, tf.errors.OpError):  # shapes or objects differ
                if status is not None:
                    status.expect_partial()  # no "unrestored values" warnings after our one line
                arch = ", ".join(f"{k}={v}" for k, v in architecture(self.cfg).items())
                raise ArchitectureMismatchError(
                    f"--model-dir {self.model_dir} holds checkpoints that do not fit this architecture ({arch}): "
                    "pass a new --model-dir, or the settings they were trained with to resume") from None
            log.info(
                "resuming from %s: %d of %d epochs done (phase %s, step %d)",
                latest, int(self.epoch), self.total_epochs, PHASES[int(self.phase)], int(self.step),
            )
        return int(self.epoch)

    def phase_of(self, epoch: int) -> str:
        return "pretrain" if epoch < self.cfg.pretrain_epochs else "gan"

    def dataset(self) -> tf.data.Dataset:
        ds = train_dataset(self.cfg, self.data_dir)
        if self.cfg.steps_per_epoch:
            ds = ds.repeat().take(self.cfg.steps_per_epoch)
        return self.strategy.experimental_distribute_dataset(ds)

    def read_sums(self) -> dict[str, float]:
        """Host copy of the running sums, then zero them (one sync per log interval)."""
        values = {k: float(v.numpy()) for k, v in self.loss_sums.items()}
        for v in self.loss_sums.values():
            v.assign(0.0)
        return values

    def run_epoch(self, epoch: int, log_from_step: int = 0) -> dict[str, float]:
        """One epoch; step metrics are logged every log_every_steps (not for steps up to
        `log_from_step`, already logged by an earlier attempt of this epoch)."""
        phase = self.phase_of(epoch)
        self.phase.assign(PHASES.index(phase))
        step_fn = self.pretrain_step if phase == "pretrain" else self.gan_step
        names = ("g_loss", "pixel_loss") if phase == "pretrain" else tuple(
            k for k in LOSS_NAMES if k != "pixel_loss" or self.cfg.pixel_weight)
        self.read_sums()
        first_step = int(self.step)  # host-side count from here: reading the variable would sync
        epoch_sums = dict.fromkeys(names, 0.0)
        n = pending = 0
        start = time.perf_counter()
        bar = progress(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.total_epochs} {phase}", unit="step")

        def flush() -> None:
            sums = self.read_sums()
            means = {k: sums[k] / max(pending, 1) for k in names}
            last = first_step + n
            first = last - pending + 1
            bad = [k for k, v in means.items() if not math.isfinite(v)]
            if bad:
                bar.close()
                raise TrainingDivergedError(
                    f"{', '.join(bad)} became {means[bad[0]]} within steps {first}-{last} of epoch {epoch + 1} "
                    f"({phase}); the last good checkpoint in {self.manager.directory} is intact. "
                    "Lower --learning-rate or use --precision float32, then rerun to resume."
                )
            for k in names:
                epoch_sums[k] += sums[k]
            ips = n * self.global_batch / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(g=f"{means['g_loss']:.4f}", img_s=f"{ips:.1f}", refresh=False)
            if last > log_from_step:
                mlflow.log_metrics({f"train/{k}": v for k, v in means.items()}, step=last)

        with grappler_without_remapper() if phase == "gan" else nullcontext():
            for lr, hr in self.dataset():
                step_fn(lr, hr)
                n += 1
                pending += 1
                bar.update(1)
                if (first_step + n) % self.cfg.log_every_steps == 0:
                    flush()
                    pending = 0
        if pending:
            flush()
        bar.close()
        elapsed = time.perf_counter() - start
        means = {k: v / max(n, 1) for k, v in epoch_sums.items()}
        means["images_per_sec"] = n * self.global_batch / max(elapsed, 1e-9)
        means["epoch_seconds"] = elapsed
        return means

    def inference_generator(self) -> keras.Model:
        """The generator with its current weights computing in float32: what is validated,
        saved, logged and exported, whatever precision it trains in (the same numbers as the
        generator.keras that evaluate, upscale, export and serving load)."""
        return as_float32(self.generator)

    def save_checkpoint(self, epoch_done: int) -> str:
        self.epoch.assign(epoch_done)
        path = self.manager.save(checkpoint_number=epoch_done)
        log.info("checkpoint %s (epoch %d)", path, epoch_done)
        return path


def _validate(trainer: Trainer, epoch_done: int, val_images: list | None) -> None:
    """val/* metrics on the faces held out of the training split (never on test faces,
    never on faces it trains on); nothing without validation faces."""
    from srcore.evaluate import validation_eval

    metrics = validation_eval(trainer.inference_generator(), trainer.cfg, val_images or [])
    if metrics:
        mlflow.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=epoch_done)
        log.info("epoch %d validation metrics (%d faces held out of the training split): %s", epoch_done,
                 len(val_images or []), ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def _log_showcase(trainer: Trainer, step: int) -> None:
    """The showcase faces' grid (a picture of the test split's showcase faces, no score)
    per epoch as `showcase/step_<n>.png`, and the newest one at a fixed path. Plain files,
    not an MLflow image card: on a run with params the card's caption lists all of them and
    squeezes the grid to a strip; evaluate's run carries the card (srcore.evaluate)."""
    from srcore.evaluate import SHOWCASE_ARTIFACT, showcase_grid

    grid = showcase_grid(trainer.inference_generator(), trainer.cfg, trainer.data_dir)
    mlflow.log_image(grid, artifact_file=f"showcase/step_{step:06d}.png")
    mlflow.log_image(grid, artifact_file=SHOWCASE_ARTIFACT)


def _validation_note(cfg: Config, data_dir: Path, n_val: int) -> dict[str, str]:
    """The log line and tags that say how many validation faces there are, and why."""
    total = train_count(data_dir)
    if n_val:
        capped = f" (val_count={cfg.val_count} capped at a quarter of the split)" if n_val < cfg.val_count else ""
        log.info("validation: %d of the %d training faces held out for the val/* metrics%s", n_val, total, capped)
        return {"val.faces": str(n_val)}
    why = ("val_count=0" if not cfg.val_count else
           f"the training split has {total} images, fewer than {VAL_FRACTION}")
    log.warning("no validation faces (%s): no val/* metrics; a sweep cannot pick trials on val/*", why)
    return {"val.faces": "0", "val.skipped_reason": why}


def _last_logged(run_id: str, key: str) -> int:
    """The highest step at which `key` was logged in the run (0 if never)."""
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, key)
    return max((m.step for m in history), default=0)


def _maybe_inject_fault(model_dir: Path, done: int) -> None:
    """Tests only ($SRGAN_FAULT_AFTER_EPOCH=N): die once after epoch N was checkpointed,
    like a preempted pod; the marker file makes the retry run through."""
    if os.environ.get(FAULT_ENV, "") != str(done):
        return
    marker = model_dir / FAULT_MARKER
    if marker.exists():
        return
    write_text_atomic(marker, f"fault injected after epoch {done}\n")
    raise RuntimeError(f"{FAULT_ENV}={done}: injected failure after epoch {done} (test fault)")


def _log_final_model(trainer: Trainer, generator_path: Path, run_id: str) -> str:
    from srcore.serving import ServingLimits, log_upscaler

    cfg = trainer.cfg
    example = np.zeros((1, cfg.lr_size, cfg.lr_size, 3), np.float32)
    any_image = TensorSpec(np.dtype(np.float32), (-1, -1, -1, 3))  # fully convolutional: any H, W
    signature = ModelSignature(inputs=Schema([any_image]), outputs=Schema([any_image]))
    # The TensorFlow flavour stores Keras 3 models as .keras; mlflow.keras 3.17 fails to
    # save an input example (it writes it before creating the model folder).
    generator = trainer.inference_generator()
    mlflow.tensorflow.log_model(generator, name="generator", signature=signature, input_example=example)
    info = log_upscaler(str(generator_path), name="upscaler", limits=ServingLimits.from_config(cfg))
    # the serving SavedModel (uint8 in/out, TF Serving layout) beside it: what KServe serves
    from srcore.export import log_savedmodel

    log_savedmodel(generator, cfg=cfg)
    return info.model_uri


def train(cfg: Config, data_dir: str | os.PathLike | None = None, model_dir: str | os.PathLike | None = None) -> TrainResult:
    """Train (or resume training) and return where the generator ended up."""
    check_architecture(cfg, model_dir)  # first: one line, never a TF restore error later
    gpu_tags = gpu.preflight(cfg.require_gpu)  # seconds, before anything is built or logged
    cfg, reasons = resolve(cfg)
    data_dir = Path(data_dir or cfg.data_dir)
    # srcore.atomic's ownership rule (checked by check_architecture): resume in a folder train
    # made, never write into another; created only once the data is known good (no empty
    # folder left by a bad data_dir)
    manifest = read_manifest(data_dir)
    model_dir = claim_output_dir(Path(model_dir or cfg.model_dir), OUTPUT_KIND)
    trainer = Trainer(cfg, data_dir, model_dir, steps_per_epoch(cfg, data_dir))
    start_epoch = trainer.restore()
    write_text_atomic(model_dir / ARCH_FILE, json.dumps(architecture(cfg), indent=2))  # restored fine: this is it
    val_images = validation_images(cfg, data_dir) if cfg.val_count else None
    val_tags = _validation_note(cfg, data_dir, len(val_images or []))

    run_id_file = model_dir / RUN_ID_FILE
    resume_id = run_id_file.read_text().strip() if (start_epoch and run_id_file.exists()) else None
    generator_path = model_dir / GENERATOR_FILE
    with tracking.step_run(cfg, "train", resume_run_id=resume_id) as run:
        run_id = run.info.run_id
        write_text_atomic(run_id_file, run_id)
        mlflow.set_tags({
            "data_manifest_hash": manifest.get("content_hash", ""),
            "content_loss": cfg.content_loss,
            "precision": cfg.precision,
            "resumed_from_epoch": str(start_epoch),
            **reasons,
            **gpu_tags,
            **val_tags,
        })
        # a resumed run re-trains epochs after its last checkpoint: log none of them twice
        logged_epoch = _last_logged(run_id, "train/epoch_seconds") if start_epoch else 0
        logged_step = _last_logged(run_id, "train/g_loss") if start_epoch else 0
        if not start_epoch and cfg.eval_every:
            _log_showcase(trainer, 0)  # before training: what the model starts from
        if start_epoch:
            log.info("continuing MLflow run %s from epoch %d", run_id, start_epoch)
        log.info(
            "training %d pretrain + %d GAN epochs, %d steps/epoch, batch %d, %s, content loss %s",
            cfg.pretrain_epochs, cfg.epochs, trainer.steps_per_epoch, cfg.batch_size, cfg.precision, cfg.content_loss,
        )
        for epoch in range(start_epoch, trainer.total_epochs):
            means = trainer.run_epoch(epoch, log_from_step=logged_step)
            done = epoch + 1
            log.info("epoch %d/%d %s: %s", done, trainer.total_epochs, trainer.phase_of(epoch),
                     ", ".join(f"{k} {v:.4g}" for k, v in means.items()))
            fresh = done > logged_epoch
            if fresh:
                mlflow.log_metrics({f"train/{k if k in ('images_per_sec', 'epoch_seconds') else 'epoch_' + k}": v
                                    for k, v in means.items()} | {"train/phase": float(trainer.phase)}, step=done)
            last = done == trainer.total_epochs
            if fresh and ((cfg.eval_every and done % cfg.eval_every == 0) or last):
                _validate(trainer, done, val_images)  # always after the last epoch: a sweep picks on it
                if cfg.eval_every:
                    _log_showcase(trainer, done)
            if done == cfg.pretrain_epochs:
                write_atomic(model_dir / SRRESNET_FILE, trainer.inference_generator().save)
                mlflow.log_artifact(str(model_dir / SRRESNET_FILE), artifact_path="srresnet")
            if done % cfg.checkpoint_every == 0 or done == trainer.total_epochs or done == cfg.pretrain_epochs:
                trainer.save_checkpoint(done)
                _maybe_inject_fault(model_dir, done)

        uri_file = model_dir / MODEL_URI_FILE
        if uri_file.exists() and generator_path.exists() and start_epoch == trainer.total_epochs:
            model_uri = uri_file.read_text().strip()
            log.info("training already complete (%d epochs); model %s", start_epoch, model_uri)
        else:
            write_atomic(generator_path, trainer.inference_generator().save)
            model_uri = _log_final_model(trainer, generator_path, run_id)
            write_text_atomic(uri_file, model_uri)
            mlflow.set_tag("model_uri", model_uri)
        summary = {"epochs_done": trainer.total_epochs, "run_id": run_id, "model_uri": model_uri}
        write_text_atomic(model_dir / "train_summary.json", json.dumps(summary, indent=2))
    return TrainResult(str(model_dir), str(generator_path), model_uri, run_id, trainer.total_epochs)
