#!/usr/bin/env bash
# Dependency audit: pip-audit over every package installed in qcd's virtualenv.
#
#   bash scripts/audit_deps.sh [--out FILE]      (default: docs/DEPENDENCIES_AUDIT.md)
#
# pip-audit lives in a venv of its own (var/audit-venv), so it adds nothing to qcd's.
# It asks a vulnerability service about each pinned version: PyPI's JSON API first,
# then OSV. Exit status:
#   0  no known vulnerability, or the audit could not run (pip-audit not installable,
#      no service reachable, every package skipped); the report and the output say which
#   1  known vulnerabilities found by a check that did run (ids in the report)
# QCD_AUDIT_IGNORE="ID,ID" accepts named vulnerabilities (each must be explained in the
# report's commit); QCD_VENV (default .venv) and QCD_AUDIT_VENV override the venvs.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=docs/DEPENDENCIES_AUDIT.md
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: $0 [--out FILE]" >&2; exit 2 ;;
  esac
done
VENV=${QCD_VENV:-.venv}
AUDIT_VENV=${QCD_AUDIT_VENV:-var/audit-venv}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ ! -x "$VENV/bin/python" ]; then
  echo "audit_deps: no virtualenv at $VENV (run make test or pip install -e .[test] first)" >&2
  exit 2
fi
mkdir -p "$(dirname "$OUT")"

skip() {  # the audit could not run: say why, in the output and the report, exit 0
  echo "audit_deps: SKIPPED - $1"
  {
    echo "# Dependency audit"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Command: \`bash scripts/audit_deps.sh\`"
    echo "- Result: **not run** - $1"
    echo
    echo "No vulnerability was looked up, so this says nothing about the dependencies."
  } > "$OUT"
  exit 0
}

if [ ! -x "$AUDIT_VENV/bin/pip-audit" ]; then
  python3 -m venv "$AUDIT_VENV" >/dev/null 2>&1 || skip "cannot create $AUDIT_VENV"
  timeout 300 "$AUDIT_VENV/bin/pip" install -q pip-audit >"$WORK/install.log" 2>&1 \
    || skip "pip-audit could not be installed: $(tail -1 "$WORK/install.log")"
fi

# what is installed, pinned; qcd itself (editable, not on any index) is left out
"$VENV/bin/python" -m pip freeze --exclude-editable 2>/dev/null \
  | grep -v -e '^#' -e ' @ ' > "$WORK/requirements.txt"
[ -s "$WORK/requirements.txt" ] || skip "pip freeze listed nothing in $VENV"

IGNORE=()
IFS=',' read -r -a ids <<< "${QCD_AUDIT_IGNORE:-}"
for id in "${ids[@]}"; do [ -n "$id" ] && IGNORE+=(--ignore-vuln "$id"); done

for service in pypi osv; do
  timeout 600 "$AUDIT_VENV/bin/pip-audit" --disable-pip --no-deps --progress-spinner off \
    -r "$WORK/requirements.txt" -s "$service" -f json -o "$WORK/$service.json" \
    "${IGNORE[@]}" >"$WORK/$service.log" 2>&1
  echo "$?" > "$WORK/$service.rc"
done

"$AUDIT_VENV/bin/python" - "$WORK" "$OUT" "$("$AUDIT_VENV/bin/pip-audit" --version)" <<'EOF'
import json, sys, datetime, platform
from pathlib import Path

work, out, version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
runs = {}
for service in ("pypi", "osv"):
    log = (work / f"{service}.log").read_text(errors="replace").strip().splitlines()
    try:
        deps = json.loads((work / f"{service}.json").read_text())["dependencies"]
    except (OSError, ValueError, KeyError):
        last = log[-1] if log else "no output"
        # the exception's name only (its text names hosts and proxies)
        runs[service] = (None, "did not run: " + last.split(":")[0].rsplit(".", 1)[-1][:80])
        continue
    audited = [d for d in deps if "skip_reason" not in d]
    what = f"{len(audited)} of {len(deps)} packages audited"
    if not audited and deps:
        what += f" (each skipped, e.g. \"{deps[0]['skip_reason'].split(':')[0]}\")"
    runs[service] = (deps, what)
used = next((s for s, (deps, _) in runs.items()
             if deps and any("skip_reason" not in d for d in deps)), None)
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
lines = ["# Dependency audit", "",
         f"- Date: {now}; machine: {platform.platform()}, Python {platform.python_version()}",
         f"- Command: `bash scripts/audit_deps.sh` ({version}, `--no-deps` over "
         "`pip freeze` of `.venv`)"]
for service, (_, what) in runs.items():
    lines.append(f"- Service `{service}`: {what}")
if used is None:
    lines += ["- Result: **not run** - no vulnerability service answered for any "
              "package (this machine reaches package registries only)", "",
              "No vulnerability was looked up, so this says nothing about the dependencies."]
    out.write_text("\n".join(lines) + "\n")
    print("audit_deps: SKIPPED - no vulnerability service reachable "
          f"({'; '.join(f'{s}: {w}' for s, (_, w) in runs.items())})")
    sys.exit(0)
deps = runs[used][0]
vulns = [(d["name"], d["version"], v) for d in deps for v in d.get("vulns", [])]
skipped = [d for d in deps if "skip_reason" in d]
lines.append(f"- Result: **{len(vulns)} known vulnerabilities** in "
             f"{len(deps) - len(skipped)} audited packages (service `{used}`)")
if vulns:
    lines += ["", "| package | version | id | fixed in | aliases |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {ver} | {v['id']} | {', '.join(v.get('fix_versions', [])) or '-'} "
              f"| {', '.join(v.get('aliases', [])) or '-'} |" for n, ver, v in vulns]
if skipped:
    lines += ["", "Not audited:", ""] + [f"- {d['name']}: {d['skip_reason']}" for d in skipped]
out.write_text("\n".join(lines) + "\n")
for n, ver, v in vulns:
    print(f"audit_deps: {n} {ver}: {v['id']} (fixed in {', '.join(v.get('fix_versions', [])) or '?'})")
print(f"audit_deps: {len(vulns)} known vulnerabilities, {len(skipped)} packages not audited "
      f"(service {used}); report in {out}")
sys.exit(1 if vulns else 0)
EOF
