#!/usr/bin/env bash
# `make run`: describe the sample menu card with the installed model. With no model
# installed, say how to get the real one, then show the whole pipeline on the tiny Moondream
# trained here on a world of coloured shapes (tests/data/shapes-moondream), describing an
# image of its world; DEMO_DIR says where its files go.
set -euo pipefail
venv=${VENV:-.venv}
mdream="$venv/bin/mdream"
image=assets/menu.png
if "$venv/bin/python" -c 'from moondream_cli import locate; locate.resolve()' 2>/dev/null; then
    exec "$mdream" describe "$image"
fi
demo=${DEMO_DIR:-.cache/demo-trained}
weights=tests/data/shapes-moondream/weights.npz
cat >&2 <<MSG
No Moondream2 model is installed. To install the real one:
  online:   $mdream fetch
  offline:  $mdream bundle install moondream2-…-q4_k_m.tar   (a bundle made with 'mdream fetch --output DIR')
Meanwhile, here is the full pipeline on a tiny Moondream trained on a world of coloured
shapes ($weights, written out to $demo), describing an image of that world:
MSG
mkdir -p "$demo"
if [ ! -f "$demo/moondream2-mmproj-f16.gguf" ] || [ "$weights" -nt "$demo/moondream2-mmproj-f16.gguf" ]; then
    "$venv/bin/python" tests/shapes_gguf.py "$demo" >/dev/null
fi
"$venv/bin/python" tests/shapes_world.py "$demo/red-circle.png" --shape circle --colour red \
    --position left >&2
echo "\$ mdream describe $demo/red-circle.png --model-dir $demo" >&2
exec "$mdream" describe "$demo/red-circle.png" --model-dir "$demo"
