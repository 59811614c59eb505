"""Malformed DICOM files made by mutating good ones, each kind of damage a node meets in the field.

A mutation works on the bytes of a file (so it can make what no DICOM library
would write) and knows the layout of the explicit VR little endian dataset it
damages.  Every mutant is reproducible from ``(kind, seed)``.  A mutant may
turn out harmless (a bit flip in a description); what matters is that the
node either processes it or rejects it with one line, and never crashes,
hangs or stops the good files beside it.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: explicit VR little endian: these VRs have a 2-byte reserved field and a 4-byte length
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_VALID_VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
              b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UI", b"UL", b"UN", b"US", b"UT"]
PIXEL_DATA = (0x7FE0, 0x0010)
ROWS, COLUMNS = (0x0028, 0x0010), (0x0028, 0x0011)
TRANSFER_SYNTAX = (0x0002, 0x0010)
UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class Element:
    """Where one top-level element sits in the file."""

    group: int
    element: int
    vr: bytes
    offset: int  # of the tag
    length_offset: int
    length_size: int  # 2 or 4
    value_offset: int
    length: int

    @property
    def tag(self) -> tuple[int, int]:
        return self.group, self.element


def parse_elements(data: bytes) -> list[Element]:
    """Top-level elements of a Part 10 file whose meta and dataset are explicit VR little endian.

    Elements of undefined length (encapsulated pixel data, sequences) end the
    walk after they are listed, unless they are sequences (skipped to their
    delimiter).
    """
    if data[128:132] != b"DICM":
        raise ValueError("not a Part 10 file")
    elements, offset = [], 132
    while offset + 8 <= len(data):
        group, number = struct.unpack_from("<HH", data, offset)
        vr = data[offset + 4:offset + 6]
        if vr in _LONG_VRS:
            length_offset, length_size = offset + 8, 4
            (length,) = struct.unpack_from("<I", data, length_offset)
        else:
            length_offset, length_size = offset + 6, 2
            (length,) = struct.unpack_from("<H", data, length_offset)
        value_offset = length_offset + length_size
        elements.append(Element(group, number, vr, offset, length_offset, length_size, value_offset, length))
        if length == UNDEFINED:
            if vr != b"SQ":
                break
            end = data.find(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", value_offset)
            if end < 0:
                break
            offset = end + 8
        else:
            offset = value_offset + length
    return elements


def _name(element: Element) -> str:
    return f"({element.group:04X},{element.element:04X})"


def _find(elements: list[Element], tag: tuple[int, int]) -> Element | None:
    return next((e for e in elements if e.tag == tag), None)


def _dataset_elements(elements: list[Element]) -> list[Element]:
    return [e for e in elements if e.group != 0x0002 and e.tag != PIXEL_DATA]


def _header_end(data: bytes, elements: list[Element]) -> int:
    pixels = _find(elements, PIXEL_DATA)
    return pixels.offset if pixels is not None else len(data)


def _set_length(data: bytearray, element: Element, length: int) -> None:
    if element.length_size == 2:
        struct.pack_into("<H", data, element.length_offset, length & 0xFFFF)
    else:
        struct.pack_into("<I", data, element.length_offset, length & 0xFFFFFFFF)


def _replace_value(data: bytes, element: Element, value: bytes) -> bytes:
    """``data`` with ``element``'s value (and its length field) replaced; only for 2-byte lengths."""
    head = bytearray(data[:element.value_offset])
    struct.pack_into("<H", head, element.length_offset, len(value))
    return bytes(head) + value + data[element.value_offset + element.length:]


def truncate(data: bytes, elements: list[Element], rng: random.Random) -> tuple[bytes, str]:
    where = rng.choice(("header", "pixels", "anywhere"))
    end = _header_end(data, elements)
    cut = {"header": lambda: rng.randrange(0, end),
           "pixels": lambda: rng.randrange(end, len(data)),
           "anywhere": lambda: rng.randrange(0, len(data))}[where]()
    return data[:cut], f"truncated at byte {cut} of {len(data)} ({where})"


def bit_flips(data: bytes, elements: list[Element], rng: random.Random) -> tuple[bytes, str]:
    damaged = bytearray(data)
    # mostly in the header, where a flip changes structure; a few in the pixel data (codec streams)
    end = _header_end(data, elements) if rng.random() < 0.8 else len(data)
    count = rng.randint(1, 8)
    for _ in range(count):
        damaged[rng.randrange(132, end)] ^= 1 << rng.randrange(8)
    return bytes(damaged), f"{count} bit flip(s) below byte {end}"


def wrong_vr(data: bytes, elements: list[Element], rng: random.Random) -> tuple[bytes, str]:
    """A VR replaced by another (known or unknown) of the same length-field size, so the walk goes on."""
    element = rng.choice(_dataset_elements(elements))
    if rng.random() < 0.5:
        vr = bytes(rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(2))
    else:
        vr = rng.choice(_VALID_VRS)
    if (vr in _LONG_VRS) != (element.vr in _LONG_VRS):
        vr = rng.choice([v for v in _VALID_VRS if (v in _LONG_VRS) == (element.vr in _LONG_VRS)])
    damaged = bytearray(data)
    damaged[element.offset + 4:element.offset + 6] = vr
    return bytes(damaged), f"VR of {_name(element)} {element.vr.decode()} -> {vr!r}"


def wrong_length(data: bytes, elements: list[Element], rng: random.Random) -> tuple[bytes, str]:
    element = rng.choice(_dataset_elements(elements))
    length = rng.choice((0, 1, element.length + 1, element.length - 1, element.length * 3 + 7,
                         rng.randrange(0, 0x10000), UNDEFINED))
    damaged = bytearray(data)
    _set_length(damaged, element, length)
    return bytes(damaged), f"length of {_name(element)} {element.length} -> {length}"


def bogus_transfer_syntax(data: bytes, elements: list[Element], rng: random.Random) -> tuple[bytes, str]:
    syntax = rng.choice((b"1.2.3.4.5.6.7.8\x00", b"1.2.840.10008.1.2.2\x00",  # big endian on LE bytes
                         b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.1.99", b"", b"not a uid\x00"))
    element = _find(elements, TRANSFER_SYNTAX)
    assert element is not None
    patched = _replace_value(data, element, syntax)
    # the group length (0002,0000) must follow, or the meta swallows the dataset
    group_length = _find(elements, (0x0002, 0x0000))
    if group_length is not None:
        damaged = bytearray(patched)
        (old,) = struct.unpack_from("<I", damaged, group_length.value_offset)
        struct.pack_into("<I", damaged, group_length.value_offset, old + len(syntax) - element.length)
        patched = bytes(damaged)
    return patched, f"transfer syntax {syntax!r}"


def huge_dimensions(data: bytes, elements: list[Element], rng: random.Random) -> tuple[bytes, str]:
    damaged = bytearray(data)
    values = []
    for tag in (ROWS, COLUMNS):
        element = _find(elements, tag)
        assert element is not None and element.vr == b"US"
        value = rng.choice((65535, 65534, 40000, 0))
        struct.pack_into("<H", damaged, element.value_offset, value)
        values.append(value)
    return bytes(damaged), f"Rows x Columns {values[0]} x {values[1]}"


def pixel_data_length(data: bytes, elements: list[Element], rng: random.Random) -> tuple[bytes, str]:
    pixels = _find(elements, PIXEL_DATA)
    assert pixels is not None and pixels.length != UNDEFINED, "needs native (uncompressed) pixel data"
    change = rng.choice((-pixels.length // 2, -2, 2, pixels.length, 1))
    new_length = pixels.length + change
    value = data[pixels.value_offset:pixels.value_offset + pixels.length]
    value = value[:new_length] if change < 0 else value + bytes(change)
    head = bytearray(data[:pixels.value_offset])
    struct.pack_into("<I", head, pixels.length_offset, new_length)
    return bytes(head) + value + data[pixels.value_offset + pixels.length:], (
        f"pixel data {new_length} bytes, {pixels.length} declared by Rows x Columns x bits")


def _sequence(depth: int) -> bytes:
    """``depth`` nested Request Attributes Sequences of undefined length, one item each."""
    open_sq = struct.pack("<HH", 0x0040, 0x0275) + b"SQ\x00\x00" + struct.pack("<I", UNDEFINED)
    open_item = struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
    close_item = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    close_sq = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (open_sq + open_item) * depth + (close_item + close_sq) * depth


def deep_sequences(data: bytes, elements: list[Element], rng: random.Random) -> tuple[bytes, str]:
    depth = rng.choice((40, 200, 1000, 5000))
    end = _header_end(data, elements)
    return data[:end] + _sequence(depth) + data[end:], f"sequence nested {depth} deep"


def two_gigabyte_length(data: bytes, elements: list[Element], rng: random.Random) -> tuple[bytes, str]:
    length = rng.choice((0x7FFFFFFE, 0x80000000, 0xFFFFFFF0))
    end = _header_end(data, elements)
    where = rng.choice(("pixel data", "private element"))
    if where == "pixel data":
        pixels = _find(elements, PIXEL_DATA)
        assert pixels is not None and pixels.length_size == 4
        damaged = bytearray(data)
        struct.pack_into("<I", damaged, pixels.length_offset, length)
        return bytes(damaged), f"pixel data declares {length} bytes"
    private = struct.pack("<HH", 0x0009, 0x1001) + b"OB\x00\x00" + struct.pack("<I", length)
    return data[:end] + private + data[end:end + 64], f"an OB element declares {length} bytes"


MUTATIONS: dict[str, Callable[[bytes, list[Element], random.Random], tuple[bytes, str]]] = {
    "truncate": truncate,
    "bit_flips": bit_flips,
    "wrong_vr": wrong_vr,
    "wrong_length": wrong_length,
    "bogus_transfer_syntax": bogus_transfer_syntax,
    "huge_dimensions": huge_dimensions,
    "pixel_data_length": pixel_data_length,
    "deep_sequences": deep_sequences,
    "two_gigabyte_length": two_gigabyte_length,
}


@dataclass(frozen=True)
class Mutant:
    path: Path
    kind: str
    seed: int
    what: str


def mutate(data: bytes, kind: str, seed: int) -> tuple[bytes, str]:
    """The mutant ``(kind, seed)`` of the explicit VR little endian file ``data``."""
    return MUTATIONS[kind](data, parse_elements(data), random.Random(f"{kind}-{seed}"))


def with_own_instance_uid(data: bytes, index: int) -> bytes:
    """``data`` with its SOP Instance UID (in the file meta and the dataset) made unique by ``index``:
    the last six digits are replaced, so no length changes."""
    meta_uid = _find(parse_elements(data), (0x0002, 0x0003))
    assert meta_uid is not None
    uid = data[meta_uid.value_offset:meta_uid.value_offset + meta_uid.length].rstrip(b"\x00")
    assert len(uid) > 20 and uid[-6:].isdigit(), uid
    return data.replace(uid, uid[:-6] + str(900_000 + index % 100_000).encode())


#: kinds that make sense on compressed files too (their pixel data is a codec stream)
ANY_SYNTAX = ("truncate", "bit_flips", "wrong_vr", "wrong_length", "bogus_transfer_syntax", "deep_sequences")


def write_corpus(bases: list[Path], folder: Path, count: int, seed: int = 0) -> list[Mutant]:
    """``count`` mutants, the kinds taken in turn, as ``folder/mutant_NNNN_<kind>.dcm``.

    ``bases[0]`` must have native pixel data; the kinds of :data:`ANY_SYNTAX`
    also take the other bases (explicit VR little endian datasets, any pixel encoding) in turn.
    """
    data = [base.read_bytes() for base in bases]
    folder.mkdir(parents=True, exist_ok=True)
    kinds = list(MUTATIONS)
    mutants = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        turn = index // len(kinds)
        base = data[turn % len(data)] if kind in ANY_SYNTAX else data[0]
        damaged, what = mutate(with_own_instance_uid(base, index), kind, seed * 100_000 + index)
        path = folder / f"mutant_{index:04d}_{kind}.dcm"
        path.write_bytes(damaged)
        mutants.append(Mutant(path, kind, seed * 100_000 + index, what))
    return mutants
