#!/usr/bin/env bash
# End-to-end check of a running pair (the seed's 10 steps), with curl + jq.
#
#   scripts/test_sync.sh                       # System A on :3000, System B on :3001
#   A_URL=http://localhost:3100 B_URL=http://localhost:3101 scripts/test_sync.sh
#
# Every "see it on the other side" step polls until SYNC_TIMEOUT seconds (default 30)
# have passed; no fixed sleeps.  Exits non-zero at the first failing step.
set -euo pipefail

A_URL="${A_URL:-http://localhost:3000}"
B_URL="${B_URL:-http://localhost:3001}"
SYNC_TIMEOUT="${SYNC_TIMEOUT:-30}"
POLL_INTERVAL="${POLL_INTERVAL:-0.2}"

for tool in curl jq; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is required (Debian/Ubuntu: sudo apt-get install -y $tool)" >&2
    exit 2
  fi
done

RUN="$(date +%s)-$RANDOM"
STEP=0
step() { STEP=$((STEP + 1)); printf '\n[%2d] %s\n' "$STEP" "$*"; }
ok() { printf '     ok: %s\n' "$*"; }
fail() { printf '     FAILED: %s\n' "$*" >&2; exit 1; }

# request METHOD URL [JSON] -> prints the body; fails unless the status is 2xx.
request() {
  local method="$1" url="$2" data="${3:-}" out status
  out="$(mktemp)"
  if [[ -n "$data" ]]; then
    status="$(curl -sS -o "$out" -w '%{http_code}' -X "$method" -H 'Content-Type: application/json' \
      --data "$data" "$url")" || { rm -f "$out"; fail "$method $url: connection failed"; }
  else
    status="$(curl -sS -o "$out" -w '%{http_code}' -X "$method" "$url")" \
      || { rm -f "$out"; fail "$method $url: connection failed"; }
  fi
  if [[ "$status" != 2* ]]; then
    echo "     $method $url -> HTTP $status: $(cat "$out")" >&2
    rm -f "$out"
    fail "$method $url"
  fi
  cat "$out"
  rm -f "$out"
}

# wait_for DESCRIPTION URL JQ_FILTER: poll URL until the jq filter is true on its body.
wait_for() {
  local what="$1" url="$2" filter="$3" body deadline
  deadline=$(( $(date +%s) + SYNC_TIMEOUT ))
  while :; do
    if body="$(curl -sS -f "$url" 2>/dev/null)" && jq -e "$filter" >/dev/null 2>&1 <<<"$body"; then
      ok "$what"
      return 0
    fi
    if (( $(date +%s) >= deadline )); then
      echo "     last answer from $url: ${body:-<none>}" >&2
      fail "$what (not seen within ${SYNC_TIMEOUT}s)"
    fi
    sleep "$POLL_INTERVAL"
  done
}

echo "System A: $A_URL   System B: $B_URL   (run $RUN)"

step "Both services are healthy"
wait_for "System A /health" "$A_URL/health" '.status == "ok"'
wait_for "System B /health" "$B_URL/health" '.status == "ok"'

step "Create an organization in System A"
ORG="$(request POST "$A_URL/organizations" \
  "{\"organization\": {\"name\": \"Acme $RUN\", \"domain\": \"acme-$RUN.example.com\"}}")"
ORG_ID="$(jq -r .id <<<"$ORG")"
# Ids are JSON numbers; they are sent back bare, as the seed's Rails clients do.
jq -e '.id | type == "number"' <<<"$ORG" >/dev/null || fail "id is not a JSON number: $ORG"
ok "organization $ORG_ID"

step "It appears in System B"
wait_for "organization $ORG_ID in B" "$B_URL/organizations/$ORG_ID" \
  ".name == \"Acme $RUN\" and .domain == \"acme-$RUN.example.com\" and .origin == \"$(jq -r .origin <<<"$ORG")\""

step "Create a user in System A"
USER="$(request POST "$A_URL/users" \
  "{\"user\": {\"organization_id\": $ORG_ID, \"name\": \"Ann $RUN\", \"email\": \"ann-$RUN@example.com\", \"role\": \"admin\"}}")"
USER_ID="$(jq -r .id <<<"$USER")"
ok "user $USER_ID"

step "It appears in System B"
wait_for "user $USER_ID in B" "$B_URL/users/$USER_ID" \
  ".email == \"ann-$RUN@example.com\" and .organization_id == $ORG_ID and .role == \"admin\""

step "Update the organization in System A"
UPDATED="$(request PATCH "$A_URL/organizations/$ORG_ID" \
  "{\"organization\": {\"name\": \"Acme $RUN (renamed)\", \"active\": false}}")"
ok "updated_at $(jq -r .updated_at <<<"$UPDATED")"

step "The update appears in System B"
wait_for "renamed organization in B" "$B_URL/organizations/$ORG_ID" \
  ".name == \"Acme $RUN (renamed)\" and .active == false and .updated_at == \"$(jq -r .updated_at <<<"$UPDATED")\""

step "Create an organization and a user in System B"
ORG_B="$(request POST "$B_URL/organizations" \
  "{\"name\": \"Beta $RUN\", \"domain\": \"beta-$RUN.example.com\"}")"
ORG_B_ID="$(jq -r .id <<<"$ORG_B")"
USER_B="$(request POST "$B_URL/users" \
  "{\"organization_id\": $ORG_B_ID, \"name\": \"Bob $RUN\", \"email\": \"bob-$RUN@example.com\"}")"
USER_B_ID="$(jq -r .id <<<"$USER_B")"
ok "organization $ORG_B_ID, user $USER_B_ID"

step "They appear in System A"
wait_for "organization $ORG_B_ID in A" "$A_URL/organizations/$ORG_B_ID" ".name == \"Beta $RUN\""
wait_for "user $USER_B_ID in A" "$A_URL/users/$USER_B_ID" ".email == \"bob-$RUN@example.com\""

step "Sync status"
wait_for "System B processed A's events" "$B_URL/sync_status" \
  '.jetstream_connected == true and .processed_events_count >= 3 and .last_organization_sync != null and .last_user_sync != null'
wait_for "System A processed B's events" "$A_URL/sync_status" \
  '.jetstream_connected == true and .processed_events_count >= 2 and .outbox.pending == 0'
for side in A B; do
  url_var="${side}_URL"
  echo "     System $side /sync_status:"
  request GET "${!url_var}/sync_status" | jq . | sed 's/^/       /'
done

printf '\nAll %d steps passed.\n' "$STEP"
