#!/bin/bash
# Runs a command (usually mpirun ...) and checks how it ended: exit status, wall time and
# patterns in its combined stdout/stderr. Used by the failure tests, whose programs are meant to
# die, so their own exit status cannot be the test result.
#
# usage: expect_run.sh [--status any|zero|nonzero|N] [--max-seconds S]
#                      [--expect ERE]... [--reject ERE]... -- command [args...]
set -u

want_status=zero
max_s=60
expects=()
rejects=()
while [ $# -gt 0 ]; do
    case "$1" in
    --status) want_status=$2; shift 2 ;;
    --max-seconds) max_s=$2; shift 2 ;;
    --expect) expects+=("$2"); shift 2 ;;
    --reject) rejects+=("$2"); shift 2 ;;
    --) shift; break ;;
    *) echo "expect_run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "expect_run.sh: no command" >&2; exit 2; }

out=$(mktemp "${TMPDIR:-/tmp}/cornu-expect.XXXXXX")
trap 'rm -f "$out"' EXIT
start=$(date +%s.%N)
# A hard limit well above max_s, so that a hang fails this test instead of stalling CTest.
timeout -k 5 $((${max_s%.*} * 3 + 10)) "$@" >"$out" 2>&1
status=$?
end=$(date +%s.%N)
elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')

echo "---- output of: $*"
cat "$out"
echo "---- exit status $status after $elapsed s"

fail=0
case "$want_status" in
any) ;;
zero) [ "$status" -eq 0 ] || { echo "FAIL: exit status $status, expected 0"; fail=1; } ;;
nonzero) [ "$status" -ne 0 ] || { echo "FAIL: exit status 0, expected non-zero"; fail=1; } ;;
*) [ "$status" -eq "$want_status" ] || { echo "FAIL: exit status $status, expected $want_status"; fail=1; } ;;
esac
[ "$status" -eq 124 ] && echo "NOTE: exit status 124: the command hung and was stopped by timeout(1)"
if awk -v e="$elapsed" -v m="$max_s" 'BEGIN { exit !(e > m) }'; then
    echo "FAIL: took $elapsed s, limit $max_s s"
    fail=1
fi
for p in "${expects[@]+"${expects[@]}"}"; do
    grep -Eq -- "$p" "$out" || { echo "FAIL: output lacks /$p/"; fail=1; }
done
for p in "${rejects[@]+"${rejects[@]}"}"; do
    if grep -Eq -- "$p" "$out"; then
        echo "FAIL: output has /$p/"
        fail=1
    fi
done
[ $fail -eq 0 ] && echo "PASS"
exit $fail
