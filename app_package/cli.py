"""The ``xiqa`` command: analyze, demo, serve, health, fixtures, train.

Exit codes follow the contract in DESIGN.md: 0 when every input was
processed, 1 when any was rejected or failed, 2 on usage errors; 3 when all
inputs could be read but some are not frontal chest radiographs (not scored,
counted apart from rejects; 1 wins when both happen).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xiqa.service.settings import ServeSettings

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_NOT_CHEST = 0, 1, 2, 3
SALIENCY_METHODS = ("gradcam", "normgrad0", "normgrad1")
REJECT_KOS_HELP = ("a Poor image also gets a Key Object Selection 'Rejected for Quality Reasons' "
                   "(DCM 113001), for reject analysis; a PACS with IHE IOCM may hide the image it "
                   "references (default: off)")

logger = logging.getLogger("xiqa")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xiqa", description="Chest X-ray quality edge node.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    analyze = commands.add_parser("analyze", help="analyse DICOM files or folders (recursively)")
    analyze.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    analyze.add_argument("--output", type=Path, required=True, metavar="DIR")
    analyze.add_argument("--saliency", choices=SALIENCY_METHODS, default="gradcam",
                         help="saliency method (default: %(default)s)")
    analyze.add_argument("--model", type=Path, default=None,
                         help="MONAI bundle folder, or a folder of fold bundles (default: "
                              "HOLOSCAN_MODEL_PATH when it holds one, else the shipped model)")
    analyze.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    analyze.add_argument("--summary-model", type=Path, default=None, metavar="PATH.gguf",
                         help="a GGUF language model phrases the summary (default: the template)")
    analyze.add_argument("--modalities", default="CR,DX,OT",
                         help="comma-separated modalities to accept (default: %(default)s)")
    analyze.add_argument("--count-devices", action="store_true",
                         help="medical devices lower the default verdict too "
                            "(default: removable objects only)")
    analyze.add_argument("--reject-kos", action="store_true", help=REJECT_KOS_HELP)
    analyze.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_acquisition_options(analyze)

    demo = commands.add_parser(
        "demo", help="analyse the real plates shipped with xiqa and a synthetic study")
    demo.add_argument("--output", type=Path, default=Path("xiqa-demo"), metavar="DIR",
                      help="input/ and output/ go here (default: %(default)s)")
    demo.add_argument("--saliency", choices=SALIENCY_METHODS, default="gradcam",
                      help="saliency method (default: %(default)s)")

    serve = commands.add_parser(
        "serve", help="DICOM node: receive by C-STORE, analyse per study, write and forward outputs",
        description="Every option may also be set in the TOML --config file (same names, with - or _); "
                    "options on the command line win.")
    serve.add_argument("--config", type=Path, metavar="FILE", help="TOML file (top level or [serve])")
    serve.add_argument("--ae-title", help="our AE title (default: XIQA)")
    serve.add_argument("--port", type=int, help="DICOM port (default: 11112)")
    serve.add_argument("--bind", help="address to listen on (default: 0.0.0.0)")
    serve.add_argument("--storage", type=Path, metavar="DIR", help="spool for received instances")
    serve.add_argument("--output", type=Path, metavar="DIR", help="where outputs are written")
    serve.add_argument("--forward", action="append", metavar="AET@HOST:PORT",
                       help="send outputs here by C-STORE (repeatable)")
    serve.add_argument("--metrics-port", type=int, metavar="N", help="Prometheus /metrics port")
    serve.add_argument("--review-port", type=int, metavar="N",
                       help="HTTP port of the review page (recent results, rejected instances)")
    serve.add_argument("--review-bind", metavar="ADDRESS",
                       help="address of the review page (default: 127.0.0.1)")
    serve.add_argument("--study-timeout", type=float, metavar="S",
                       help="seconds without a new instance before a study is processed; "
                            "0 processes each instance (default: 30)")
    serve.add_argument("--allowed-ae-titles", metavar="AET,...", help="calling AE titles allowed")
    serve.add_argument("--allowed-hosts", metavar="IP,...", help="peer addresses allowed")
    serve.add_argument("--min-free-bytes", type=int, metavar="N",
                       help="free space the storage keeps; below it C-STORE is refused (default: 512 MiB)")
    serve.add_argument("--tls-certificate", type=Path, metavar="PEM")
    serve.add_argument("--tls-key", type=Path, metavar="PEM")
    serve.add_argument("--tls-ca", type=Path, metavar="PEM", help="require client certificates from this CA")
    # reliability and security options (issue 13)
    serve.add_argument("--metrics-bind", metavar="ADDRESS",
                       help="address of the metrics endpoint (default: 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--max-associations", type=int, metavar="N",
                       help="simultaneous associations (default: 16)")
    serve.add_argument("--acse-timeout", type=float, metavar="S",
                       help="association negotiation (default: 30)")
    serve.add_argument("--dimse-timeout", type=float, metavar="S", help="DIMSE messages (default: 60)")
    serve.add_argument("--network-timeout", type=float, metavar="S",
                       help="silence before an association is aborted (default: 60)")
    serve.add_argument("--forward-tls", action="store_true", default=None, help="forward over TLS")
    serve.add_argument("--forward-tls-ca", type=Path, metavar="PEM",
                       help="CAs that sign the destinations' certificates (default: the system's)")
    serve.add_argument("--forward-tls-certificate", type=Path, metavar="PEM", help="our client certificate")
    serve.add_argument("--forward-tls-key", type=Path, metavar="PEM")
    serve.add_argument("--retention-days", type=float, metavar="D",
                       help="delete finished instances (processed/, rejected/) older than D days")
    serve.add_argument("--retention-bytes", type=int, metavar="N",
                       help="delete the oldest finished instances while processed/ and rejected/ hold more")
    serve.add_argument("--model", type=Path, help="MONAI bundle folder (default: HOLOSCAN_MODEL_PATH when it "
                       "holds one, else the shipped model)")
    serve.add_argument("--device", help="auto, cpu or cuda (default: auto)")
    serve.add_argument("--saliency", choices=SALIENCY_METHODS, help="default: gradcam")
    serve.add_argument("--modalities", help="comma-separated modalities to accept (default: CR,DX,OT)")
    serve.add_argument("--summary-model", type=Path, metavar="PATH.gguf",
                       help="a GGUF language model phrases the summary (default: the template)")
    serve.add_argument("--count-devices", action="store_true", default=None,
                       help="medical devices lower the default verdict too "
                              "(default: removable objects only)")
    serve.add_argument("--reject-kos", action="store_true", default=None, help=REJECT_KOS_HELP)
    _add_acquisition_options(serve)

    health = commands.add_parser("health", help="C-ECHO a node; exit 0 when it answers (health checks)")
    health.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    health.add_argument("--port", type=int, default=11112, help="default: %(default)s")
    health.add_argument("--ae-title", default="XIQA", help="called AE title (default: %(default)s)")
    health.add_argument("--calling-ae-title", default="XIQA-HEALTH", help="default: %(default)s")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default: %(default)s)")
    health.add_argument("--tls", action="store_true",
                        help="speak TLS; the node's certificate is not checked (a liveness check)")
    health.add_argument("--tls-certificate", type=Path, metavar="PEM",
                        help="client certificate, for a node that requires one (implies --tls)")
    health.add_argument("--tls-key", type=Path, metavar="PEM", help="key of --tls-certificate")

    commands.add_parser("train", add_help=False,
                        help="K-fold training to MONAI bundles (xiqa train --help for its options)")

    fixtures = commands.add_parser("fixtures",
                                   help="write synthetic chest phantoms (DICOM, masks, Object-CXR)")
    fixtures.add_argument("--output", type=Path, required=True, metavar="DIR")
    fixtures.add_argument("--count", type=int, default=16, help="default: %(default)s")
    fixtures.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    fixtures.add_argument("--min-size", type=int, default=480,
                          help="smallest side in pixels (default: %(default)s)")
    fixtures.add_argument("--max-size", type=int, default=1024,
                          help="largest side in pixels (default: %(default)s)")
    return parser


#: what each acquisition setting (``acquisition.config.SITE_KEYS``) holds back, for its flag's help
_ACQUISITION_HELP = {
    "acquisition_verdict_effect": ("report|poor", "how failed acquisition checks combine with the "
                                   "foreign-object verdict: report (listed) or poor (overall verdict Poor)"),
    "deviation_index_band": ("LOW,HIGH", "IEC 62494-1 Deviation Index range the exposure check accepts; "
                             "a negative LOW needs the = form, --deviation-index-band=-2,2"),
    "cut_off_margin": ("F", "a lung landmark closer than this to the exposed field's edge is cut off "
                       "(fraction of the side)"),
    "max_mediastinum_offset": ("F", "rotation fails beyond this mediastinum offset "
                               "(fraction of the half width)"),
    "min_lung_height_ratio": ("F", "inspiration fails below this lung height / thorax width"),
    "max_clipped_lung": ("F", "exposure fails above this clipped share of the lung fields"),
    "max_field_ratio": ("F", "collimation fails above this exposed field / lung fields area ratio"),
}


def _add_acquisition_options(parser: argparse.ArgumentParser) -> None:
    """The acquisition checks' site settings as flags, checked as serve's config file is (``site_config``)."""
    from xiqa.operators.acquisition.config import SITE_KEYS, AcquisitionConfig

    defaults = AcquisitionConfig()
    group = parser.add_argument_group("acquisition checks (README \"Acquisition checks\")")
    for key, name in SITE_KEYS.items():
        metavar, text = _ACQUISITION_HELP[key]
        default = getattr(defaults, name)
        shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else f"{default}"
        group.add_argument(f"--{key.replace('_', '-')}", metavar=metavar, help=f"{text} (default: {shown})")


def _prepare_runtime(verbose: bool) -> None:
    """Quiet Holoscan's start-up chatter and give it the stack it asks for, before it is imported."""
    import os
    import resource
    import warnings

    os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "DEBUG" if verbose else "ERROR")
    wanted = 32 * 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_STACK, (wanted if hard == resource.RLIM_INFINITY
                                                   else min(wanted, hard), hard))
    warnings.filterwarnings("ignore", message="Current stack size", category=RuntimeWarning)


def _configure_logging(verbose: bool) -> None:
    import warnings

    from pynetdicom import _config

    # identifiers in DIMSE requests and responses may carry patient data
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # pydicom logs each of its warnings as well: the warning copy would add an indented source line,
    # and its decoder errors come with tracebacks; the loader gives the reason in one line of its own
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
    if not verbose:
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def run_fixtures(args: argparse.Namespace) -> int:
    from xiqa.dicom_fixtures.generate import write_fixture_set

    records = write_fixture_set(args.output, args.count, args.seed, (args.min_size, args.max_size))
    print(f"wrote {len(records)} phantoms to {args.output}")
    return EXIT_OK


DEMO_SEED, DEMO_COUNT = 2026, 4


def run_demo(args: argparse.Namespace) -> int:
    """The bundled default: real plates shipped with the package and a deterministic synthetic
    study, through the whole graph."""
    from xiqa.demo import read_demo_manifest, write_demo_plates
    from xiqa.dicom_fixtures.generate import write_fixture_set

    plates = write_demo_plates(args.output / "input" / "real")
    write_fixture_set(args.output / "input", DEMO_COUNT, DEMO_SEED, (512, 1024))
    # parsed like a typed command, so the demo gets exactly analyze's defaults; the real plates
    # first: they are what a new user should see
    analyze = build_parser().parse_args(["analyze", *(str(plate.dicom_path) for plate in plates),
                                         str(args.output / "input" / "dicom"),
                                         "--output", str(args.output / "output"),
                                         "--saliency", args.saliency])
    status = run_analyze(analyze, labels={plate.dicom_path: plate.label for plate in plates})
    print(f"outputs under {args.output / 'output'} (one folder per SOP Instance UID)")
    print(f"real plates: {read_demo_manifest()['attribution']}")
    return status


def acquisition_words(case) -> str:
    """The failed acquisition checks and, when they change it, the overall verdict, for the result line."""
    from xiqa.operators.scoring import overall_verdict

    acquisition = case.acquisition
    if acquisition is None or not acquisition.failed:
        return ""
    words = f" acquisition failed {','.join(check.check for check in acquisition.failed)}"
    overall = overall_verdict(case.quality, acquisition)
    return words + (f" overall {overall.value}" if overall is not case.quality.default_verdict else "")


def run_analyze(args: argparse.Namespace, labels: dict[Path, str] | None = None) -> int:
    """Analyse ``args.inputs``; an input in ``labels`` is printed by its label, with its report.png."""
    labels = labels or {}
    from tqdm import tqdm
    from xiqa.app import build_settings, run_graph
    from xiqa.operators.acquisition.config import SITE_KEYS, site_config
    from xiqa.operators.loader import LoaderConfig, expand_inputs

    try:
        acquisition = site_config({key: getattr(args, key) for key in SITE_KEYS})
    except ValueError as error:
        print(f"xiqa analyze: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    missing = [path for path in args.inputs if not path.exists()]
    paths = [path for path in expand_inputs(args.inputs) if path.exists()]
    for path in missing:
        print(f"rejected {path}: no such file or folder", file=sys.stderr)
    loader = LoaderConfig(allowed_modalities=frozenset(m.strip().upper() for m in args.modalities.split(",")),
                          refuse_repeated_uids=True)
    settings = build_settings(paths, args.output, model=args.model, device=args.device,
                              saliency=args.saliency, loader=loader, summary_model=args.summary_model,
                              count_devices=args.count_devices, acquisition=acquisition,
                              reject_kos=args.reject_kos)
    # a bar (and its carriage returns) only on a terminal: log lines must start at column 0
    progress = tqdm(total=len(paths), unit="image", file=sys.stderr,
                    disable=args.no_progress or len(paths) < 2 or not sys.stderr.isatty())

    outcomes = {"failed": 0, "not_chest": 0}

    def report(case) -> None:
        progress.update(1)
        name = labels.get(case.path, case.path)
        outcomes["failed"] += not case.ok
        outcomes["not_chest"] += case.ok and not case.frontal_chest
        if case.rejected:
            progress.write(f"rejected {name}: {case.error}", file=sys.stderr)
        elif not case.ok:
            progress.write(f"failed {name}: {case.error}", file=sys.stderr)
        elif not case.frontal_chest:
            progress.write(f"not scored {name}: {case.gate.reason}", file=sys.stderr)
        else:
            quality = case.quality
            # a labelled input is not named by its path, so say where its picture is
            picture = f", {case.outputs['report_png']}" if case.path in labels else ""
            progress.write(f"{name}: Q_img {quality.q_img:.3f} Q_filtered {quality.q_filtered:.3f} "
                           f"verdict {quality.default_verdict.value} ({quality.verdict_basis}) "
                           f"objects {len(quality.objects)} removable {len(quality.removable_objects)} "
                           f"devices {len(quality.devices)}{acquisition_words(case)}{picture}",
                           file=sys.stdout)

    started = time.perf_counter()
    args.output.mkdir(parents=True, exist_ok=True)
    run_graph(settings, on_case=report, keep_cases=False)  # each case is done with once reported
    progress.close()
    failed, not_chest = len(missing) + outcomes["failed"], outcomes["not_chest"]
    logger.info("%d inputs, %d failed, %d not frontal chest, %.1f s", len(paths), failed, not_chest,
                time.perf_counter() - started)
    return EXIT_REJECTED if failed else EXIT_NOT_CHEST if not_chest else EXIT_OK


SERVE_KEYS = ("ae_title", "port", "bind", "storage", "output", "forward", "metrics_port", "study_timeout",
              "allowed_ae_titles", "allowed_hosts", "min_free_bytes", "tls_certificate", "tls_key", "tls_ca",
              "model", "device", "saliency", "modalities",
              "metrics_bind", "max_associations", "acse_timeout", "dimse_timeout", "network_timeout",
              "forward_tls", "forward_tls_ca", "forward_tls_certificate", "forward_tls_key", "retention_days",
              "retention_bytes", "review_port", "review_bind", "summary_model", "count_devices", "reject_kos")


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    """The ServeSettings of parsed ``serve`` arguments: the --config file, then the flags over it.

    Raises ValueError naming the file (or "command line") and the bad key or value.
    """
    from xiqa.operators.acquisition.config import SITE_KEYS
    from xiqa.service.settings import read_config, settings_from_mapping

    values = read_config(args.config) if args.config else {}
    values.update({key: getattr(args, key) for key in (*SERVE_KEYS, *SITE_KEYS)
                   if getattr(args, key) is not None})
    return settings_from_mapping(values, str(args.config or "command line"))


def run_serve(args: argparse.Namespace) -> int:
    try:
        settings = serve_settings(args)
    except ValueError as error:
        print(f"xiqa serve: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    from xiqa.service.node import Node
    from xiqa.service.spool import StorageInUse

    logging.getLogger("xiqa").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        node = Node(settings)
    except StorageInUse as error:
        print(f"xiqa serve: error: {error}", file=sys.stderr)
        return EXIT_REJECTED
    return node.run()


def _health_tls(args: argparse.Namespace):
    """TLS arguments for ``AE.associate`` (None for plain DICOM): encrypted, the node not verified."""
    import ssl

    if not (args.tls or args.tls_certificate):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if args.tls_certificate:
        context.load_cert_chain(str(args.tls_certificate), str(args.tls_key) if args.tls_key else None)
    return context, args.host


def run_health(args: argparse.Namespace) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=args.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.add_requested_context(Verification)
    try:
        tls_args = _health_tls(args)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        print(f"xiqa health: error: cannot use the TLS client certificate: {error}", file=sys.stderr)
        return EXIT_USAGE
    association = ae.associate(args.host, args.port, ae_title=args.ae_title, tls_args=tls_args)
    if not association.is_established:
        print(f"unhealthy: no association with {args.ae_title}@{args.host}:{args.port}", file=sys.stderr)
        return EXIT_REJECTED
    status = association.send_c_echo()
    association.release()
    if status is None or status.get("Status") != 0:
        print(f"unhealthy: C-ECHO to {args.ae_title}@{args.host}:{args.port} failed", file=sys.stderr)
        return EXIT_REJECTED
    print(f"healthy: {args.ae_title}@{args.host}:{args.port} answered C-ECHO")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["train"]:
        from xiqa.training.cli import main as train_main

        return train_main(arguments[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exit_:
        return EXIT_USAGE if exit_.code else EXIT_OK
    _prepare_runtime(args.verbose)
    _configure_logging(args.verbose)
    handlers = {"analyze": run_analyze, "demo": run_demo, "fixtures": run_fixtures, "serve": run_serve,
                "health": run_health}
    return handlers[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
