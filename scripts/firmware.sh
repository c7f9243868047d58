#!/usr/bin/env bash
# Build the confidential-VM firmware from Debian's edk2 source package
# (docs/cvm-measure.md): OVMF's AmdSev build (SEV-SNP measured direct boot)
# and TDVF (IntelTdx), bit for bit reproducibly.
#   scripts/firmware.sh            outputs in out/firmware/<key>/, key = source + recipe hash
#   scripts/firmware.sh --rebuild  ignore the cache (check a rebuild is bit-identical)
# Prints the output directory last. Needs: build-essential uuid-dev acpica-tools
# (iasl) nasm python3 python3-distutils dpkg-dev.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Pinned source: the package version and its .dsc's sha256 (the .dsc lists the
# sha256 of every tarball, and dpkg-source checks them when unpacking).
EDK2_VERSION=2022.11-6+deb12u2
EDK2_DSC_SHA256=3129d783c9017f738af4453c9f94a2fdfba2ee91cf409c0c3623b31377e76cc6
# A fixed build path of fixed length: GenFw reserves room for each module's
# path in the images it writes, so another path length changes the firmware.
BUILD=/tmp/palisade-edk2-build

rebuild=0
[ "${1:-}" = --rebuild ] && rebuild=1

for t in apt-get dpkg-source make gcc nasm iasl python3; do
	command -v "$t" >/dev/null || { echo "firmware: $t missing (scripts/deps.sh firmware)" >&2; exit 1; }
done

src=out/firmware/src
mkdir -p "$src"
dsc=$src/edk2_${EDK2_VERSION#*:}.dsc
if ! [ -f "$dsc" ] || ! echo "$EDK2_DSC_SHA256  $dsc" | sha256sum -c --quiet 2>/dev/null; then
	# A private apt configuration with a deb-src entry: the machine's own
	# sources stay untouched.
	apt=$root/out/firmware/apt
	mkdir -p "$apt/parts" "$apt/lists/partial" "$apt/cache"
	cat >"$apt/parts/edk2-src.sources" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	O=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/parts"
		-o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache")
	apt-get "${O[@]}" -qq update
	(cd "$src" && apt-get "${O[@]}" -qq source --download-only "edk2=$EDK2_VERSION" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
	echo "$EDK2_DSC_SHA256  $dsc" | sha256sum -c --quiet || { echo "firmware: $dsc is not the pinned source" >&2; exit 1; }
fi

# The cache key covers the source and this recipe.
key=$( (cat "$dsc"; cat "$0") | sha256sum | cut -c1-16)
outdir=out/firmware/$key
if [ $rebuild = 0 ] && [ -f "$outdir/SHA256SUMS" ] && (cd "$outdir" && sha256sum -c --quiet SHA256SUMS); then
	echo "firmware: cached" >&2
	echo "$outdir"
	exit 0
fi

rm -rf "$BUILD"
mkdir -p "$BUILD"
dpkg-source -x "$dsc" "$BUILD/edk2" >/dev/null
cd "$BUILD/edk2"
# Nothing of a previous configuration may leak into this one.
rm -f Conf/BuildEnv.sh Conf/target.txt Conf/tools_def.txt Conf/build_rule.txt
export PYTHON_COMMAND=/usr/bin/python3 LC_ALL=C TZ=UTC
start=$(date +%s)
echo "firmware: building edk2 $EDK2_VERSION from source, once (cached in $outdir): BaseTools…" >&2
make -s -C BaseTools -j"$(nproc)" ARCH=X64 >"$BUILD/basetools.log" 2>&1 || { tail -30 "$BUILD/basetools.log" >&2; exit 1; }
set +u
# edksetup.sh reads the positional parameters it is sourced with: give it none.
set --
# shellcheck disable=SC1091
. ./edksetup.sh >/dev/null
set -u
# Debian's GRUB has no sevsecret.mod, so the AmdSev GRUB cannot be built; an
# empty grub.efi leaves the firmware to boot the kernel QEMU hands it (measured
# direct boot), which is all Palisade uses.
mkdir -p OvmfPkg/AmdSev/Grub
: >OvmfPkg/AmdSev/Grub/grub.efi
t0=$(date +%s)
echo "firmware: OVMF AmdSev (SEV-SNP), about 2-4 min…" >&2
build -q -a X64 -t GCC5 -b RELEASE -n "$(nproc)" -p OvmfPkg/AmdSev/AmdSevX64.dsc >"$BUILD/amdsev.log" 2>&1 || { tail -30 "$BUILD/amdsev.log" >&2; exit 1; }
t1=$(date +%s)
# A Debian patch breaks the TDX build without Secure Boot.
echo "firmware: OVMF IntelTdx (TDX), about 2-4 min…" >&2
build -q -a X64 -t GCC5 -b RELEASE -n "$(nproc)" -p OvmfPkg/IntelTdx/IntelTdxX64.dsc -D SECURE_BOOT_ENABLE=TRUE >"$BUILD/tdx.log" 2>&1 || { tail -30 "$BUILD/tdx.log" >&2; exit 1; }
t2=$(date +%s)
cd "$root"
mkdir -p "$outdir"
cp "$BUILD/edk2/Build/AmdSev/RELEASE_GCC5/FV/OVMF.fd" "$outdir/OVMF.amdsev.fd"
cp "$BUILD/edk2/Build/IntelTdx/RELEASE_GCC5/FV/OVMF.fd" "$outdir/OVMF.inteltdx.fd"
(cd "$outdir" && sha256sum OVMF.amdsev.fd OVMF.inteltdx.fd >SHA256SUMS)
echo "firmware: edk2 $EDK2_VERSION: BaseTools $((t0 - start)) s, AmdSev $((t1 - t0)) s, IntelTdx $((t2 - t1)) s" >&2
sed 's/^/firmware: /' "$outdir/SHA256SUMS" >&2
echo "$outdir"
