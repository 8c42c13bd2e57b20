#!/usr/bin/env bash
# Sets up everything on a fresh Debian machine: the EGL libraries MuJoCo renders with, PostgreSQL for the tests,
# a virtual environment (.venv) with the pinned requirements, and this project installed in it (packages + plugin).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
ldconfig -p | grep -q 'libEGL.so.1' || missing+=(libegl1 libegl-mesa0 libgl1-mesa-dri)
ldconfig -p | grep -q 'libOpenGL.so.0' || missing+=(libopengl0)
ldconfig -p | grep -q 'libGL.so.1' || missing+=(libgl1)
# The tests start their own PostgreSQL server (several search workers on one study)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# ... and a one-node Slurm cluster (the job-array recipe, scripts/slurm_search.sbatch): Debian's slurm-wlm daemons
[ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/bin/sbatch ] || missing+=(slurmctld slurmd slurm-client)
[ -x /usr/sbin/munged ] || missing+=(munge)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Installed without compiling, then compiled on every core (a fresh install 58 s instead of 76 on 2 cores), once
# per change of the requirements: these machines set PYTHONDONTWRITEBYTECODE=1, so whatever is left uncompiled here
# is compiled again by every process. Our own packages too. A file in a newer Python's syntax (torch ships one)
# stays uncompiled, as pip leaves it
.venv/bin/python -m pip install -q --no-compile -r requirements_search.txt
compiled=.venv/.requirements_compiled
[ "$compiled" -nt requirements_search.txt ] || { .venv/bin/python -m compileall -qq -j 0 .venv/lib || true; touch "$compiled"; }
.venv/bin/python -m compileall -qq -j 0 jepa_dreamer jepa_search hydra_plugins
# The build prints setuptools' warnings on every run: shown only when the install fails
log=$(.venv/bin/python -m pip install -q --no-deps -e . 2>&1) || { echo "$log" >&2; exit 1; }
