"""Metric names: one grouped vocabulary, and the migration of the old underscore names.

MLflow names a metric's chart section by what precedes its last '/', so every metric carries its group:
- `train/<loss>`: training losses per logged step (`train/epoch_<loss>` per epoch) and
  throughput (`train/images_per_sec`, `train/epoch_seconds`, `train/phase`);
- `val/<metric>`: per epoch, on the validation faces held out of the training split
  (they choose hyper-parameters and sweep trials);
- `test/<metric>`: evaluate's final numbers on the test split, with the gain over bicubic
  `test/gain_<metric>`; the bicubic baseline of the same split is `test/bicubic/<metric>`,
  its own chart section: MLflow names a section by everything before the last '/', sorts
  sections by name ("test" < "test/bicubic") and charts by key, so the six constant
  baseline charts come after the model's instead of first (`test/bicubic_*` sorted first);
- `data/<count>`: ingest's image counts.

Names written before the grouping (`test_psnr_y`, `bicubic_psnr_y`, `gain_psnr_y`,
`val_psnr`, `step_g_loss`, `g_loss`) and the first grouped baseline `test/bicubic_psnr_y`
are migrated on read by `canonical`: configs with
`gate_metric: test_psnr_y`, older metrics.json files and the `metric.<name>` tags of
versions registered before.
"""

from __future__ import annotations

from typing import Any, Mapping

TEST, VAL, TRAIN = "test/", "val/", "train/"
BICUBIC = TEST + "bicubic/"  # the bicubic baseline's group: `test/bicubic/psnr_y`
_OLD_BICUBIC = TEST + "bicubic_"  # how the baseline was first grouped
# the row a user compares: what every parent run carries
HEADLINE = ("test/psnr_y", "test/ssim_y", "test/lpips_alex", "test/gain_psnr_y")
_OLD_PREFIXES = {"test_": TEST, "bicubic_": BICUBIC, "gain_": TEST + "gain_", "val_": VAL,
                 "step_": TRAIN}
_OLD_EPOCH = ("g_loss", "d_loss", "pixel_loss", "content_loss", "adversarial_loss")
_OLD_TRAIN = ("images_per_sec", "epoch_seconds", "phase")


def canonical(name: str) -> str:
    """The grouped name of `name` (unchanged when it already has a group)."""
    if name.startswith(_OLD_BICUBIC):
        return BICUBIC + name[len(_OLD_BICUBIC):]
    if "/" in name:
        return name
    for old, new in _OLD_PREFIXES.items():
        if name.startswith(old):
            return new + name[len(old):]
    if name in _OLD_EPOCH:
        return f"{TRAIN}epoch_{name}"
    if name in _OLD_TRAIN:
        return TRAIN + name
    return name


def legacy(name: str) -> str | None:
    """The underscore name `name` had before the grouping (None if it had none)."""
    if name.startswith(BICUBIC):
        return "bicubic_" + name[len(BICUBIC):]
    if name.startswith(_OLD_BICUBIC):
        return "bicubic_" + name[len(_OLD_BICUBIC):]
    if name.startswith(TEST + "gain_"):
        return "gain_" + name[len(TEST + "gain_"):]
    if name.startswith(TEST):
        return "test_" + name[len(TEST):]
    if name.startswith(VAL):
        return "val_" + name[len(VAL):]
    if name.startswith(TRAIN + "epoch_") and name[len(TRAIN + "epoch_"):] in _OLD_EPOCH:
        return name[len(TRAIN + "epoch_"):]
    if name.startswith(TRAIN) and name[len(TRAIN):] in _OLD_TRAIN:
        return name[len(TRAIN):]
    if name.startswith(TRAIN):
        return "step_" + name[len(TRAIN):]
    return None


def migrate(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with the keys of numbers canonical (other entries, such as metrics.json's
    `test_split_hash`, keep their key); a grouped key wins over its old spelling."""
    def new(key: str, value: Any) -> str:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return canonical(key) if is_number or isinstance(value, Mapping) and "mean" in value else key

    out: dict[str, Any] = {}
    for key, value in values.items():
        target = new(key, value)
        if target == key or target not in values:
            out[target] = value
    return out


def baseline(metric: str) -> str:
    """The bicubic baseline of a test metric: `test/psnr_y` -> `test/bicubic/psnr_y`."""
    metric = canonical(metric)
    group, _, base = metric.rpartition("/")
    return f"{group}/bicubic/{base}" if group else f"bicubic_{base}"


def gain(metric: str) -> str:
    """`test/psnr_y` -> `test/gain_psnr_y`."""
    metric = canonical(metric)
    group, _, base = metric.rpartition("/")
    return f"{group}/gain_{base}" if group else f"gain_{base}"
