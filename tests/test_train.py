import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tensorflow as tf

from srcore import train as train_mod
from srcore.config import build_config
from srcore.train import TrainingDivergedError, train

TINY = dict(gen_filters=8, gen_blocks=1, disc_filters=8, batch_size=8, eval_images=4, log_every_steps=1)


def _cfg(tmp_path, data, **kw):
    return build_config("smoke", overrides={**TINY, "data_dir": str(data), "model_dir": str(tmp_path / "model"), **kw})


def _history(run_id, key):
    return [m.value for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)]


def test_smoke_training_moves_the_loss_and_logs_everything(tmp_path, smoke_data, tracking):
    cfg = _cfg(tmp_path, smoke_data, pretrain_epochs=3, epochs=1, pretrain_learning_rate=1e-3)
    result = train(cfg)
    assert result.epochs_done == 4
    assert Path(result.generator_path).is_file()
    losses = _history(result.run_id, "train/epoch_g_loss")
    assert len(losses) == 4
    assert losses[2] < losses[0]  # pixel MSE falls during pre-training
    run = mlflow.get_run(result.run_id)
    assert run.data.params["batch_size"] == "8"
    assert run.data.tags["content_loss"] == "mse"
    assert run.data.tags["data_manifest_hash"]
    for key in ("train/epoch_d_loss", "train/epoch_adversarial_loss", "train/images_per_sec", "val/psnr", "val/ssim",
                "val/psnr_y", "train/g_loss"):
        assert key in run.data.metrics, key
    assert all("/" in key for key in run.data.metrics)  # every metric in a chart section
    assert run.data.tags["val.faces"] == "10"  # a quarter of the 40 training faces: val_count=100 capped
    # pre-training logs its pixel MSE under its own name, not as the content loss
    assert len(_history(result.run_id, "train/epoch_pixel_loss")) == 3
    assert len(_history(result.run_id, "train/epoch_content_loss")) == 1
    assert run.data.params["precision"] in ("float32", "mixed_bfloat16")  # `auto` resolved
    assert run.data.tags["precision_reason"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)}
    assert "images" not in artifacts  # no image card: it would caption the grid with every param
    assert {"config.yaml", "showcase"} <= artifacts
    grids = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "showcase")}
    assert {"showcase/latest.png", "showcase/step_000000.png", "showcase/step_000003.png"} <= grids, grids
    assert result.model_uri.startswith("models:/")


def test_resume_after_crash_continues_checkpoint_and_run(tmp_path, smoke_data, tracking, monkeypatch):
    cfg = _cfg(tmp_path, smoke_data, pretrain_epochs=1, epochs=2, checkpoint_every=1, eval_every=0)
    real_run_epoch = train_mod.Trainer.run_epoch

    def crash_on_third(self, epoch, **kw):
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_run_epoch(self, epoch, **kw)

    monkeypatch.setattr(train_mod.Trainer, "run_epoch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    while mlflow.active_run():
        mlflow.end_run("KILLED")
    run_id = (tmp_path / "model" / "mlflow_run_id").read_text()
    monkeypatch.setattr(train_mod.Trainer, "run_epoch", real_run_epoch)

    seen = []
    original_restore = train_mod.Trainer.restore
    monkeypatch.setattr(train_mod.Trainer, "restore", lambda self: seen.append(original_restore(self)) or seen[-1])
    result = train(cfg)
    assert seen == [2]
    assert result.run_id == run_id
    assert result.epochs_done == 3
    assert len(_history(run_id, "train/epoch_g_loss")) == 3  # one run holds the whole history


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, smoke_data, tracking, monkeypatch):
    cfg = _cfg(tmp_path, smoke_data, pretrain_epochs=1, epochs=1, checkpoint_every=1, eval_every=0)
    ckpt_dir = tmp_path / "model" / "checkpoints"
    real_run_epoch = train_mod.Trainer.run_epoch

    def poison_second_epoch(self, epoch, **kw):
        if epoch == 1:  # the device-side loss sums turn NaN; the host sees it at the next read
            self.gan_step = lambda lr, hr: self.loss_sums["g_loss"].assign_add(np.nan)
        return real_run_epoch(self, epoch, **kw)

    monkeypatch.setattr(train_mod.Trainer, "run_epoch", poison_second_epoch)
    with pytest.raises(TrainingDivergedError, match="g_loss became nan within steps .* of epoch 2.*intact"):
        train(cfg)
    assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith("ckpt-1")
    assert not (tmp_path / "model" / "generator.keras").exists()


@pytest.mark.slow
def test_kill_9_mid_training_then_rerun_resumes(tmp_path, smoke_data, tracking):
    model_dir = tmp_path / "model"
    cmd = [
        sys.executable, "-m", "srcore", "train", "--preset", "smoke", "--data", str(smoke_data), "--out", str(model_dir),
        "--gen-filters", "8", "--gen-blocks", "1", "--disc-filters", "8", "--pretrain-epochs", "2", "--epochs", "4",
        "--checkpoint-every", "1", "--eval-every", "0", "--steps-per-epoch", "3", "--batch-size", "4",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not tf.train.latest_checkpoint(str(model_dir / "checkpoints")):
        time.sleep(0.2)
    assert proc.poll() is None, f"training ended before it could be killed:\n{proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(tf.train.latest_checkpoint(str(model_dir / "checkpoints")).rsplit("-", 1)[1])
    assert 1 <= killed_at < 6
    run_id = (model_dir / "mlflow_run_id").read_text()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{killed_at} of 6 epochs done" in rerun.stderr  # the log says where it resumed
    assert (model_dir / "mlflow_run_id").read_text() == run_id
    client = mlflow.MlflowClient(tracking)
    steps = sorted({m.step for m in client.get_metric_history(run_id, "train/epoch_g_loss")})
    assert steps == [1, 2, 3, 4, 5, 6]
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("precision,jit", [("mixed_float16", False), ("mixed_bfloat16", False), ("float32", True)])
def test_precision_and_xla_switches_give_finite_steps(tmp_path, precision, jit):
    import keras

    cfg = build_config("smoke", overrides={**TINY, "precision": precision, "jit_compile": jit, "batch_size": 2})
    trainer = train_mod.Trainer(cfg, None, tmp_path, steps_per_epoch=1)
    if precision == "mixed_float16":
        assert isinstance(trainer.g_opt, keras.optimizers.LossScaleOptimizer)
    rng = np.random.default_rng(0)
    lr = tf.constant(rng.uniform(-1, 1, (2, 32, 32, 3)), tf.float32)
    hr = tf.constant(rng.uniform(-1, 1, (2, 128, 128, 3)), tf.float32)
    for step in (trainer.pretrain_step, trainer.gan_step):
        losses = step(lr, hr)
        assert all(np.isfinite(float(v)) for v in losses.values())
    assert trainer.generator(lr).dtype == tf.float32  # outputs stay float32 under mixed policies


def test_trainer_precision_stays_in_its_models(tmp_path):
    """The trainer's models train in bf16, but the process-wide policy stays float32: a model
    built later in the process (evaluate/export/upscale after training, the next sweep trial)
    is float32, and so is what the trainer saves and validates."""
    import keras

    from srcore.models import build_generator

    cfg = build_config("smoke", overrides={**TINY, "precision": "mixed_bfloat16", "batch_size": 2,
                                           "content_loss": "mse"})
    trainer = train_mod.Trainer(cfg, None, tmp_path, steps_per_epoch=1)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert build_generator(8, 1).get_layer("res0_conv1").compute_dtype == "float32"
    assert trainer.generator.get_layer("res0_conv1").compute_dtype == "bfloat16"
    assert {l.dtype_policy.name for l in trainer.inference_generator().layers} == {"float32"}
    # the compiled step convolves in bf16 (layers keep the policy they were built under)
    lr = tf.zeros((2, 32, 32, 3))
    graph = trainer.pretrain_step.get_concrete_function(lr, tf.zeros((2, 128, 128, 3))).graph.as_graph_def()
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    assert {tf.dtypes.as_dtype(n.attr["T"].type).name for n in nodes if n.op == "Conv2D"} == {"bfloat16"}


def test_resume_logs_no_epoch_twice_and_restores_exact_state(tmp_path, smoke_data, tracking, monkeypatch):
    """Checkpoint every 2 epochs, crash in epoch 4: epoch 3 was logged but not checkpointed.
    The resume re-trains epoch 3 from checkpoint 2 without logging it again."""
    cfg = _cfg(tmp_path, smoke_data, pretrain_epochs=2, epochs=2, checkpoint_every=2, eval_every=0)
    real_run_epoch = train_mod.Trainer.run_epoch

    def crash_in_fourth(self, epoch, **kw):
        if epoch == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_run_epoch(self, epoch, **kw)

    monkeypatch.setattr(train_mod.Trainer, "run_epoch", crash_in_fourth)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    while mlflow.active_run():
        mlflow.end_run("KILLED")
    run_id = (tmp_path / "model" / "mlflow_run_id").read_text()
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "train/epoch_g_loss")] == [1, 2, 3]

    # a restored trainer holds exactly the checkpoint's weights and optimizer state
    ckpt = tf.train.latest_checkpoint(str(tmp_path / "model" / "checkpoints"))
    trainer = train_mod.Trainer(cfg, smoke_data, tmp_path / "model", steps_per_epoch=1)
    assert trainer.restore() == 2
    saved, restored = _values(ckpt), _values(trainer.checkpoint.write(str(tmp_path / "scratch" / "now")))
    compared = [n for n in saved if "save_counter" not in n and n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert any("OPTIMIZER_SLOT" in n or "optimizer/" in n for n in compared)
    for name in compared:
        assert np.array_equal(saved[name], restored[name]), name

    monkeypatch.setattr(train_mod.Trainer, "run_epoch", real_run_epoch)
    result = train(cfg)
    assert result.run_id == run_id
    client = mlflow.MlflowClient()
    for key in ("train/epoch_g_loss", "train/epoch_seconds", "train/phase"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == [1, 2, 3, 4], (key, steps)  # no epoch logged twice
    step_metrics = [m.step for m in client.get_metric_history(run_id, "train/g_loss")]
    assert len(step_metrics) == len(set(step_metrics))


def _values(checkpoint_path: str) -> dict:
    reader = tf.train.load_checkpoint(checkpoint_path)
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


def test_fault_after_epoch_1_then_rerun_resumes_at_epoch_1(tmp_path, smoke_data, tracking, monkeypatch):
    """What a preempted KFP train pod does: die after epoch 1's checkpoint, retry, resume."""
    cfg = _cfg(tmp_path, smoke_data, pretrain_epochs=1, epochs=1, checkpoint_every=1, eval_every=0)
    monkeypatch.setenv(train_mod.FAULT_ENV, "1")
    with pytest.raises(RuntimeError, match="injected failure after epoch 1"):
        train(cfg)
    while mlflow.active_run():
        mlflow.end_run("FAILED")
    seen = []
    original_restore = train_mod.Trainer.restore
    monkeypatch.setattr(train_mod.Trainer, "restore", lambda self: seen.append(original_restore(self)) or seen[-1])
    result = train(cfg)  # the same env: the marker makes the fault fire once only
    assert seen == [1] and result.epochs_done == 2
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`srgan.step` = 'train'")
    assert len(runs) == 1


def test_rerunning_a_finished_training_is_a_no_op(tmp_path, smoke_data, tracking):
    cfg = _cfg(tmp_path, smoke_data, pretrain_epochs=1, epochs=0, eval_every=0)
    first = train(cfg)
    history = _history(first.run_id, "train/epoch_g_loss")
    again = train(cfg)
    assert again.model_uri == first.model_uri and again.run_id == first.run_id
    assert _history(first.run_id, "train/epoch_g_loss") == history


def test_train_refuses_a_model_dir_it_did_not_write(tmp_path, smoke_data, tracking):
    from srcore.atomic import OutputDirError

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=str(model_dir)):
        train(_cfg(tmp_path, smoke_data, pretrain_epochs=1, epochs=0, eval_every=0))
    assert (model_dir / "notes.txt").read_text() == "mine" and sorted(p.name for p in model_dir.iterdir()) == ["notes.txt"]


def test_model_dir_of_another_architecture_is_refused_in_one_line(tmp_path, smoke_data, tracking, caplog):
    """Issue 17: after the quick start, `srgan train` into the smoke model's folder with other
    widths must name the differing fields and --model-dir, never show TF's restore error; a
    parent run that fails that way says why."""
    from srcore.atomic import claim_output_dir
    from srcore.cli import main
    from srcore.steps import main_step

    old = _cfg(tmp_path, smoke_data, pretrain_epochs=1, epochs=0, eval_every=0)
    folder = claim_output_dir(Path(old.model_dir), "train")
    # checkpoints as a run before the architecture record existed left them (no training needed)
    train_mod.Trainer(old, smoke_data, folder, steps_per_epoch=1).save_checkpoint(1)
    new = old.replace(gen_filters=16, gen_blocks=2)

    with pytest.raises(train_mod.ArchitectureMismatchError) as legacy:  # no record: the restore is translated
        train(new)
    assert str(folder) in str(legacy.value) and "gen_filters=16" in str(legacy.value)
    assert "incompatible tensor" not in str(legacy.value) and "\n" not in str(legacy.value)

    # `srgan main` on that folder: the parent run fails with the reason on it, not a bare FAILED
    with pytest.raises(train_mod.ArchitectureMismatchError):
        main_step(new.replace(source=str(smoke_data)))
    client = mlflow.MlflowClient()
    (parent,) = client.search_runs([client.get_experiment_by_name(new.experiment_name).experiment_id],
                                   filter_string="attributes.status = 'FAILED' and tags.`srgan.step` = 'main'")
    assert "another architecture" in parent.data.tags["srgan.error"] or "do not fit" in parent.data.tags["srgan.error"]
    assert parent.data.tags["mlflow.note.content"].startswith("Failed: ")

    # with the record (written by every train start): refused before anything is built, fields named
    (folder / train_mod.ARCH_FILE).write_text('{"gen_filters": 8, "gen_blocks": 1, "gen_bicubic_skip": true, '
                                              '"scale": 4, "disc_filters": 8, "disc_flatten": false}')
    start = time.monotonic()
    code = main(["train", "--preset", "smoke", "--data-dir", str(smoke_data), "--model-dir", str(folder),
                 "--gen-filters", "16", "--gen-blocks", "2", "--disc-filters", "8"])
    assert code == 2 and time.monotonic() - start < 10
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1:]
    assert f"--model-dir {folder}" in line and "gen_filters 8 vs 16" in line and "gen_blocks 1 vs 2" in line, line


def test_gan_step_prints_no_native_remapper_error(capfd):
    """TF's grappler remapper fails on the discriminator's Conv2D+BiasAdd+LeakyReLU under a
    gradient tape and prints `E... remapper failed` on the console; the GAN epochs run without it."""
    from srcore.models import build_discriminator

    d = build_discriminator(128, 8)
    opt = tf.keras.optimizers.Adam()

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(d(x, training=True)) - tf.reduce_mean(d(x * 0.5, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, d.trainable_variables), d.trainable_variables))
        return loss

    before = tf.config.optimizer.get_experimental_options()
    with train_mod.grappler_without_remapper():
        step(tf.random.uniform((2, 128, 128, 3)))
    assert "remapper failed" not in capfd.readouterr().err
    assert tf.config.optimizer.get_experimental_options().get("remapping", True) == before.get("remapping", True)
