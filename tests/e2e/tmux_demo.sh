#!/usr/bin/env bash
# End-to-end in tmux (issue 3): `sidestep demo` in a detached 80x24 tmux session, wait for steps,
# capture the pane, kill the tmux session (the UI dies of SIGHUP as with a dropped SSH link), prove
# the engine kept training, then `sidestep attach RUN_DIR` shows the later steps; finally stop it
# from the attached monitor (it saves) so nothing is left running.
#
#   bash tests/e2e/tmux_demo.sh            (SIDESTEP=path/to/sidestep to test another install)
#
# Writes its captures and logs under $OUT (default: a temp dir) and exits non-zero on any failure.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
SIDESTEP=${SIDESTEP:-$REPO/.venv/bin/sidestep}
PY=${PY:-$REPO/.venv/bin/python}
OUT=${OUT:-$(mktemp -d -t sidestep-e2e-XXXX)}
WAIT_STEPS=${WAIT_STEPS:-600}   # seconds to wait for the first steps (demo setup + engine start)
SESSION=sidestep-e2e-$$
export SIDESTEP_CONFIG_DIR=$OUT/config
export SIDESTEP_DEMO_ROOT=${SIDESTEP_DEMO_ROOT:-$OUT/demo}
export TERM=xterm-256color

command -v tmux >/dev/null || { echo "SKIP: tmux not installed"; exit 0; }
fail() { echo "FAIL: $*"; tmux kill-session -t "$SESSION" 2>/dev/null || true; exit 1; }
pass() { echo "ok: $*"; }
cleanup() { tmux kill-session -t "$SESSION" 2>/dev/null || true; tmux kill-session -t "$SESSION-attach" 2>/dev/null || true; }
trap cleanup EXIT

# the step the pane shows ("step 12/200" in the header), or nothing
pane_step() { tmux capture-pane -p -t "$1" 2>/dev/null | sed -n 's/.* step \([0-9][0-9]*\)\/[0-9]*.*/\1/p' | head -1; }
# the last step recorded in a run's events.jsonl
file_step() {
  "$PY" - "$1" <<'PYEOF'
import json, sys
step = 0
for line in open(sys.argv[1], encoding="utf-8"):
    try:
        event = json.loads(line)
    except ValueError:
        continue  # a line being written
    if event.get("type") == "StepMetrics":
        step = event["step"]
print(step)
PYEOF
}

echo "output: $OUT"
tmux new-session -d -s "$SESSION" -x 80 -y 24 "cd '$REPO' && '$SIDESTEP' demo --max-steps 2000"

# 1. steps on screen
deadline=$((SECONDS + WAIT_STEPS))
step=""
while [ $SECONDS -lt $deadline ]; do
  step=$(pane_step "$SESSION")
  if [ -n "$step" ] && [ "$step" -ge 3 ]; then break; fi
  sleep 2
done
tmux capture-pane -p -t "$SESSION" > "$OUT/pane-demo.txt" || true
[ -n "$step" ] && [ "$step" -ge 3 ] || fail "no training steps on screen after ${WAIT_STEPS}s (see $OUT/pane-demo.txt)"
pass "the demo trains on screen at 80x24 (step $step); pane saved to $OUT/pane-demo.txt"
cat "$OUT/pane-demo.txt"

RUN_DIR=$(ls -td "$SIDESTEP_DEMO_ROOT"/runs/demo-* 2>/dev/null | head -1)
[ -d "$RUN_DIR" ] || fail "no run folder under $SIDESTEP_DEMO_ROOT/runs"
ENGINE_PID=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['pid'])" "$RUN_DIR/engine.json")
UI_PID=$(tmux list-panes -t "$SESSION" -F '#{pane_pid}')
pass "run folder $RUN_DIR, engine pid $ENGINE_PID"

# 2. kill tmux: the client, the shell and the UI go; the engine must not
tmux kill-session -t "$SESSION"
sleep 3
if kill -0 "$UI_PID" 2>/dev/null; then fail "the UI (pid $UI_PID) survived the tmux kill"; fi
kill -0 "$ENGINE_PID" 2>/dev/null || fail "the engine died with tmux"
at_kill=$(file_step "$RUN_DIR/events.jsonl")
pass "tmux killed; engine $ENGINE_PID still alive at step $at_kill"

deadline=$((SECONDS + 180))
later=$at_kill
while [ $SECONDS -lt $deadline ]; do
  later=$(file_step "$RUN_DIR/events.jsonl")
  if [ "$later" -gt $((at_kill + 2)) ]; then break; fi
  sleep 2
done
[ "$later" -gt "$at_kill" ] || fail "the engine stopped training after tmux died (step $at_kill -> $later)"
pass "the engine kept training headless: step $at_kill -> $later"

# 3. attach shows the later steps
tmux new-session -d -s "$SESSION-attach" -x 80 -y 24 "cd '$REPO' && '$SIDESTEP' attach '$RUN_DIR'"
deadline=$((SECONDS + 60))
shown=""
while [ $SECONDS -lt $deadline ]; do
  shown=$(pane_step "$SESSION-attach")
  if [ -n "$shown" ] && [ "$shown" -ge "$later" ]; then break; fi
  sleep 1
done
tmux capture-pane -p -t "$SESSION-attach" > "$OUT/pane-attach.txt" || true
[ -n "$shown" ] && [ "$shown" -ge "$later" ] || fail "attach shows step '${shown}', expected >= $later (see $OUT/pane-attach.txt)"
pass "sidestep attach shows step $shown (>= $later, after the UI was gone)"
cat "$OUT/pane-attach.txt"

# 4. stop from the attached monitor: SIGTERM -> the engine saves and exits
tmux send-keys -t "$SESSION-attach" s
sleep 1
tmux send-keys -t "$SESSION-attach" s   # Stop is confirmed with the same key
deadline=$((SECONDS + 120))
while [ $SECONDS -lt $deadline ] && kill -0 "$ENGINE_PID" 2>/dev/null; do sleep 1; done
kill -0 "$ENGINE_PID" 2>/dev/null && fail "the engine did not stop"
grep -q '"type":"RunFinished".*"status":"stopped"' "$RUN_DIR/events.jsonl" || fail "no RunFinished(stopped) in events.jsonl"
grep -q '"kind":"stop"' "$RUN_DIR/events.jsonl" || fail "no stop checkpoint"
tmux capture-pane -p -t "$SESSION-attach" > "$OUT/pane-stopped.txt" || true
pass "stopped from the attached monitor: checkpoint saved, RunFinished(stopped)"
echo "PASS"
