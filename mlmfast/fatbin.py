"""The GPU architectures a shared library really carries, read from its CUDA fat binary.

nvcc puts the device code of a library in its ELF section ``.nv_fatbin``: one or more fat
binaries, each a 16-byte header (magic 0xBA55ED50, version, header size, size of the entries)
followed by entries, each with its own header: kind (1 = PTX, 2 = ELF cubin), header size,
payload size and, at byte 28, the architecture (90 for sm_90). Reading it needs no CUDA toolkit
(cuobjdump --list-elf says the same where there is one) and no GPU, so ``mlmfast info`` can tell
on any node which GPUs the installed wheel runs on natively.
"""

from __future__ import annotations

import struct

__all__ = ["cuda_archs", "fatbin_archs", "read_section"]

FATBIN_MAGIC = 0xBA55ED50
_KINDS = {1: "compute", 2: "sm"}  # PTX (JIT-compiled for newer GPUs), cubin (native code)


def read_section(path: str, name: str) -> bytes | None:
    """The bytes of section `name` of the 64-bit little-endian ELF file `path`, None when it
    has no such section."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"path: expected a 64-bit little-endian ELF file, got {path!r}")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name_off, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize
        )
        return name_off, offset, size

    _, strtab, _ = header(shstrndx)
    wanted = name.encode()
    for i in range(shnum):
        name_off, offset, size = header(i)
        start = strtab + name_off
        if data[start : data.index(b"\0", start)] == wanted:
            return data[offset : offset + size]
    return None


def fatbin_archs(blob: bytes) -> list[str]:
    """The entries of the fat binaries in `blob` (a ``.nv_fatbin`` section) as ``sm_90``
    (native code) and ``compute_100`` (PTX), sorted by architecture, duplicates removed."""
    found: set[tuple[int, str]] = set()
    pos = 0
    while pos + 16 <= len(blob):
        magic, _version, header_size, size = struct.unpack_from("<IHHQ", blob, pos)
        if magic != FATBIN_MAGIC:
            if blob[pos : pos + 8] == b"\0" * 8:  # alignment padding between fat binaries
                pos += 8
                continue
            raise ValueError(f"blob: no fat binary header at byte {pos} (magic {magic:#x})")
        entry, end = pos + header_size, pos + header_size + size
        while entry < end:
            kind, _v, entry_header, payload = struct.unpack_from("<HHIQ", blob, entry)
            (arch,) = struct.unpack_from("<I", blob, entry + 28)
            if kind not in _KINDS or entry_header < 32:
                raise ValueError(f"blob: unknown fat binary entry (kind {kind}) at byte {entry}")
            found.add((arch, _KINDS[kind]))
            entry += entry_header + payload
        pos = end
    return [f"{kind}_{arch}" for arch, kind in sorted(found, key=lambda a: (a[0], a[1] != "sm"))]


def cuda_archs(path: str) -> list[str]:
    """The architectures of the device code in the shared library `path` (``[]`` for a library
    without CUDA code, such as a CPU-only build of mlmfast._C)."""
    blob = read_section(path, ".nv_fatbin")
    return fatbin_archs(blob) if blob else []
