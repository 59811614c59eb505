"""What a site configures for ``xiqa serve``: flags or a TOML file with the same keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

#: DICOM AE titles: 1-16 characters of the default repertoire, no backslash, not all spaces.
_AE_TITLE = re.compile(r"[ -\[\]-~]{1,16}")
_DESTINATION = re.compile(r"(?P<ae>[^@]+)@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d+)")


def check_ae_title(value: str, what: str) -> str:
    """``value`` stripped, or ValueError naming ``what`` and why it is not a valid AE title."""
    title = value.strip()
    if not _AE_TITLE.fullmatch(value) or not title:
        raise ValueError(f"{what} must be 1-16 printable ASCII characters without a backslash, "
                         f"got {value!r}")
    return title


def check_port(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ValueError(f"{what} must be a TCP port 0-65535, got {value!r}")
    return value


@dataclass(frozen=True)
class Destination:
    """A C-STORE peer that receives the outputs: ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title, "destination AE title"))
        if not self.host:
            raise ValueError("destination host must not be empty")
        check_port(self.port, "destination port")

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = _DESTINATION.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"destination must look like AET@HOST:PORT, got {text!r}")
        return cls(match["ae"], match["host"].strip("[]"), int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class ServeSettings:
    """The node's configuration; every field is also a key of the TOML config file."""

    storage: Path
    output: Path
    ae_title: str = "XIQA"
    port: int = 11112
    bind: str = "0.0.0.0"
    #: calling AE titles allowed to associate; empty allows any
    allowed_ae_titles: tuple[str, ...] = ()
    #: peer IP addresses allowed to associate; empty allows any
    allowed_hosts: tuple[str, ...] = ()
    forward: tuple[Destination, ...] = ()
    #: seconds without a new instance after which a study is processed; 0 processes per instance
    study_timeout: float = 30.0
    #: Prometheus HTTP port; None for no metrics endpoint
    metrics_port: int | None = None
    #: address the metrics endpoint listens on (0.0.0.0 to serve other hosts)
    metrics_bind: str = "127.0.0.1"
    #: review page HTTP port (service/review.py); None for no review page
    review_port: int | None = None
    #: address the review page listens on; it shows UIDs and verdicts, so loopback by default
    review_bind: str = "127.0.0.1"
    #: free bytes the storage must keep; below it C-STORE answers "out of resources"
    min_free_bytes: int = 512 * 1024 * 1024
    forward_retries: int = 5
    forward_retry_delay: float = 10.0
    max_pdu_size: int = 131072
    #: simultaneous associations; one more is rejected (transient, local limit exceeded)
    max_associations: int = 16
    #: seconds to wait for association negotiation (and, from connect, for the A-ASSOCIATE request)
    acse_timeout: float = 30.0
    #: seconds to wait for a DIMSE message once one is expected
    dimse_timeout: float = 60.0
    #: seconds of silence on an association before it is aborted
    network_timeout: float = 60.0
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    #: CA bundle; when set, callers must present a certificate signed by it
    tls_ca: Path | None = None
    #: forward over TLS; the destination's certificate is checked against ``forward_tls_ca``
    #: (default: the system's CAs) and its host name
    forward_tls: bool = False
    forward_tls_ca: Path | None = None
    #: our client certificate and key, for destinations that require one
    forward_tls_certificate: Path | None = None
    forward_tls_key: Path | None = None
    #: finished instances in processed/ and rejected/ are deleted when older than this many days ...
    retention_days: float | None = None
    #: ... or, oldest first, while those folders hold more than this many bytes; None keeps everything
    retention_bytes: int | None = None
    model: Path | None = None
    #: a GGUF that phrases the summary; None: the template
    summary_model: Path | None = None
    device: str = "auto"
    saliency: str = "gradcam"
    modalities: tuple[str, ...] = ("CR", "DX", "OT")
    #: count medical devices (tubes, lines, pacemakers) in the default score and verdict too;
    #: by default the verdict follows the removable objects only and devices are listed
    count_devices: bool = False
    #: a Poor image also gets a Key Object Selection "Rejected for Quality Reasons", forwarded with
    #: the other outputs (for reject analysis; off: a PACS with IHE IOCM may hide the image)
    reject_kos: bool = False
    #: the acquisition checks' site settings (``acquisition.config.SITE_KEYS``); None keeps
    #: ``AcquisitionConfig``'s default, argued in its docstring.  How failed checks combine with the
    #: foreign-object verdict: "report" (default: listed, verdict unchanged) or "poor" (any failed
    #: check makes the overall verdict Poor)
    acquisition_verdict_effect: str | None = None
    #: IEC 62494-1 Deviation Index range the exposure check accepts (default -3, 3)
    deviation_index_band: tuple[float, float] | None = None
    cut_off_margin: float | None = None
    max_mediastinum_offset: float | None = None
    min_lung_height_ratio: float | None = None
    max_clipped_lung: float | None = None
    max_field_ratio: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title, "AE title"))
        object.__setattr__(self, "allowed_ae_titles", tuple(
            check_ae_title(title, "allowed calling AE title") for title in self.allowed_ae_titles))
        check_port(self.port, "port")
        for name in ("metrics_port", "review_port"):
            if getattr(self, name) is not None:
                check_port(getattr(self, name), name.replace("_", " "))
        if self.study_timeout < 0:
            raise ValueError(f"study timeout must be >= 0 seconds, got {self.study_timeout}")
        if self.min_free_bytes < 0:
            raise ValueError(f"min free bytes must be >= 0, got {self.min_free_bytes}")
        if self.forward_retries < 0 or self.forward_retry_delay < 0:
            raise ValueError("forward retries and retry delay must be >= 0")
        if self.max_associations < 1:
            raise ValueError(f"max associations must be >= 1, got {self.max_associations}")
        for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', ' ')} must be > 0 seconds, got {getattr(self, name)}")
        for name in ("retention_days", "retention_bytes"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")
        if (self.forward_tls_certificate is None) != (self.forward_tls_key is None):
            raise ValueError("forwarding TLS needs both a client certificate and a key")
        if not self.forward_tls and (self.forward_tls_ca or self.forward_tls_certificate):
            raise ValueError("forward TLS files are set but forward-tls is off")
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        if self.tls_ca is not None and self.tls_certificate is None:
            raise ValueError("a TLS CA bundle needs a certificate and key as well")
        for name in ("count_devices", "reject_kos"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name.replace('_', ' ')} must be true or false, got {value!r}")
        from xiqa.operators.acquisition.config import SITE_KEYS

        acquisition = self.acquisition_config()  # raises on bad values
        for key, name in SITE_KEYS.items():  # as the checks read them: "-2,2" becomes (-2.0, 2.0)
            if getattr(self, key) is not None:
                object.__setattr__(self, key, getattr(acquisition, name))
        if Path(self.storage).resolve() == Path(self.output).resolve():
            raise ValueError("storage and output must be different folders")

    @property
    def per_instance(self) -> bool:
        return self.study_timeout == 0

    def acquisition_config(self):
        """The acquisition checks' ``AcquisitionConfig`` from these settings (ValueError on bad values)."""
        from xiqa.operators.acquisition.config import SITE_KEYS, site_config

        return site_config({key: getattr(self, key) for key in SITE_KEYS})


_PATHS = {"storage", "output", "tls_certificate", "tls_key", "tls_ca", "forward_tls_ca",
          "forward_tls_certificate", "forward_tls_key", "model", "summary_model"}
_TUPLES = {"allowed_ae_titles", "allowed_hosts", "modalities"}


def settings_from_mapping(values: dict[str, Any], origin: str) -> ServeSettings:
    """ServeSettings from config-file style keys (``-`` or ``_``); errors name ``origin``."""
    known = {f.name for f in fields(ServeSettings)}
    converted: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key not in known:
            raise ValueError(f"{origin}: unknown key {raw_key!r}")
        if value is None:
            continue
        if key in _PATHS:
            value = Path(value)
        elif key in _TUPLES:
            value = tuple(value.split(",") if isinstance(value, str) else value)
        elif key == "forward":
            value = tuple(Destination.parse(item) if isinstance(item, str) else item
                          for item in ([value] if isinstance(value, str) else value))
        converted[key] = value
    for required in ("storage", "output"):
        if required not in converted:
            raise ValueError(f"{origin}: {required} is required")
    try:
        return ServeSettings(**converted)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{origin}: {error}") from None


def read_config(path: Path) -> dict[str, Any]:
    """The keys of a TOML config file (top level, or its ``[serve]`` table)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"{path}: cannot read config: {error}") from None
    return data.get("serve", data)
