#!/bin/sh
# plot-loss.sh TRAIN_CSV OUT_SVG [TITLE]: the loss curve a node wrote (DATA/train.csv) as an SVG.
#
# No plotting package needed: awk writes the SVG. Training loss in blue, validation loss (where
# it was measured) in orange, against the step.
set -eu
csv=$1
out=$2
title=${3:-NeuroLLM training loss}
awk -F, -v title="$title" '
NR == 1 { next }
{
    n++; step[n] = $1; loss[n] = $2; val[n] = $3
    if ($2 > ymax) ymax = $2
    if ($3 > ymax) ymax = $3
    if (n == 1 || $2 < ymin) ymin = $2
    if ($3 > 0 && $3 < ymin) ymin = $3
    xmax = $1
}
END {
    if (n < 2) { print "plot-loss: fewer than two steps in the CSV" > "/dev/stderr"; exit 1 }
    W = 720; H = 400; L = 60; R = 20; T = 40; B = 50
    ymin = int(ymin); ymax = int(ymax) + 1
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H
    printf "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H
    printf "<text x=\"%d\" y=\"24\" font-size=\"15\">%s</text>\n", L, title
    for (y = ymin; y <= ymax; y++) {
        py = T + (H - T - B) * (ymax - y) / (ymax - ymin)
        printf "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, W - R, py, py
        printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%d</text>\n", L - 6, py + 4, y
    }
    for (i = 0; i <= 4; i++) {
        s = int(xmax * i / 4); px = L + (W - L - R) * s / xmax
        printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", px, H - B + 18, s
    }
    printf "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">step</text>\n", (L + W - R) / 2, H - 12
    printf "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\""
    for (i = 1; i <= n; i++)
        printf "%.1f,%.1f ", L + (W - L - R) * step[i] / xmax, T + (H - T - B) * (ymax - loss[i]) / (ymax - ymin)
    printf "\"/>\n<polyline fill=\"none\" stroke=\"#ff7f0e\" stroke-width=\"2\" points=\""
    last = -1
    for (i = 1; i <= n; i++) if (val[i] != last) {
        printf "%.1f,%.1f ", L + (W - L - R) * step[i] / xmax, T + (H - T - B) * (ymax - val[i]) / (ymax - ymin)
        last = val[i]
    }
    printf "\"/>\n"
    printf "<text x=\"%d\" y=\"%d\" fill=\"#1f77b4\">training loss</text>\n", W - 200, T + 16
    printf "<text x=\"%d\" y=\"%d\" fill=\"#ff7f0e\">validation loss</text>\n", W - 200, T + 32
    print "</svg>"
}' "$csv" >"$out.tmp"
mv "$out.tmp" "$out"
echo "plot-loss: wrote $out"
