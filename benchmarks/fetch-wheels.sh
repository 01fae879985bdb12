#!/usr/bin/env bash
# Download the wheels that check.sh installs on a CUDA machine without network (CPython 3.12, x86-64 Linux):
# the project's pins that machine lacks or has in another version.
#
#   bash benchmarks/fetch-wheels.sh DEST   (the project's copy of ../shared/gpu/fetch-wheels.sh)
#
# DEST/*.whl              trl, transformers, peft, bitsandbytes, datasets 5.2.0 and the dill and multiprocess
#                         that datasets 5.2.0's METADATA accepts (checked below after the download)
# DEST/alt/*.whl          datasets 4.8.5: the fallback for a pyarrow older than 24 (5.2.0 needs >= 24, 4.8.5 >= 21)
# DEST/alt/requests/*.whl requests and its dependencies: datasets 4.8.5 imports requests, 5.2.0 does not
#
# A wheel already in DEST is reused without asking the index. Prints every file and the total; exits non-zero if a
# download fails, the set is inconsistent, DEST holds a stray wheel (check.sh installs DEST/*.whl wholesale), or the
# wheels total more than FETCH_LIMIT_MIB (default 60) MiB.
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
DEST=$1
LIMIT_MIB=${FETCH_LIMIT_MIB:-60}

MAIN=(trl==1.16.0 transformers==5.23.0 peft==0.21.2 bitsandbytes==0.50.2 datasets==5.2.0
      dill==0.4.1 multiprocess==0.70.19)  # dill and multiprocess: the newest that datasets 5.2.0 and 4.8.5 accept
ALT=(datasets==4.8.5)
ALT_REQUESTS=(requests==2.34.2 urllib3==2.7.0 idna==3.13 certifi==2026.5.20 charset-normalizer==3.4.7)

TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

# A wheel's file name starts with the normalised project name and the version: charset-normalizer -> charset_normalizer
wheel_prefix() {
    local name=${1%%==*} version=${1##*==}
    name=$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]' | sed -E 's/[-_.]+/_/g')
    printf '%s-%s-' "$name" "$version"
}

fetch() {  # fetch DIR PIN...
    local dir=$1 pin prefix have
    shift
    mkdir -p "$dir"
    for pin in "$@"; do
        prefix=$(wheel_prefix "$pin")
        have=$(find "$dir" -maxdepth 1 -type f -iname "${prefix}*.whl" | head -n 1)
        if [ -n "$have" ]; then
            echo "have   $pin: ${have##*/}"
            continue
        fi
        echo "fetch  $pin"
        python3 -m pip download --no-deps "${TARGET[@]}" --progress-bar off -q -d "$dir" "$pin"
        have=$(find "$dir" -maxdepth 1 -type f -iname "${prefix}*.whl" | head -n 1)
        if [ -z "$have" ]; then
            echo "error: pip downloaded no ${prefix}*.whl for $pin into $dir" >&2
            exit 1
        fi
    done
}

fetch "$DEST" "${MAIN[@]}"
fetch "$DEST/alt" "${ALT[@]}"
fetch "$DEST/alt/requests" "${ALT_REQUESTS[@]}"

# Stray wheels (an older download, another version) would be installed too, or clash with the pinned ones.
stray=0
for dir_and_pins in "$DEST:${MAIN[*]}" "$DEST/alt:${ALT[*]}" "$DEST/alt/requests:${ALT_REQUESTS[*]}"; do
    dir=${dir_and_pins%%:*}
    read -r -a pins <<<"${dir_and_pins#*:}"
    for file in "$dir"/*.whl; do
        [ -e "$file" ] || continue
        base=$(printf '%s' "${file##*/}" | tr '[:upper:]' '[:lower:]')
        known=0
        for pin in "${pins[@]}"; do
            case $base in "$(wheel_prefix "$pin")"*) known=1 ;; esac
        done
        if [ $known -eq 0 ]; then
            echo "error: stray wheel $file (not one of: ${pins[*]}); remove it" >&2
            stray=1
        fi
    done
done
[ $stray -eq 0 ] || exit 1

# The set must agree with itself: every requirement between these wheels (for CPython 3.12 on Linux) is met, for the
# main set and for the fallback set (4.8.5 in place of 5.2.0, plus the requests stack). What the CUDA machine must
# provide itself is listed for reference.
python3 - "$DEST" <<'PY'
import sys, zipfile
from pathlib import Path
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

dest = Path(sys.argv[1])
env = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "os_name": "posix", "extra": ""}

def metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = z.read(name).decode("utf-8", "replace").split("\n\n", 1)[0]
    fields = [line.split(": ", 1) for line in text.splitlines() if ": " in line]
    project = next(v for k, v in fields if k == "Name")
    version = next(v for k, v in fields if k == "Version")
    requires = [Requirement(v) for k, v in fields if k == "Requires-Dist"]
    requires = [r for r in requires if r.marker is None or r.marker.evaluate(env)]
    return canonicalize_name(project), Version(version), requires

main = [metadata(w) for w in sorted(dest.glob("*.whl"))]
alt = [metadata(w) for w in sorted(dest.glob("alt/*.whl"))] + [metadata(w) for w in sorted(dest.glob("alt/requests/*.whl"))]
fallback = [m for m in main if m[0] != "datasets"] + alt
ok = True
external = {}
for label, wheels in (("main set", main), ("fallback set", fallback)):
    have = {name: version for name, version, _ in wheels}
    for name, version, requires in wheels:
        for req in requires:
            other = canonicalize_name(req.name)
            if other in have:
                if not req.specifier.contains(have[other], prereleases=True):
                    print(f"error ({label}): {name} {version} requires {req}, the set has {other} {have[other]}")
                    ok = False
            else:
                external.setdefault(other, set()).add(f"{req.specifier or 'any'} ({name})")
print("the CUDA machine must provide:")
for other in sorted(external):
    print(f"  {other}: " + "; ".join(sorted(external[other])))
sys.exit(0 if ok else 1)
PY

# Sizes: everything that travels, in MiB.
total=0
while IFS= read -r -d '' file; do
    size=$(stat -c %s "$file")
    total=$((total + size))
    printf '%8.2f MiB  %s\n' "$(awk -v s="$size" 'BEGIN { print s / 1048576 }')" "${file#"$DEST"/}"
done < <(find "$DEST" -type f -name '*.whl' -print0 | sort -z)
total_mib=$(awk -v s="$total" 'BEGIN { printf "%.2f", s / 1048576 }')
echo "total: $total_mib MiB in $DEST (limit $LIMIT_MIB MiB)"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "error: the wheels total $total_mib MiB, more than $LIMIT_MIB MiB" >&2
    exit 1
fi
