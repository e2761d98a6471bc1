# Sourced by bin/serve, bin/test and bin/lint, never run on its own: one venv bootstrap for all three.
#
#   use_venv REQUIREMENTS STAMP
#
# Checks that the Python to build with ($PYTHON, else python3) is 3.11 or newer: if not, one
# line on stderr and exit status 2. Makes .venv with it on first use, and makes it anew when
# another Python made it (pyvenv.cfg's version differs) or its interpreter no longer runs.
# Installs REQUIREMENTS whenever they (or requirements.txt) are newer than .venv/STAMP.

use_venv() {
  local requirements="$1" stamp=".venv/$2" py="${PYTHON:-python3}" me version major minor rest made
  me="bin/$(basename "$0")"
  version="$("$py" -c 'import sys; print("%d %d" % sys.version_info[:2])' 2>/dev/null)" || version=""
  read -r major minor rest <<<"$version" || true
  if ! [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]]; then
    echo "$me: cannot run '$py' to ask its version; install Python 3.11 or newer, or point PYTHON at one" >&2
    exit 2
  fi
  if [ "$major" -lt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -lt 11 ]; }; then
    echo "$me: needs Python 3.11 or newer, but '$py' is $major.$minor; install a newer one, or point PYTHON at one" >&2
    exit 2
  fi
  made=""
  if [ -f .venv/pyvenv.cfg ] && [ -x .venv/bin/python ] && .venv/bin/python -c "" >/dev/null 2>&1; then
    made="$(sed -n 's/^version\(_info\)\{0,1\} *= *\([0-9]*\.[0-9]*\).*/\2/p' .venv/pyvenv.cfg | head -n 1)" || made=""
  fi
  if [ "$made" != "$major.$minor" ]; then
    if [ -n "$made" ]; then
      echo "$me: .venv was made by Python $made; rebuilding it with '$py' ($major.$minor)" >&2
    elif [ -e .venv ]; then
      echo "$me: .venv is broken (its python no longer runs, or it has no pyvenv.cfg); rebuilding it with '$py' ($major.$minor)" >&2
    fi
    "$py" -m venv --clear .venv
  fi
  if [ ! -e "$stamp" ] || [ "$requirements" -nt "$stamp" ] || [ requirements.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
    touch "$stamp"
  fi
}
