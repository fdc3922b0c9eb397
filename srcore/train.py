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
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from srcore import gpu, tracking
from srcore.atomic import write_atomic, write_text_atomic
from srcore.config import Config
from srcore.data.dataset import read_manifest, train_count, train_dataset
from srcore.losses import ContentLoss, adversarial_loss, discriminator_loss, pixel_mse
from srcore.models import build_discriminator, build_generator
from srcore.progress import progress

log = logging.getLogger(__name__)

PHASES = ("pretrain", "gan")
RUN_ID_FILE = "mlflow_run_id"
MODEL_URI_FILE = "model_uri"
GENERATOR_FILE = "generator.keras"
SRRESNET_FILE = "srresnet.keras"


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


def steps_per_epoch(cfg: Config, data_dir: Path) -> int:
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    n_train = train_count(data_dir)
    if n_train < cfg.batch_size:
        raise ValueError(
            f"batch_size={cfg.batch_size} is larger than the {n_train} training images in {data_dir}; lower --batch-size"
        )
    return n_train // cfg.batch_size


class Trainer:
    """Owns the models, optimizers, checkpoint and the compiled train steps."""

    def __init__(self, cfg: Config, data_dir: str | Path | None, model_dir: str | Path, steps_per_epoch: int):
        self.cfg = cfg
        self.data_dir = Path(data_dir) if data_dir else None
        self.model_dir = Path(model_dir)
        self.strategy = make_strategy()
        keras.mixed_precision.set_global_policy(cfg.precision)
        keras.utils.set_random_seed(cfg.seed)
        self.steps_per_epoch = steps_per_epoch
        self.total_epochs = cfg.pretrain_epochs + cfg.epochs

        with self.strategy.scope():
            self.generator = build_generator(cfg.gen_filters, cfg.gen_blocks, cfg.scale, cfg.gen_init_scale)
            self.discriminator = build_discriminator(cfg.hr_size, cfg.disc_filters, cfg.disc_flatten)
            self.content = ContentLoss(cfg.content_loss, cfg.vgg_weights) if cfg.epochs else None
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
        return {"g_loss": loss, "content_loss": loss}

    def _gan_replica_step(self, lr, hr):
        g_vars = self.generator.trainable_variables
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            sr = self.generator(lr, training=True)
            real_logits = self.discriminator(hr, training=True)
            fake_logits = self.discriminator(sr, training=True)
            content = self._average(self.content(hr, sr))
            adversarial = self._average(adversarial_loss(fake_logits))
            g_loss = content + self.cfg.adv_weight * adversarial
            d_loss = self._average(discriminator_loss(real_logits, fake_logits))
            g_scaled = self.g_opt.scale_loss(g_loss)
            d_scaled = self.d_opt.scale_loss(d_loss)
        self.g_opt.apply_gradients(zip(g_tape.gradient(g_scaled, g_vars), g_vars))
        self.d_opt.apply_gradients(zip(d_tape.gradient(d_scaled, d_vars), d_vars))
        return {"g_loss": g_loss, "d_loss": d_loss, "content_loss": content, "adversarial_loss": adversarial}

    def _distributed(self, replica_step):
        inner = tf.function(replica_step, jit_compile=self.cfg.jit_compile or None)

        @tf.function
        def step(lr, hr):
            per_replica = self.strategy.run(inner, args=(lr, hr))
            return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

        return step

    # ---- loop ------------------------------------------------------------------------
    def restore(self) -> int:
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
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

    def run_epoch(self, epoch: int) -> dict[str, float]:
        phase = self.phase_of(epoch)
        self.phase.assign(PHASES.index(phase))
        step_fn = self.pretrain_step if phase == "pretrain" else self.gan_step
        sums: dict[str, float] = {}
        n = 0
        start = time.perf_counter()
        bar = progress(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.total_epochs} {phase}", unit="step")
        for lr, hr in self.dataset():
            losses = {k: float(v) for k, v in step_fn(lr, hr).items()}
            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                bar.close()
                raise TrainingDivergedError(
                    f"{', '.join(bad)} became {losses[bad[0]]} at epoch {epoch + 1}, step {int(self.step) + 1} "
                    f"({phase}); the last good checkpoint in {self.manager.directory} is intact. "
                    "Lower --learning-rate or use --precision float32, then rerun to resume."
                )
            self.step.assign_add(1)
            n += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            elapsed = time.perf_counter() - start
            ips = n * self.global_batch / max(elapsed, 1e-9)
            bar.set_postfix(g=f"{losses['g_loss']:.4f}", img_s=f"{ips:.1f}", refresh=False)
            bar.update(1)
            if int(self.step) % self.cfg.log_every_steps == 0:
                mlflow.log_metrics({f"step_{k}": v for k, v in losses.items()}, step=int(self.step))
        bar.close()
        elapsed = time.perf_counter() - start
        means = {k: v / max(n, 1) for k, v in sums.items()}
        means["images_per_sec"] = n * self.global_batch / max(elapsed, 1e-9)
        means["epoch_seconds"] = elapsed
        return means

    def save_checkpoint(self, epoch_done: int) -> str:
        self.epoch.assign(epoch_done)
        path = self.manager.save(checkpoint_number=epoch_done)
        log.info("checkpoint %s (epoch %d)", path, epoch_done)
        return path


def _epoch_eval(trainer: Trainer, epoch_done: int) -> None:
    """Metrics on the test split (never on training images) and the showcase grid."""
    from srcore.evaluate import quick_eval

    cfg = trainer.cfg
    metrics, grid = quick_eval(trainer.generator, cfg, trainer.data_dir, cfg.eval_images)
    mlflow.log_metrics({f"val_{k}": v for k, v in metrics.items()}, step=epoch_done)
    mlflow.log_image(grid, key="showcase", step=epoch_done)
    log.info("epoch %d test metrics: %s", epoch_done, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def _log_final_model(trainer: Trainer, generator_path: Path, run_id: str) -> str:
    from srcore.serving import log_upscaler

    cfg = trainer.cfg
    example = np.zeros((1, cfg.lr_size, cfg.lr_size, 3), np.float32)
    any_image = TensorSpec(np.dtype(np.float32), (-1, -1, -1, 3))  # fully convolutional: any H, W
    signature = ModelSignature(inputs=Schema([any_image]), outputs=Schema([any_image]))
    # The TensorFlow flavour stores Keras 3 models as .keras; mlflow.keras 3.17 fails to
    # save an input example (it writes it before creating the model folder).
    mlflow.tensorflow.log_model(trainer.generator, name="generator", signature=signature, input_example=example)
    info = log_upscaler(str(generator_path), name="upscaler")
    return info.model_uri


def train(cfg: Config, data_dir: str | os.PathLike | None = None, model_dir: str | os.PathLike | None = None) -> TrainResult:
    """Train (or resume training) and return where the generator ended up."""
    gpu_tags = gpu.preflight(cfg.require_gpu)  # seconds, before anything is built or logged
    data_dir = Path(data_dir or cfg.data_dir)
    model_dir = Path(model_dir or cfg.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(data_dir)
    trainer = Trainer(cfg, data_dir, model_dir, steps_per_epoch(cfg, data_dir))
    start_epoch = trainer.restore()

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
            **gpu_tags,
        })
        if start_epoch:
            log.info("continuing MLflow run %s from epoch %d", run_id, start_epoch)
        log.info(
            "training %d pretrain + %d GAN epochs, %d steps/epoch, batch %d, %s, content loss %s",
            cfg.pretrain_epochs, cfg.epochs, trainer.steps_per_epoch, cfg.batch_size, cfg.precision, cfg.content_loss,
        )
        for epoch in range(start_epoch, trainer.total_epochs):
            means = trainer.run_epoch(epoch)
            done = epoch + 1
            mlflow.log_metrics({**means, "phase": float(trainer.phase)}, step=done)
            log.info("epoch %d/%d %s: %s", done, trainer.total_epochs, trainer.phase_of(epoch),
                     ", ".join(f"{k} {v:.4g}" for k, v in means.items()))
            if cfg.eval_every and (done % cfg.eval_every == 0 or done == trainer.total_epochs):
                _epoch_eval(trainer, done)
            if done == cfg.pretrain_epochs:
                write_atomic(model_dir / SRRESNET_FILE, trainer.generator.save)
                mlflow.log_artifact(str(model_dir / SRRESNET_FILE), artifact_path="srresnet")
            if done % cfg.checkpoint_every == 0 or done == trainer.total_epochs or done == cfg.pretrain_epochs:
                trainer.save_checkpoint(done)

        uri_file = model_dir / MODEL_URI_FILE
        if uri_file.exists() and generator_path.exists() and start_epoch == trainer.total_epochs:
            model_uri = uri_file.read_text().strip()
            log.info("training already complete (%d epochs); model %s", start_epoch, model_uri)
        else:
            write_atomic(generator_path, trainer.generator.save)
            model_uri = _log_final_model(trainer, generator_path, run_id)
            write_text_atomic(uri_file, model_uri)
            mlflow.set_tag("model_uri", model_uri)
        summary = {"epochs_done": trainer.total_epochs, "run_id": run_id, "model_uri": model_uri}
        write_text_atomic(model_dir / "train_summary.json", json.dumps(summary, indent=2))
    return TrainResult(str(model_dir), str(generator_path), model_uri, run_id, trainer.total_epochs)
