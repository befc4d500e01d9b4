#!/usr/bin/env sh
# Print the path of a Python >= 3.12 interpreter (JAX 0.11 needs it), or fail saying so.
# Order: $PYTHON, python3.x on PATH (newest first), pyenv's installs, then `uv python find`.
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
for cand in "${PYTHON:-}" python3.14 python3.13 python3.12 python3 \
            "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
  [ -n "$cand" ] || continue
  p=$(command -v "$cand" 2>/dev/null) || continue
  if ok "$p"; then echo "$p"; exit 0; fi
done
if command -v uv >/dev/null 2>&1; then
  p=$(uv python find '>=3.12' 2>/dev/null || (uv python install 3.12 >&2 && uv python find '>=3.12'))
  if [ -n "$p" ] && ok "$p"; then echo "$p"; exit 0; fi
fi
echo "error: no Python >= 3.12 found (tried \$PYTHON, python3.1x on PATH, ~/.pyenv/versions, uv)." >&2
echo "       Install one (e.g. 'pyenv install 3.12' or 'uv python install 3.12') or run 'make PYTHON=/path/to/python3.12'." >&2
exit 1
