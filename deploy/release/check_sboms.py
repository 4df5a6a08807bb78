"""Checks a release's SBOMs: each is valid CycloneDX 1.5 (strict schema),
describes its binary, and lists every crate cargo-auditable embedded in that
binary (so the SBOM and the binary agree on what was built in).

Usage: check_sboms.py OUT   (OUT holds bin/<name> and sbom/<name>.cdx.json)
Runs in the release venv (cyclonedx-python-lib[json-validation]).
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import zlib

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator


def embedded_crates(binary: pathlib.Path) -> set[tuple[str, str]]:
    """The (name, version) of every runtime crate in the binary's .dep-v0."""
    with tempfile.TemporaryDirectory() as tmp:
        section = pathlib.Path(tmp) / "dep-v0"
        subprocess.run(
            ["objcopy", "--dump-section", f".dep-v0={section}", str(binary), str(pathlib.Path(tmp) / "copy")],
            check=True,
            capture_output=True,
        )
        data = json.loads(zlib.decompress(section.read_bytes()))
    return {
        (p["name"], p["version"])
        for p in data["packages"]
        if p.get("kind", "runtime") == "runtime" and not p.get("root", False)
    }


def main() -> int:
    out = pathlib.Path(sys.argv[1])
    validator = JsonStrictValidator(SchemaVersion.V1_5)
    problems = []
    binaries = sorted((out / "bin").iterdir())
    for binary in binaries:
        sbom_path = out / "sbom" / f"{binary.name}.cdx.json"
        if not sbom_path.exists():
            problems.append(f"{binary.name}: no SBOM at {sbom_path}")
            continue
        text = sbom_path.read_text()
        error = validator.validate_str(text)
        if error is not None:
            problems.append(f"{sbom_path.name}: not valid CycloneDX 1.5: {error}")
            continue
        sbom = json.loads(text)
        listed = {(c.get("name"), c.get("version")) for c in sbom.get("components", [])}
        missing = sorted(embedded_crates(binary) - listed)
        if missing:
            shown = ", ".join(f"{n}@{v}" for n, v in missing[:10])
            problems.append(f"{sbom_path.name}: {len(missing)} crates built into {binary.name} are not listed: {shown}")
        print(f"sbom ok: {sbom_path.name} ({len(listed)} components)")
    if not binaries:
        problems.append(f"no binaries in {out / 'bin'}")
    for problem in problems:
        print(f"sbom check: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
