#!/bin/sh
# run-node.sh BUILD: what `make run` does after building: make sure a wallet exists, then run a
# node in the foreground with the embedded defaults, showing its id and where its API answers.
#
# The data directory is NEUROSHARD_DATA_DIR, else the XDG default. A first run creates the wallet
# and shows its mnemonic once. Ctrl-C stops the node cleanly.
set -eu
build=${1:-build}
[ $# -gt 0 ] && shift
ctl="$build/neuroctl"
nsd="$build/neuroshardd"
dir=${NEUROSHARD_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/neuroshard}

if [ ! -e "$dir/key" ]; then
    echo "run: no wallet in $dir yet; creating one"
    "$ctl" --data-dir "$dir" wallet new
    echo
fi
"$ctl" --data-dir "$dir" wallet show
api=${NEUROSHARD_API_LISTEN:-127.0.0.1:8421}
echo "run: starting neuroshardd; its API answers at http://$api (try: curl $api/api/stats)"
echo "run: stop it with Ctrl-C"
exec "$nsd" --data-dir "$dir" "$@"
