"""What a person comparing runs in MLflow expects, checked on a finished job's runs
(issue 17): used by the smoke job (tests/test_mlproject.py) and the two-trial sweep
(tests/test_sweep.py), so the checks add no end-to-end run of their own."""

from __future__ import annotations

from srcore.metric_names import HEADLINE
from srcore.model_card import SECTIONS
from srcore.tracking import CONFIG_ARTIFACT, EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, HPARAMS

GROUPS = ("train/", "val/", "test/", "data/")


def check_experiment_opens_on_runs(client, experiment) -> None:
    assert client.get_experiment(experiment.experiment_id).tags.get(EXPERIMENT_KIND_TAG) == EXPERIMENT_KIND


def check_parent(client, parent, extra: tuple[str, ...] = ()) -> None:
    """The parent is the row a user compares: headline metrics, version and gate as tags."""
    missing = [m for m in (*HEADLINE, *extra) if m not in parent.data.metrics]
    assert not missing, f"parent {parent.info.run_name} lacks {missing}"
    tags = parent.data.tags
    assert tags.get("registered_model_version") and tags.get("gate.decision") in ("champion", "candidate"), tags
    assert tags.get("gate.reason")
    assert "showcase/latest.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "showcase")}


def check_params(runs) -> None:
    """Params are the hyper-parameters only, the same set on every run that has them."""
    with_params = [r for r in runs if r.data.params]
    assert with_params
    for r in with_params:
        assert set(r.data.params) == set(HPARAMS), (r.info.run_name, sorted(set(r.data.params) ^ set(HPARAMS)))
    assert len(HPARAMS) <= 30


def check_showcase_card(client, runs) -> None:
    """MLflow's image card captions its picture with every param of the run: the card
    (`showcase/grid`, first section of the page) is on evaluate, which logs no params; runs
    with params keep the grid as a plain `showcase/` file."""
    carded = [r for r in runs if "images" in {a.path for a in client.list_artifacts(r.info.run_id)}]
    assert [r.info.run_name.split()[0] for r in carded] == ["evaluate"] * len(carded) and carded, \
        [r.info.run_name for r in carded]
    for r in carded:
        assert not r.data.params, r.info.run_name
        files = [a.path for a in client.list_artifacts(r.info.run_id, "images")]
        assert files and all(f.startswith("images/showcase~grid+step+0+") for f in files), files


def check_config_artifacts(client, runs) -> None:
    for r in runs:
        assert CONFIG_ARTIFACT in {a.path for a in client.list_artifacts(r.info.run_id)}, r.info.run_name


def check_names_distinct(runs) -> None:
    names = [r.info.run_name for r in runs]
    assert len(set(names)) == len(names), sorted(names)


def check_metric_groups(runs) -> None:
    for r in runs:
        loose = [k for k in r.data.metrics if not k.startswith(GROUPS)]
        assert not loose, (r.info.run_name, loose)


def check_model_card(version) -> None:
    card = version.description or ""
    for section in SECTIONS:
        assert section in card, (section, card)
    assert "| **this model** |" in card and "| bicubic |" in card
    assert "](#/experiments/" in card  # links to the train and evaluate runs
