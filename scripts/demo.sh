#!/usr/bin/env bash
# `make demo`: a fresh embedded stack (PostgreSQL + SeaweedFS on 127.0.0.1), a sample Django media
# tree, then inventory → dry run → plan → run → status, printing what happened at each step.
set -euo pipefail
cd "$(dirname "$0")/.."

# The demo must never reach a real database or bucket: drop anything that could point elsewhere.
for var in $(env | grep -oE '^(AWS_[A-Z_]+|R2MIGRATE_[A-Z_]+|DATABASE_URL)=' | tr -d '='); do
    unset "$var"
done
export R2MIGRATE_STATE_DIR=.r2migrate/demo
R2M=.venv/bin/r2migrate

# Bold only on a terminal: a log file or a CI console gets plain text.
if [ -t 1 ]; then BOLD=$'\033[1m'; PLAIN=$'\033[0m'; else BOLD=; PLAIN=; fi
step() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }

step "Fresh embedded stack under $R2MIGRATE_STATE_DIR"
$R2M dev down >/dev/null 2>&1 || true
rm -rf -- "$R2MIGRATE_STATE_DIR"
$R2M dev up

step "Sample data: list_cutter_savedfile rows and a Django media tree"
$R2M dev sample-data

step "0. Doctor: is the set-up sound before we start?"
$R2M doctor

step "1. Inventory: what the database references, what is wrong, what it will cost"
$R2M inventory --show 12

step "2. Dry run: what would happen (nothing is written)"
$R2M plan --dry-run --show 12

step "3. Plan: store batches of 50, and run the first one from the command line"
$R2M plan --batch-size 50 --show 0
$R2M run --max-batches 1

step "4. The notebooks, headless (as a scheduler would run them): runs/<time>-<name>/"
$R2M notebook run 01_inventory
$R2M notebook run 02_dry_run
$R2M notebook run 03_execute -p dry_run false
$R2M notebook run 04_verification_report | tee "$R2MIGRATE_STATE_DIR/04.out"

step "5. Verify again from the command line: cheap, then a deep sample"
$R2M verify --all
$R2M verify --all --sample 10 --seed 1

step "6. Status"
$R2M batches

report=$(sed -n 's/^  report: *//p' "$R2MIGRATE_STATE_DIR/04.out")
printf '\n%sVerification report for stakeholders:%s %s\n' "$BOLD" "$PLAIN" "$report"
printf '\nThe stack keeps running for you to explore (settings come from %s/stack.json):\n' "$R2MIGRATE_STATE_DIR"
printf '  R2MIGRATE_STATE_DIR=%s .venv/bin/r2migrate batches\n' "$R2MIGRATE_STATE_DIR"
printf 'Stop it with: R2MIGRATE_STATE_DIR=%s .venv/bin/r2migrate dev down\n' "$R2MIGRATE_STATE_DIR"
