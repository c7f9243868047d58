#!/usr/bin/env bash
# Acceptance test of reproducibility: two fresh clones of HEAD in different
# directories build the image; the UKIs must have the same sha256.
# Takes about 3 minutes on 2 cores with a warm Go cache (kernel .deb shared).
# Gate: run by PALISADE_IMAGE_TESTS=1 (the VM tier) or by hand.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
profile=${1:-production}
tmp=$(mktemp -d /tmp/palisade-repro.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$repo/out/image/cache"
# Both clones at one commit, taken before either build starts (the commit
# time is SOURCE_DATE_EPOCH, so a commit landing in between must not count).
commit=$(git -C "$repo" rev-parse HEAD)
for d in a/first b/second-clone; do
	git clone -q "$repo" "$tmp/$d"
	git -C "$tmp/$d" checkout -q "$commit"
done
for d in a/first b/second-clone; do
	mkdir -p "$tmp/$d/out/image"
	# share only the downloaded .deb (its sha256 is checked on use)
	ln -s "$repo/out/image/cache" "$tmp/$d/out/image/cache"
	(cd "$tmp/$d" && scripts/image.sh "$profile")
done
x=$(sha256sum < "$tmp/a/first/out/image/$profile/palisade.efi")
y=$(sha256sum < "$tmp/b/second-clone/out/image/$profile/palisade.efi")
if [ "$x" != "$y" ]; then
	echo "FAIL: UKIs differ: $x vs $y" >&2
	diff <(cat "$tmp/a/first/out/image/$profile/SHA256SUMS") <(cat "$tmp/b/second-clone/out/image/$profile/SHA256SUMS") >&2 || true
	exit 1
fi
echo "PASS: reproducible UKI ($profile) at $commit: sha256 ${x%% *}"
