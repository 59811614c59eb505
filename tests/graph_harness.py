"""Run one graph node through the SDK's real execution: source -> node -> collect."""

from __future__ import annotations

from collections.abc import Callable

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Fragment, Operator, OperatorSpec
from xiqa.operators.case import CASE_PORT, Case, CollectOperator


class _CaseSource(Operator):
    def __init__(self, fragment: Fragment, *args, cases: list[Case], **kwargs) -> None:
        self.cases, self._next = list(cases), 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output(CASE_PORT)

    def compute(self, op_input, op_output, context) -> None:
        op_output.emit(self.cases[self._next], CASE_PORT)
        self._next += 1


class _OneNodeApp(Application):
    def __init__(self, make_node: Callable[[Fragment], Operator], cases: list[Case]) -> None:
        self.make_node, self.cases, self.collected = make_node, cases, []
        super().__init__()

    def compose(self) -> None:
        source = _CaseSource(self, CountCondition(self, len(self.cases)), cases=self.cases, name="source")
        node = self.make_node(self)
        collect = CollectOperator(self, on_case=self.collected.append, name="collect")
        self.add_flow(source, node, {(CASE_PORT, CASE_PORT)})
        self.add_flow(node, collect, {(CASE_PORT, CASE_PORT)})


def run_node(make_node: Callable[[Fragment], Operator], cases: list[Case]) -> list[Case]:
    """The cases as the node emitted them, in order."""
    app = _OneNodeApp(make_node, cases)
    app.run()
    return app.collected
