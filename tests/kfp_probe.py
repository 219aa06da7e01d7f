"""A small pipeline exercising dsl.If / Elif / Else, a condition on a task output, and dsl.OneOf.

Lives in a module (not in a test function) because KFP ships component bodies as source to the task.
"""

from kfp import dsl


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def echo(text: str) -> str:
    return text


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def passes(score: float, bar: float) -> bool:
    return score >= bar


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def mark(text: str, out: dsl.Output[dsl.Artifact]) -> None:
    with open(out.path, "w") as f:
        f.write(text)


@dsl.pipeline
def branches(source: str = "synth", n: int = 3, score: float = 0.7) -> str:
    gate = passes(score=score, bar=0.5)
    with dsl.If(source == "synth"):
        a = echo(text="synth-branch")
    with dsl.Elif(n > 2):
        b = echo(text="elif-branch")
    with dsl.Else():
        c = echo(text="else-branch")
    chosen = dsl.OneOf(a.output, b.output, c.output)
    with dsl.If(gate.output == True):  # noqa: E712 - KFP builds the condition from this expression
        mark(text="deployed")
    return echo(text=chosen).output


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def where(out: dsl.Output[dsl.Artifact]) -> None:
    """Where the task's program was written, and its temp folder."""
    import os
    import tempfile

    with open(out.path, "w") as f:
        f.write(f"{os.path.dirname(os.path.abspath(__file__))}\n{tempfile.gettempdir()}")


@dsl.pipeline
def temp_probe() -> None:
    where()
