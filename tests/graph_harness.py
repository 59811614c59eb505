"""Run graph nodes through the SDK's real execution: source -> node(s) -> collect."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


NodeFactory = Callable[[Fragment], Operator]


class _ChainApp(Application):
    def __init__(self, make_nodes: Sequence[NodeFactory], cases: list[Case]) -> None:
        self.make_nodes, self.cases, self.collected = list(make_nodes), cases, []
        super().__init__()

    def compose(self) -> None:
        source = _CaseSource(self, CountCondition(self, len(self.cases)), cases=self.cases, name="source")
        chain = [source, *(make(self) for make in self.make_nodes),
                 CollectOperator(self, on_case=self.collected.append, name="collect")]
        for upstream, downstream in zip(chain, chain[1:], strict=False):
            self.add_flow(upstream, downstream, {(CASE_PORT, CASE_PORT)})


def run_node(make_node: NodeFactory | Sequence[NodeFactory], cases: list[Case]) -> list[Case]:
    """The cases as the last node emitted them, in order; several factories run as a chain."""
    app = _ChainApp([make_node] if callable(make_node) else make_node, cases)
    app.run()
    return app.collected
