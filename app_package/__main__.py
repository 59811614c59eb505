"""MAP entry point: ``python -m xiqa`` (what a MONAI Application Package runs).

Paths come from the MAP environment, with the MAP layout as defaults:
``HOLOSCAN_INPUT_PATH`` (/var/holoscan/input, searched recursively),
``HOLOSCAN_OUTPUT_PATH`` (/var/holoscan/output) and ``HOLOSCAN_MODEL_PATH``
(/opt/holoscan/models: one bundle or a folder of fold bundles; the shipped
model when it holds none).  The run is ``xiqa analyze`` over the input folder,
so the exit code follows the same contract.
"""

from __future__ import annotations

import sys

MAP_DEFAULTS = {
    "input": ("HOLOSCAN_INPUT_PATH", "/var/holoscan/input"),
    "output": ("HOLOSCAN_OUTPUT_PATH", "/var/holoscan/output"),
    "model": ("HOLOSCAN_MODEL_PATH", "/opt/holoscan/models"),
}


def main(argv: list[str] | None = None) -> int:
    from monai.deploy.core import RuntimeEnv
    from xiqa import cli
    from xiqa.operators.segmentation import default_model

    env = RuntimeEnv(MAP_DEFAULTS)
    model = default_model(env.model)
    extra = list(sys.argv[1:] if argv is None else argv)
    return cli.main(["analyze", env.input, "--output", env.output, "--model", str(model), "--no-progress",
                     *extra])


if __name__ == "__main__":
    raise SystemExit(main())
