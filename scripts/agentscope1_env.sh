#!/usr/bin/env bash
# The AgentScope 1.x environment, .venv-agentscope1/: the seed tutorial's agent
# (agents/seed_agentscope1_agent.py) runs there as a rollout.workflow_command. AgentScope 1.x cannot
# share .venv (reinflow runs AgentScope 2.x), and reinflow itself is not installed here: the agent
# only talks to the endpoint. Pinned by constraints-agentscope1.txt (every package, pip's resolver);
# idempotent (a stamp, like setup.sh), so CI builds it once and reuses it.
#
#   bash scripts/agentscope1_env.sh          build or check .venv-agentscope1 (make agentscope1-env)
#   bash scripts/agentscope1_env.sh --lock   re-resolve $AGENTSCOPE and rewrite the lock (needs the registry)
#
# Exit status 75 (EX_TEMPFAIL): the registry cannot be reached, so the venv cannot be built here.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=.venv-agentscope1
LOCK=constraints-agentscope1.txt
STAMP="$VENV/.agentscope1-installed"
AGENTSCOPE="agentscope==1.0.21"   # the newest 1.x release on the registry when the lock was made
# AgentScope 1.x asks for mcp>=1.13 with no upper bound, but it does not import with mcp 2 (mcp 2.x is
# what reinflow's .venv has, and what pip would pick here): the lock is resolved under mcp<2.
# Its import also needs two packages it does not declare: greenlet (for sqlalchemy.ext.asyncio, no
# longer installed by SQLAlchemy 2.1 itself) and tqdm (agentscope.evaluate).
REQUIREMENTS=("$AGENTSCOPE" "mcp<2" "sqlalchemy[asyncio]" "tqdm")

say() { printf '\033[1m[agentscope1-env]\033[0m %s\n' "$*"; }

registry_unreachable() {
    # The install failed: was it the network? Fetch the one pinned wheel's metadata from the registry.
    local probe
    probe="$(mktemp -d)"
    if "$VENV/bin/python" -m pip download --quiet --no-deps --no-cache-dir -d "$probe" "$AGENTSCOPE" >/dev/null 2>&1; then
        rm -rf "$probe"; return 1
    fi
    rm -rf "$probe"; return 0
}

check() {
    # What the seed's agent imports, imported.
    "$VENV/bin/python" -c "import agentscope, openai
from agentscope.agent import ReActAgent
from agentscope.memory import InMemoryMemory
from agentscope.model import OpenAIChatModel
from agentscope.tool import Toolkit, execute_python_code
print(f'[agentscope1-env] agentscope {agentscope.__version__}, openai {openai.__version__}')"
}

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi

if [ "${1:-}" = "--lock" ]; then
    report="$(mktemp)"
    say "resolving ${REQUIREMENTS[*]} with pip's resolver (a dry run) into $LOCK"
    "$VENV/bin/python" -m pip install --quiet --dry-run --ignore-installed --report "$report" "${REQUIREMENTS[@]}"
    {
        echo "# The AgentScope 1.x environment (.venv-agentscope1, scripts/agentscope1_env.sh): every package pinned."
        echo "# Made by 'bash scripts/agentscope1_env.sh --lock' (pip's resolver, a dry run of ${REQUIREMENTS[*]}, $("$VENV/bin/python" --version))."
        "$VENV/bin/python" -c 'import json, sys
for item in sorted(json.load(open(sys.argv[1]))["install"], key=lambda i: i["metadata"]["name"].lower()):
    print(item["metadata"]["name"] + "==" + item["metadata"]["version"])' "$report"
    } > "$LOCK"
    rm -f "$report"
    say "$(grep -vc '^#' "$LOCK") packages pinned in $LOCK"
    exit 0
fi

wanted="$(echo "${REQUIREMENTS[*]}" | cat - "$LOCK" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]; then
    say "installing $AGENTSCOPE from $LOCK into $VENV (first run: about a minute)"
    if ! "$VENV/bin/python" -m pip install --quiet -c "$LOCK" "${REQUIREMENTS[@]}"; then
        if registry_unreachable; then
            say "the package registry cannot be reached: $VENV cannot be built here"
            exit 75
        fi
        exit 1
    fi
    check   # the stamp only once what the agent imports imports
    echo "$wanted" > "$STAMP"
else
    say "dependencies up to date ($VENV)"
    check
fi
