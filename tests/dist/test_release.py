"""What ``make dist`` leaves in ``dist/`` is what a release publishes: a
manylinux abi3 wheel and the module, both stripped, needing no glibc newer
than 2.17, with checksums that match (``make dist-test``)."""

from __future__ import annotations

import os
import re
import subprocess
import zipfile
from pathlib import Path

from tests.conftest import module_path

WHEEL = Path(os.environ["VTASKS_WHEEL"]).resolve()
DIST = WHEEL.parent
GLIBC = (2, 17)


def elf_facts(lib: Path) -> tuple[str, tuple[int, ...]]:
    """The section table and the newest glibc symbol version a library needs."""
    sections = subprocess.run(["readelf", "-S", "--wide", str(lib)], capture_output=True, text=True,
                              check=True).stdout
    symbols = subprocess.run(["objdump", "-T", str(lib)], capture_output=True, text=True, check=True).stdout
    versions = [tuple(int(n) for n in v.split(".")) for v in re.findall(r"GLIBC_([0-9.]+)", symbols)]
    return sections, max(versions)


def test_the_wheel_is_abi3_manylinux_and_its_extension_stripped(tmp_path: Path) -> None:
    assert re.fullmatch(r"vtasks-[0-9.]+-cp312-abi3-(manylinux\w*\.)*manylinux_2_17_x86_64\.whl", WHEEL.name), WHEEL.name
    with zipfile.ZipFile(WHEEL) as wheel:
        names = wheel.namelist()
        assert not any(name.endswith(".rs") for name in names), "sources in the wheel"
        wheel.extract("vtasks/_native.abi3.so", tmp_path)
    extension = tmp_path / "vtasks" / "_native.abi3.so"
    sections, glibc = elf_facts(extension)
    assert ".debug_info" not in sections and ".symtab" not in sections
    assert glibc <= GLIBC, glibc
    assert extension.stat().st_size < 10 * 1024 * 1024, extension.stat().st_size


def test_the_module_is_stripped_portable_and_checksummed() -> None:
    module = DIST / "libvtasks.so"
    assert module_path() == module, "the end-to-end tests ran against this module"
    sections, glibc = elf_facts(module)
    assert ".debug_info" not in sections and ".symtab" not in sections
    assert glibc <= GLIBC, glibc
    assert module.stat().st_size < 5 * 1024 * 1024, module.stat().st_size
    sums = {name: digest for digest, name in (line.split() for line in (DIST / "SHA256SUMS").read_text().splitlines())}
    assert set(sums) == {WHEEL.name, "libvtasks.so"}
    subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=DIST, check=True)
