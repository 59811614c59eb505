"""Acquisition checks beside the foreign objects (DESIGN "Beyond the thesis"): the reasons
radiographers repeat a chest radiograph besides objects, each measured and coded.

One module per check, each a plain function over the lung fields of the input gate's chest
region (``chest_region``) on the analysis grid:

* ``cut_off``: lung apices, lateral lung edges, costophrenic angles at the exposed field's edge;
* ``rotation``: the mediastinum off the thorax's midline;
* ``inspiration``: the right lung field's height against the thorax width;
* ``exposure``: IEC 62494-1 EI / EI_T / DI tags, clipped lung area;
* ``collimation``: the exposed field far larger than the thorax.

``assess`` runs them all (``assess_acquisition``); ``node`` is the graph node; ``config`` holds
the thresholds with their reasons; ``sentences`` words failures for the summary.
"""

from .assess import AcquisitionResult, assess_acquisition
from .common import CHECKS, CheckResult, CheckStatus
from .config import VERDICT_EFFECTS, AcquisitionConfig

__all__ = ["CHECKS", "VERDICT_EFFECTS", "AcquisitionConfig", "AcquisitionResult", "CheckResult",
           "CheckStatus", "assess_acquisition"]
