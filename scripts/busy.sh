#!/bin/sh
# Runs a command while CPU-bound processes run beside it (`make test-busy`: a busy machine), and
# stops them afterwards whatever the command's outcome, also on Ctrl-C. Exits with the command's
# status. BUSY_PROCESSES sets how many (default 2). The command stays in the foreground, so Ctrl-C
# reaches it as usual.
#
#     scripts/busy.sh make test
set -u
count=${BUSY_PROCESSES:-2}
pids=""

stop_busy() {
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null; done  # they hold nothing worth a goodbye
    for pid in $pids; do wait "$pid" 2>/dev/null; done
    [ -n "$pids" ] && echo "busy.sh: stopped the CPU-bound processes$pids"
    pids=""
}
trap stop_busy EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

i=0
while [ "$i" -lt "$count" ]; do
    # Spins for as long as this script is its parent: not even a SIGKILL of the script leaves a
    # spinner behind (an orphan is given a new parent at once, zombie or not).
    sh -c 'while [ "$(cut -d " " -f 4 /proc/$$/stat)" = "$1" ]; do
               i=0; while [ "$i" -lt 100000 ]; do i=$((i + 1)); done
           done' busy "$$" &
    pids="$pids $!"
    i=$((i + 1))
done
echo "busy.sh: $count CPU-bound processes running beside the command (pids$pids)"
"$@"
status=$?
exit "$status"
