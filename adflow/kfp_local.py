"""KFP local runner, with its control flow fixed.

kfp 2.16's local runner mishandles conditions (FIELD-NOTES):
- the condition string is CEL (`inputs.parameter_values['pipelinechannel--x'] == 'y' && !(...)`); the local
  evaluator pastes values into it and `eval`s it as Python, which always raises, and a raised evaluation is
  read as False: every `dsl.If` branch is skipped and the run still reports success;
- `dsl.If/Elif/Else` groups sit in a `condition-branches` DAG with no condition of its own, which goes to the
  plain DAG runner that ignores conditions altogether (every branch would run);
- `dsl.OneOf` (the output of whichever branch ran) raises NotImplementedError;
- conditional tasks run after all other tasks of their DAG, whatever depends on them.

`install()` replaces both DAG runners with `run_dag` below: every task of a DAG in dependency order; a task
with a condition runs only when the condition, evaluated on the task's resolved inputs, is true; a task
that needs an output of a skipped task is skipped too; OneOf takes the branch that produced a value.
A condition that cannot be evaluated is an error, never a silent False. DAGs with ParallelFor are passed
to kfp's own runner (with the condition evaluator fixed), since this project does not use them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_PARAM = re.compile(r"inputs\.parameter_values\[\s*('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\s*\]")
SKIPPED: list[str] = []  # tasks skipped by a false condition in the most recent local run (for summaries)
_installed = False


class ConditionError(RuntimeError):
    """A dsl.If condition the local runner cannot evaluate."""


def cel_to_python(expr: str) -> str:
    """Translate the CEL subset KFP emits into a Python expression over a dict `_v` of input values."""
    expr = _PARAM.sub(lambda m: f"_v[{m.group(1)}]", expr)
    out, pos = [], 0
    for m in _STRING.finditer(expr):
        out.append(_code(expr[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_code(expr[pos:]))
    return "".join(out)


def _code(seg: str) -> str:
    seg = seg.replace("&&", " and ").replace("||", " or ")
    seg = re.sub(r"!(?!=)", " not ", seg)
    seg = re.sub(r"\btrue\b", "True", seg)
    seg = re.sub(r"\bfalse\b", "False", seg)
    seg = re.sub(r"\bnull\b", "None", seg)
    return re.sub(r"\bdouble\(", "float(", seg)


def evaluate_condition(expr: str, values: dict[str, Any]) -> bool:
    if not expr.strip():
        return True
    py = cel_to_python(expr)
    names = {"__builtins__": {}, "_v": values, "int": int, "float": float, "str": str, "bool": bool}
    try:
        return bool(eval(py, names, {}))  # restricted namespace; the text comes from our own compiled IR
    except Exception as e:
        raise ConditionError(
            f"cannot evaluate condition {expr!r} (as {py!r}) with inputs {values}: {e}"
        ) from e


def _dag_outputs(dag_outputs_spec: Any, produced: dict[str, dict[str, Any]]) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for key, sel in dag_outputs_spec.parameters.items():
        kind = sel.WhichOneof("kind")
        if kind == "value_from_parameter":
            cands = [
                (sel.value_from_parameter.producer_subtask, sel.value_from_parameter.output_parameter_key)
            ]
        else:  # value_from_oneof: the first branch that produced a value
            cands = [
                (s.producer_subtask, s.output_parameter_key) for s in sel.value_from_oneof.parameter_selectors
            ]
        for task, out_key in cands:
            if out_key in produced.get(task, {}):
                outputs[key] = produced[task][out_key]
                break
    for key, sel in dag_outputs_spec.artifacts.items():
        for s in sel.artifact_selectors:
            if s.output_artifact_key in produced.get(s.producer_subtask, {}):
                outputs[key] = produced[s.producer_subtask][s.output_artifact_key]
                break
    return outputs


def _upstream_producers(task_spec: Any) -> set[str]:
    producers = set()
    for spec in task_spec.inputs.parameters.values():
        if spec.HasField("task_output_parameter"):
            producers.add(spec.task_output_parameter.producer_task)
    for spec in task_spec.inputs.artifacts.values():
        if spec.HasField("task_output_artifact"):
            producers.add(spec.task_output_artifact.producer_task)
    return producers


def _missing_inputs(task_spec: Any, produced: dict[str, dict[str, Any]]) -> list[str]:
    missing = []
    for name, spec in task_spec.inputs.parameters.items():
        if spec.HasField("task_output_parameter"):
            p = spec.task_output_parameter
            if p.output_parameter_key not in produced.get(p.producer_task, {}):
                missing.append(name)
    for name, spec in task_spec.inputs.artifacts.items():
        if spec.HasField("task_output_artifact"):
            a = spec.task_output_artifact
            if a.output_artifact_key not in produced.get(a.producer_task, {}):
                missing.append(name)
    return missing


def run_dag(
    pipeline_resource_name: str,
    dag_component_spec: Any,
    executors: dict[str, Any],
    components: dict[str, Any],
    dag_arguments: dict[str, Any],
    pipeline_root: str,
    runner: Any,
    unique_pipeline_id: str,
    fail_stack: list[str],
) -> tuple[dict[str, Any], Any]:
    from kfp.local import graph_utils, io, status
    from kfp.local.orchestrator import enhanced_dag_orchestrator as enhanced
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    dag_spec = dag_component_spec.dag
    if any(t.WhichOneof("iterator") for t in dag_spec.tasks.values()):
        return _ORIGINAL["enhanced"](
            pipeline_resource_name=pipeline_resource_name,
            dag_component_spec=dag_component_spec,
            executors=executors,
            components=components,
            dag_arguments=dag_arguments,
            pipeline_root=pipeline_root,
            runner=runner,
            unique_pipeline_id=unique_pipeline_id,
            fail_stack=fail_stack,
        )
    args = OrchestratorUtils.join_user_inputs_and_defaults(
        dag_arguments=dag_arguments, dag_inputs_spec=dag_component_spec.input_definitions
    )
    io_store = io.IOStore()
    for k, v in args.items():
        io_store.put_parent_input(k, v)
    produced: dict[str, dict[str, Any]] = {}
    order = graph_utils.topological_sort_tasks(dag_spec.tasks)
    while order:
        name = order.pop()
        spec = dag_spec.tasks[name]
        missing = _missing_inputs(spec, produced)
        if missing:
            logging.info(f"Skipping task {name}: its inputs {missing} come from skipped tasks")
            SKIPPED.append(name)
            continue
        if spec.trigger_policy.condition:
            values = OrchestratorUtils.make_task_arguments(spec.inputs, io_store)
            if not evaluate_condition(spec.trigger_policy.condition, values):
                logging.info(f"Skipping task {name}: condition is false")
                SKIPPED.append(name)
                continue
        outputs, task_status = enhanced.execute_task(
            task_name=name,
            task_spec=spec,
            pipeline_resource_name=pipeline_resource_name,
            components=components,
            executors=executors,
            io_store=io_store,
            pipeline_root=pipeline_root,
            runner=runner,
            unique_pipeline_id=unique_pipeline_id,
            fail_stack=fail_stack,
        )
        if task_status == status.Status.FAILURE:
            fail_stack.append(name)
            return {}, status.Status.FAILURE
        produced[name] = dict(outputs)
        for key, value in outputs.items():
            io_store.put_task_output(name, key, value)
    return _dag_outputs(dag_spec.outputs, produced), status.Status.SUCCESS


_ORIGINAL: dict[str, Any] = {}


def install() -> None:
    """Route kfp's local DAG execution through `run_dag` (idempotent)."""
    global _installed
    if _installed:
        return
    from kfp.local.orchestrator import dag_orchestrator
    from kfp.local.orchestrator import enhanced_dag_orchestrator as enhanced

    _ORIGINAL["enhanced"] = enhanced.run_enhanced_dag
    _ORIGINAL["plain"] = dag_orchestrator.run_dag
    enhanced.run_enhanced_dag = run_dag
    dag_orchestrator.run_dag = run_dag
    enhanced.ConditionEvaluator.evaluate_condition = staticmethod(
        lambda condition, io_store: _evaluate_with_store(condition, io_store)
    )
    _installed = True


def _evaluate_with_store(condition: str, io_store: Any) -> bool:
    """For kfp's own ParallelFor path: resolve the names a condition uses from the DAG's inputs."""
    values = {}
    for m in _PARAM.finditer(condition):
        key = m.group(1)[1:-1]
        values[key] = io_store.get_parent_input(key)
    return evaluate_condition(condition, values)


@contextmanager
def task_tempdir(name: str) -> Iterator[Path]:
    """A temp folder of its own for the tasks run in the block, deleted at its end.

    Each task writes its component to `mktemp -d` and never deletes it (FIELD-NOTES); what tasks create with
    `tempfile` stays behind too. Tasks are subprocesses of this one, so they find TMPDIR in the environment
    they inherit. Deleting by name (`tmp*` holding an ephemeral_component.py) took the live task folders of
    every other run on the machine as well."""
    folder = Path(tempfile.mkdtemp(prefix=f"adflow-{name}-"))  # also fixes this process's own tempdir first
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before
        shutil.rmtree(folder, ignore_errors=True)


def init(pipeline_root: str | Path) -> None:
    """Start the KFP local runner (subprocess, this venv) with the control-flow fix installed."""
    import warnings

    from kfp import local

    # Components name the cluster image; locally they run in this venv by design, so kfp's warning is noise.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom")
    install()
    Path(pipeline_root).mkdir(parents=True, exist_ok=True)
    SKIPPED.clear()
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True
    )
