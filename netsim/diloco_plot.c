/*
 * diloco_plot.c: the SVG figures of `netsim --diloco`, drawn by hand.
 *
 * Two kinds of panel are enough for the experiments: lines over shared axes (loss curves) and
 * grouped bars (bytes, loss gaps), each in a box of a figure that may hold several. Axes get
 * "nice" ticks (1, 2, 5 times a power of ten) or decades on a log scale; every series has a
 * colour and a legend entry. Plain SVG 1.1 text, no script, no external style, so the figures
 * render anywhere (a browser, GitHub) and diff as text. Nothing here computes a result.
 */
#include <math.h>
#include <stdio.h>

#include "netsim.h"

#define PLOT_MARGIN_LEFT   58
#define PLOT_MARGIN_RIGHT  12
#define PLOT_MARGIN_TOP    28
#define PLOT_MARGIN_BOTTOM 40
#define PLOT_LEGEND_W      150 /* a legend sits right of the axes */
#define PLOT_TICKS         5
#define PLOT_COLOURS       8

static const char *const colours[PLOT_COLOURS] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                                  "#9467bd", "#8c564b", "#17becf", "#7f7f7f"};

typedef struct plot_area {
    double x0, y0, x1, y1; /* pixels: left, top, right, bottom */
    double lo, hi;         /* y range, in log10 when log_y */
    bool log_y;
} plot_area;

static void xml_text(FILE *f, const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else
            fputc(*s, f);
    }
}

void ns__plot_begin(FILE *f, double width, double height)
{
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"11\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            width, height, width, height);
}

void ns__plot_end(FILE *f)
{
    fputs("</svg>\n", f);
}

static double nice_step(double range)
{
    double raw = range / PLOT_TICKS;
    if (!(raw > 0))
        return 1;
    double p = pow(10, floor(log10(raw)));
    double m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

static double map_y(const plot_area *a, double v)
{
    double t = a->log_y ? log10(v) : v;
    return a->y1 - (t - a->lo) / (a->hi - a->lo) * (a->y1 - a->y0);
}

static void frame(FILE *f, const ns_plot_box *box, bool legend, plot_area *a)
{
    a->x0 = box->x + PLOT_MARGIN_LEFT;
    a->y0 = box->y + PLOT_MARGIN_TOP;
    a->x1 = box->x + box->w - PLOT_MARGIN_RIGHT - (legend ? PLOT_LEGEND_W : 0);
    a->y1 = box->y + box->h - PLOT_MARGIN_BOTTOM;
    a->log_y = box->log_y;
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"13\">",
            (a->x0 + a->x1) / 2, box->y + 17);
    xml_text(f, box->title != NULL ? box->title : "");
    fprintf(f, "</text>\n<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", (a->x0 + a->x1) / 2,
            box->y + box->h - 6);
    xml_text(f, box->x_label != NULL ? box->x_label : "");
    fprintf(f,
            "</text>\n<text transform=\"translate(%.1f,%.1f) rotate(-90)\" "
            "text-anchor=\"middle\">",
            box->x + 13, (a->y0 + a->y1) / 2);
    xml_text(f, box->y_label != NULL ? box->y_label : "");
    fprintf(f,
            "</text>\n<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
            "stroke=\"#444\"/>\n",
            a->x0, a->y0, a->x1 - a->x0, a->y1 - a->y0);
}

/* The y range (lo..hi, log10 on a log scale) and its tick marks and grid lines. */
static void y_axis(FILE *f, plot_area *a, double lo, double hi)
{
    if (a->log_y) {
        lo = floor(log10(lo > 0 ? lo : 1));
        hi = ceil(log10(hi > 0 ? hi : 10));
        hi = hi > lo ? hi : lo + 1;
    } else {
        double step = nice_step(hi - lo);
        lo = floor(lo / step) * step;
        hi = ceil(hi / step) * step;
        hi = hi > lo ? hi : lo + step;
    }
    a->lo = lo;
    a->hi = hi;
    double step = a->log_y ? 1 : nice_step(hi - lo);
    for (double t = lo; t <= hi + step * 1e-6; t += step) {
        double py = a->y1 - (t - lo) / (hi - lo) * (a->y1 - a->y0);
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>\n",
                a->x0, py, a->x1, py, a->x0 - 4, py + 4, a->log_y ? pow(10, t) : t);
    }
}

static void legend(FILE *f, const plot_area *a, const char *const *names, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        double y = a->y0 + 8 + 14.0 * (double)i;
        fprintf(f,
                "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"%s\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\">",
                a->x1 + 10, y - 8, colours[i % PLOT_COLOURS], a->x1 + 24, y + 1);
        xml_text(f, names[i]);
        fputs("</text>\n", f);
    }
}

void ns__plot_lines(FILE *f, const ns_plot_box *box, const ns_plot_series *s, size_t count)
{
    plot_area a;
    frame(f, box, count > 1, &a);
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (size_t i = 0; i < count; i++) {
        for (size_t k = 0; k < s[i].n; k++) {
            xlo = fmin(xlo, s[i].x[k]);
            xhi = fmax(xhi, s[i].x[k]);
            ylo = fmin(ylo, s[i].y[k]);
            yhi = fmax(yhi, s[i].y[k]);
        }
    }
    if (!(xhi > xlo) || !(yhi >= ylo))
        return;
    y_axis(f, &a, ylo, yhi);
    double xstep = nice_step(xhi - xlo);
    for (double t = ceil(xlo / xstep) * xstep; t <= xhi + xstep * 1e-6; t += xstep) {
        double px = a.x0 + (t - xlo) / (xhi - xlo) * (a.x1 - a.x0);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.4g</text>\n", px,
                a.y1 + 14, t);
    }
    const char *names[PLOT_COLOURS];
    for (size_t i = 0; i < count; i++) {
        fprintf(f, "<polyline fill=\"none\" stroke-width=\"1.5\" stroke=\"%s\" points=\"",
                colours[i % PLOT_COLOURS]);
        for (size_t k = 0; k < s[i].n; k++)
            fprintf(f, "%.1f,%.1f ", a.x0 + (s[i].x[k] - xlo) / (xhi - xlo) * (a.x1 - a.x0),
                    map_y(&a, s[i].y[k]));
        fputs("\"/>\n", f);
        if (i < PLOT_COLOURS)
            names[i] = s[i].name;
    }
    legend(f, &a, names, count < PLOT_COLOURS ? count : PLOT_COLOURS);
}

static void bar(FILE *f, const plot_area *a, double x, double width, double v, double clip,
                const char *colour)
{
    bool cut = clip > 0 && v > clip;
    double shown = cut ? clip : v;
    double base = a->log_y ? pow(10, a->lo) : (a->lo < 0 && a->hi > 0 ? 0 : a->lo);
    double y_top = map_y(a, shown), y_base = map_y(a, base);
    double top = fmin(y_top, y_base), height = fabs(y_base - y_top);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", x, top,
            width, height, colour);
    if (cut) /* the value, inside the top of the cut bar */
        fprintf(f,
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"9\" "
                "fill=\"white\">%.*f</text>\n",
                x + width / 2, top + 11, fabs(v) >= 100 ? 0 : 1, v);
}

void ns__plot_bars(FILE *f, const ns_plot_box *box, const char *const *groups, size_t group_count,
                   const char *const *bars, size_t bar_count, const double *values)
{
    plot_area a;
    frame(f, box, bar_count > 1, &a);
    double lo = box->log_y ? INFINITY : 0, hi = box->log_y ? 0 : 0;
    for (size_t i = 0; i < group_count * bar_count; i++) {
        double v = values[i];
        if (isnan(v) || (box->log_y && !(v > 0)))
            continue;
        v = box->y_clip > 0 && v > box->y_clip ? box->y_clip : v;
        lo = fmin(lo, v);
        hi = fmax(hi, v);
    }
    if (!(hi > lo) && !box->log_y)
        hi = lo + 1;
    if (!isfinite(lo))
        return;
    y_axis(f, &a, box->log_y ? lo / 2 : lo, hi);
    double gw = (a.x1 - a.x0) / (double)group_count, bw = gw * 0.8 / (double)bar_count;
    for (size_t g = 0; g < group_count; g++) {
        double gx = a.x0 + gw * (double)g + gw * 0.1;
        for (size_t b = 0; b < bar_count; b++) {
            double v = values[g * bar_count + b];
            if (isnan(v) || (box->log_y && !(v > 0)))
                continue;
            bar(f, &a, gx + bw * (double)b, bw * 0.9, v, box->y_clip, colours[b % PLOT_COLOURS]);
        }
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", gx + gw * 0.4, a.y1 + 14);
        xml_text(f, groups[g]);
        fputs("</text>\n", f);
    }
    if (bar_count > 1)
        legend(f, &a, bars, bar_count < PLOT_COLOURS ? bar_count : PLOT_COLOURS);
}
