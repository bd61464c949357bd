#!/usr/bin/env bash
# A local test EHR for trying the service by hand: SEKMET (sekmet-fhir 0.1.1, FHIR R4) on
# http://127.0.0.1:${EHR_PORT:-8092}/fhir with the example patients (examples/patients/*.json)
# loaded, printing each patient's server id. Runs in the foreground; Ctrl-C stops it.
#
#   scripts/ehr-server.sh                      # then, in another terminal:
#   FHIR_SERVICE_NOW=2026-12-01T12:00:00Z make run
#   curl -s -X POST localhost:8000/cds-services/muscle-spasm-patient-view \
#     -H 'Content-Type: application/json' \
#     -d '{"hook":"patient-view","hookInstance":"'$(cat /proc/sys/kernel/random/uuid)'",
#          "fhirServer":"http://127.0.0.1:8092/fhir",
#          "context":{"userId":"Practitioner/x","patientId":"<id printed below>"}}'
#
# SEKMET lives in its own virtual environment, .venv-ehr (51 packages; never in .venv), created
# on first use. Its data stays in var/ehr/ (EHR_DATA to change); loading is idempotent
# (ifNoneExist), so restarting keeps the same patient ids. The simulator is off: with it on,
# SEKMET acts on orders (creates MedicationDispense, Practitioner, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PORT="${EHR_PORT:-8092}"
DATA="${EHR_DATA:-$ROOT/var/ehr}"
VENV="$ROOT/.venv-ehr"
BASE="http://127.0.0.1:$PORT/fhir"

if ! "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('sekmet-fhir') == '0.1.1'" 2>/dev/null; then
  echo "ehr-server: installing sekmet-fhir==0.1.1 into .venv-ehr" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check sekmet-fhir==0.1.1
fi

mkdir -p "$DATA"
cat > "$DATA/settings.yaml" <<YAML
base_url: $BASE
host: 127.0.0.1
port: $PORT
data_dir: $DATA/data
simulator: {enabled: false}
log_inbound: false
YAML

"$VENV/bin/sekmet" serve -c "$DATA/settings.yaml" &
EHR_PID=$!
trap 'kill "$EHR_PID" 2>/dev/null || true; wait "$EHR_PID" 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 150); do
  curl -fsS -o /dev/null "$BASE/metadata" 2>/dev/null && break
  kill -0 "$EHR_PID" 2>/dev/null || { echo "ehr-server: SEKMET exited" >&2; exit 1; }
  sleep 0.2
done

for bundle in examples/patients/*.json; do
  "$VENV/bin/python" - "$BASE" "$bundle" <<'PY'
import json, sys, urllib.request
base, path = sys.argv[1], sys.argv[2]
body = open(path, "rb").read()
req = urllib.request.Request(base, data=body, method="POST",
                             headers={"Content-Type": "application/fhir+json"})
out = json.load(urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req))
made = [e["response"]["location"].split("/fhir/", 1)[-1].split("/_history")[0] for e in out["entry"]]
patient = next(m for m in made if m.startswith("Patient/"))
encounter = next((m for m in made if m.startswith("Encounter/")), "-")
print(f"{path.rsplit('/', 1)[-1]:40} {patient}  {encounter}")
PY
done
echo "ehr-server: FHIR R4 at $BASE (Ctrl-C to stop)"
wait "$EHR_PID"
