# Shared by the bench scripts (sourced, not run).

# Waits for a process's "listening" log line for a role; prints the address.
addr_of() { # log role
  for _ in $(seq 1 600); do
    a=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try: f = json.loads(line)["fields"]
    except Exception: continue
    if f.get("message") == "listening" and f.get("role") == sys.argv[2]: print(f["addr"]); break
' "$1" "$2")
    [ -n "$a" ] && { echo "$a"; return; }
    sleep 0.1
  done
  echo "no $2 address in $1" >&2; exit 1
}
