"""`models:/name@alias` that does not exist: one line listing what does (issue 17), for every
step that resolves a model (upscale, evaluate, export, deploy), and no output folder left."""

from __future__ import annotations

import mlflow
import pytest
from PIL import Image

from srcore.config import Config
from srcore.model_uri import ModelNotFoundError, check_model_source


class _Identity(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture
def registered(tracking, tmp_path, monkeypatch):
    """Registered model `srgan-uri-test` with version 1 under alias `candidate` only, and
    `O'Brien's model` (a quote MLflow's filter strings cannot escape) with version 1."""
    monkeypatch.chdir(tmp_path)
    with mlflow.start_run():
        uri = mlflow.pyfunc.log_model(name="model", python_model=_Identity(), pip_requirements=["mlflow"]).model_uri
    version = mlflow.register_model(uri, "srgan-uri-test")
    mlflow.MlflowClient().set_registered_model_alias("srgan-uri-test", "candidate", version.version)
    mlflow.register_model(uri, "O'Brien's model")
    return "srgan-uri-test"


def test_missing_alias_version_or_name_is_one_line_listing_what_exists(registered, tmp_path, capsys):
    from srcore.cli import main
    from srcore.deploy import resolve_version

    with pytest.raises(ModelNotFoundError) as alias:
        check_model_source(f"models:/{registered}@champion")
    text = str(alias.value)
    assert "no alias 'champion'" in text and "candidate (version 1)" in text and "\n" not in text
    with pytest.raises(ModelNotFoundError, match="no version 7.*candidate"):
        check_model_source(f"models:/{registered}/7")
    with pytest.raises(ModelNotFoundError, match=f"no registered model 'nope'.*{registered}"):
        check_model_source("models:/nope@champion")
    with pytest.raises(ModelNotFoundError, match="no run"):
        check_model_source("runs:/0123456789abcdef/model")
    with pytest.raises(ModelNotFoundError, match="its aliases: none; its versions: 1 "):  # a quote in the name
        check_model_source("models:/O'Brien's model@champion")
    with pytest.raises(ModelNotFoundError, match="candidate"):  # deploy's champion look-up
        resolve_version(Config(registered_model_name=registered))

    face = tmp_path / "face.png"
    Image.new("RGB", (32, 32)).save(face)
    for argv in (["upscale", "--model", f"models:/{registered}@champion", str(face), "--out", str(tmp_path / "up")],
                 ["evaluate", "--model", f"models:/{registered}@champion", "--eval-dir", str(tmp_path / "ev")],
                 ["export", "--model", f"models:/{registered}@champion", "--out", str(tmp_path / "ex")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
    assert not any((tmp_path / d).exists() for d in ("up", "ev", "ex")), "no output folder for a missing model"
