"""Tiny pipelines for the IR checks of pipeline/support.py (a module of its own: KFP reads
real annotations, which `from __future__ import annotations` in the test modules hides)."""

from kfp import dsl


@dsl.component(base_image="python:3.11")
def takes_dict(trial: dict) -> str:
    return str(trial)


@dsl.pipeline
def loop_item_mismatch(trials: list = [{"a": 1}]):  # noqa: B006 - a KFP default
    """`list` makes each loop item a STRING; takes_dict declares a STRUCT."""
    with dsl.ParallelFor(trials) as trial:
        takes_dict(trial=trial)


@dsl.component(base_image="python:3.11")
def one(x: int) -> int:
    return x


@dsl.component(base_image="python:3.11")
def total(xs: list) -> int:
    return sum(xs)


@dsl.component(base_image="python:3.11")
def exit_op(status: dsl.PipelineTaskFinalStatus):
    print(status.state)


@dsl.pipeline
def needs_kfp_2_14(items: list = [1, 2]):  # noqa: B006 - a KFP default
    """An exit task taking PipelineTaskFinalStatus and a dsl.Collected fan-in."""
    with dsl.ExitHandler(exit_op()):
        with dsl.ParallelFor(items) as item:
            t = one(x=item)
        total(xs=dsl.Collected(t.output))
