"""The KFP local runner's control flow, fixed in adflow.kfp_local: both branches truly run."""

from pathlib import Path

import pytest

from adflow import kfp_local
from adflow.kfp_local import ConditionError, cel_to_python, evaluate_condition


def test_cel_translation() -> None:
    assert (
        cel_to_python("inputs.parameter_values['pipelinechannel--x'] == 'a&&b'")
        == "_v['pipelinechannel--x'] == 'a&&b'"
    )
    expr = "!(inputs.parameter_values['pipelinechannel--s'] == 'synth') && int(inputs.parameter_values['pipelinechannel--n']) > 2"
    assert evaluate_condition(expr, {"pipelinechannel--s": "x", "pipelinechannel--n": 3}) is True
    assert evaluate_condition(expr, {"pipelinechannel--s": "synth", "pipelinechannel--n": 3}) is False
    assert evaluate_condition(
        "inputs.parameter_values['pipelinechannel--g-Output'] == true", {"pipelinechannel--g-Output": True}
    )
    assert evaluate_condition("inputs.parameter_values['a'] != 'x' || false", {"a": "y"})


def test_an_unevaluable_condition_is_an_error_not_a_silent_false() -> None:
    with pytest.raises(ConditionError, match="cannot evaluate"):
        evaluate_condition("inputs.parameter_values['missing'] == 'x'", {})


@pytest.mark.slow
def test_every_branch_runs_locally(tmp_path: Path) -> None:
    from .kfp_probe import branches

    kfp_local.init(tmp_path / "root")
    cases = [
        (dict(source="synth", score=0.9), "synth-branch", True),
        (dict(source="import", n=5, score=0.1), "elif-branch", False),
        (dict(source="import", n=1, score=0.9), "else-branch", True),
    ]
    seen: set[Path] = set()
    for args, expected, deployed in cases:
        kfp_local.SKIPPED.clear()
        task = branches(**args)
        assert task.output == expected, args  # OneOf took the branch that ran
        new_marks = set((tmp_path / "root").rglob("mark/out")) - seen
        seen |= new_marks
        # the task-output condition: `mark` ran exactly when the gate passed
        assert [p.read_text() for p in new_marks] == (["deployed"] if deployed else []), args
        # the two branches not taken were skipped, not run
        assert sum(name.startswith("condition-") for name in kfp_local.SKIPPED) == (2 if deployed else 3), (
            kfp_local.SKIPPED
        )
