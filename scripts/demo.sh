#!/usr/bin/env bash
# Start `qcd serve` on its embedded defaults, push a generated multi-series study to it
# with dcmtk storescu (the "scanner"), wait for the series to complete, show the result.
# DEMO_KEEP=1 leaves the daemon running in the foreground afterwards (Ctrl-C stops it).
set -euo pipefail
VENV=${VENV:-.venv}
QCD="$VENV/bin/qcd"
PORT=$(QCD_CONFIG=deploy/demo.toml "$QCD" check-config --json | "$VENV/bin/python" -c 'import json,sys; c=json.load(sys.stdin); print(c["ingest"]["port"], c["http"]["port"])')
read -r DICOM_PORT HTTP_PORT <<<"$PORT"
mkdir -p var demo
# Orthanc plays the PACS that receives qcd's reports (DICOM 14242, HTTP 18042).
rm -rf var/orthanc && mkdir -p var/orthanc/db
cat >var/orthanc/orthanc.json <<JSON
{"Name": "qcd-demo-pacs", "StorageDirectory": "$PWD/var/orthanc/db",
 "IndexDirectory": "$PWD/var/orthanc/db", "DicomAet": "ORTHANC", "DicomPort": 14242,
 "HttpPort": 18042, "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
 "DicomCheckCalledAet": false, "Plugins": []}
JSON
TCP_NODELAY=1 Orthanc var/orthanc/orthanc.json >var/orthanc/stdout.log 2>&1 &
OPID=$!
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18042/system >/dev/null && break; sleep 0.2; done
QCD_CONFIG=deploy/demo.toml "$QCD" serve >var/demo-serve.log 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; kill -TERM $OPID 2>/dev/null || true; wait $OPID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  echoscu -aec QCD 127.0.0.1 "$DICOM_PORT" 2>/dev/null && break
  kill -0 $PID 2>/dev/null || { cat var/demo-serve.log; exit 1; }
  sleep 0.2
done
echo "== qcd serve is up (pid $PID): DICOM 127.0.0.1:$DICOM_PORT AE QCD, metrics http://127.0.0.1:$HTTP_PORT/metrics"
rm -rf demo/study
"$QCD" demo-study demo/study
echo "== pushing with dcmtk storescu (one association per transfer syntax)"
declare -A FLAG=([1.2.840.10008.1.2.1]="" [1.2.840.10008.1.2.5]="-xr" [1.2.840.10008.1.2.4.80]="-xt" \
                 [1.2.840.10008.1.2.4.90]="-xv" [1.2.840.10008.1.2.1.99]="-xd")
"$VENV/bin/python" - <<'PY' > demo/groups.txt
import pathlib, pydicom
for p in sorted(pathlib.Path("demo/study").glob("*.dcm")):
    print(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID, p)
PY
for ts in $(cut -d' ' -f1 demo/groups.txt | sort -u); do
  # shellcheck disable=SC2046
  storescu -aec QCD -aet DEMOSCANNER ${FLAG[$ts]} 127.0.0.1 "$DICOM_PORT" $(awk -v t="$ts" '$1==t {print $2}' demo/groups.txt)
done
echo "== simulating two FDG PET reconstructions (EARL1-like and clinical) and pushing them"
for spec in "EARL1 11" "clinical 12"; do
  read -r label seed <<<"$spec"
  rm -rf "demo/pet-$label"
  PYTHONPATH=. "$VENV/bin/python" -m training.earl.demo_pet "demo/pet-$label" --label "$label" --seed "$seed"
  storescu -aec QCD -aet DEMOPETCT 127.0.0.1 "$DICOM_PORT" +sd "demo/pet-$label"
done
echo "== simulating an HR-pQCT scan with motion (grade 4: rescan), chest radiographs and a cardiac MR"
rm -rf demo/hrpqct demo/chest demo/cmr
PYTHONPATH=. "$VENV/bin/python" -m training.motion.demo demo/hrpqct --motion-um 450 --seed 7
storescu -aec QCD -aet DEMOXCT 127.0.0.1 "$DICOM_PORT" +sd demo/hrpqct
PYTHONPATH=. "$VENV/bin/python" -m training.chest.demo demo/chest --labels Pneumothorax,Effusion --seed 7
storescu -aec QCD -aet DEMODX 127.0.0.1 "$DICOM_PORT" +sd demo/chest
PYTHONPATH=. "$VENV/bin/python" -m training.atrium.demo demo/cmr --seed 7
storescu -aec QCD -aet DEMOMR 127.0.0.1 "$DICOM_PORT" +sd demo/cmr
echo "== waiting for the series to complete (quiet period 10 s) and the analyses to run"
for _ in $(seq 1 240); do
  "$QCD" status --json | "$VENV/bin/python" -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if set(s["series"])=={"COMPLETE"} and not {"QUEUED","RUNNING"} & set(s["jobs"]) else 1)' && break
  sleep 1
done
sleep 3  # let the last reports be built and delivered
"$QCD" status --findings 80
echo "(the synthetic demo-study series are noise: their findings mean nothing, and its PET has no SUV"
echo " header, hence suv_unavailable; the simulated PET, HR-pQCT, chest and cardiac MR series are the"
echo " ones to read. Alerts raised: see the operator view, http://127.0.0.1:$HTTP_PORT/operator,"
echo " after \`qcd user add NAME --role operator\`.)"
echo "== metrics (excerpt)"
curl -s "http://127.0.0.1:$HTTP_PORT/metrics" | grep -E '^qcd_(instances_received_total|series_completed_total|jobs|deliveries_total)\{|^qcd_reports_built_total' || true
echo "== readiness: $(curl -s "http://127.0.0.1:$HTTP_PORT/readyz")"
echo "== the PACS (Orthanc, http://127.0.0.1:18042) now holds these qcd reports:"
curl -s -X POST http://127.0.0.1:18042/tools/find \
  -d '{"Level":"Series","Query":{"Modality":"SR\\SEG"},"Expand":true}' \
  | "$VENV/bin/python" -c 'import json,sys; [print("  " + s["MainDicomTags"].get("Modality", "?") + " series:", s["MainDicomTags"].get("SeriesDescription"), "-", len(s["Instances"]), "instance(s)") for s in json.load(sys.stdin)]' 
echo "== spool: $(find var/spool -name '*.dcm' | wc -l) instance file(s) under var/spool; database var/qcd.db"
if [ "${DEMO_KEEP:-0}" = "1" ]; then
  echo "== daemon and Orthanc keep running; Ctrl-C stops qcd"; trap - EXIT; wait $PID
fi
