#!/usr/bin/env bash
# not-yet.sh TARGET — say which open issue brings a make target that does not exist yet.
case "$1" in
image) echo "make image: the reproducible UKI build is not written yet ([images], issue 4)." ;;
*) echo "make $1: not written yet." ;;
esac
exit 1
