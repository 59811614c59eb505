"""Graph node "acquisition", after the gate: the acquisition checks of a frontal chest."""

from __future__ import annotations

from monai.deploy.core import Fragment

from ..case import Case, CaseOperator
from .assess import assess_acquisition
from .config import AcquisitionConfig


class AcquisitionOperator(CaseOperator):
    """Sets ``case.acquisition`` from the analysis grid, the gate's lung fields and the tags."""

    stage = "acquisition"
    chest_only = True

    def __init__(self, fragment: Fragment, *args, config: AcquisitionConfig = AcquisitionConfig(),
                 **kwargs) -> None:
        self.config = config
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        case.acquisition = assess_acquisition(case.network_input[0], case.gate.region, case.source.dataset,
                                              case.source.shape, self.config)
