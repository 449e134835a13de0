#!/usr/bin/env bash
# `make run`: describe the sample menu card with the installed model. With no model
# installed, say how to get the real one, then show the whole pipeline running on a tiny
# random-weight model the test suite's generator writes (its answer is gibberish).
set -euo pipefail
venv=${VENV:-.venv}
mdream="$venv/bin/mdream"
image=assets/menu.png
if "$venv/bin/python" -c 'from moondream_cli import locate; locate.resolve()' 2>/dev/null; then
    exec "$mdream" describe "$image"
fi
demo=.cache/demo-model
cat >&2 <<MSG
No Moondream2 model is installed. To install the real one:
  online:   $mdream fetch
  offline:  $mdream bundle install moondream2-…-q4_k_m.tar   (a bundle made with 'mdream fetch --output DIR')
Meanwhile, here is the full pipeline on a tiny random-weight model ($demo):
the answer below is gibberish by design.
MSG
if [ ! -f "$demo/moondream2-mmproj-f16.gguf" ]; then
    "$venv/bin/python" tests/moondream_gguf.py "$demo" >/dev/null
fi
echo "\$ mdream describe $image --model-dir $demo --max-tokens 24" >&2
exec "$mdream" describe "$image" --model-dir "$demo" --max-tokens 24
