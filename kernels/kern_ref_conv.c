/* Plain-loop reference convolution and pooling: the oracle the tests compare the optimised
 * kernels against. Written for obviousness, not speed; sums run in double so that the oracle's
 * own rounding error is negligible next to the optimised float32 kernels'. */

#include "kernels/kern_conv.h"
#include "kernels/kern_pool.h"

#include <math.h>
#include <string.h>

/* Input coordinate of tap t of output coordinate o, or -1 when it falls into the padding. */
static int64_t ref_in(int64_t o, int64_t t, int64_t s, int64_t d, int64_t pad, int64_t in)
{
    int64_t i = o * s - pad + t * d;
    return (i >= 0 && i < in) ? i : -1;
}

void kern_ref_conv2d_forward(const kern_conv_geom *g, const float *x, const float *k,
                             const float *bias, float *y)
{
    for (int64_t b = 0; b < g->n; b++)
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t ox = 0; ox < g->ow; ox++)
                for (int64_t co = 0; co < g->cout; co++) {
                    double acc = bias ? (double)bias[co] : 0.0;
                    for (int64_t ky = 0; ky < g->kh; ky++) {
                        int64_t iy = ref_in(oy, ky, g->sh, g->dh, g->pad_top, g->h);
                        if (iy < 0)
                            continue;
                        for (int64_t kx = 0; kx < g->kw; kx++) {
                            int64_t ix = ref_in(ox, kx, g->sw, g->dw, g->pad_left, g->w);
                            if (ix < 0)
                                continue;
                            for (int64_t ci = 0; ci < g->cin; ci++)
                                acc += (double)x[((b * g->h + iy) * g->w + ix) * g->cin + ci] *
                                       (double)k[((ky * g->kw + kx) * g->cin + ci) * g->cout + co];
                        }
                    }
                    y[((b * g->oh + oy) * g->ow + ox) * g->cout + co] = (float)acc;
                }
}

void kern_ref_conv2d_backward(const kern_conv_geom *g, const float *x, const float *k,
                              const float *dy, float *dx, float *dk, float *db)
{
    if (db)
        for (int64_t co = 0; co < g->cout; co++) {
            double acc = 0.0;
            for (int64_t r = 0; r < g->n * g->oh * g->ow; r++)
                acc += (double)dy[r * g->cout + co];
            db[co] = (float)((double)db[co] + acc);
        }
    if (dk)
        for (int64_t ky = 0; ky < g->kh; ky++)
            for (int64_t kx = 0; kx < g->kw; kx++)
                for (int64_t ci = 0; ci < g->cin; ci++)
                    for (int64_t co = 0; co < g->cout; co++) {
                        double acc = 0.0;
                        for (int64_t b = 0; b < g->n; b++)
                            for (int64_t oy = 0; oy < g->oh; oy++) {
                                int64_t iy = ref_in(oy, ky, g->sh, g->dh, g->pad_top, g->h);
                                if (iy < 0)
                                    continue;
                                for (int64_t ox = 0; ox < g->ow; ox++) {
                                    int64_t ix = ref_in(ox, kx, g->sw, g->dw, g->pad_left, g->w);
                                    if (ix < 0)
                                        continue;
                                    acc +=
                                        (double)x[((b * g->h + iy) * g->w + ix) * g->cin + ci] *
                                        (double)dy[((b * g->oh + oy) * g->ow + ox) * g->cout + co];
                                }
                            }
                        size_t i = (size_t)(((ky * g->kw + kx) * g->cin + ci) * g->cout + co);
                        dk[i] = (float)((double)dk[i] + acc);
                    }
    if (dx)
        /* Gather form: each input cell sums dy * k over the (output, tap) pairs that read it;
         * output oy reads input row iy through tap ky when oy * sh - pad_top + ky * dh == iy. */
        for (int64_t b = 0; b < g->n; b++)
            for (int64_t iy = 0; iy < g->h; iy++)
                for (int64_t ix = 0; ix < g->w; ix++)
                    for (int64_t ci = 0; ci < g->cin; ci++) {
                        double acc = 0.0;
                        for (int64_t ky = 0; ky < g->kh; ky++) {
                            int64_t ny = iy + g->pad_top - ky * g->dh, oy = ny / g->sh;
                            if (ny < 0 || ny % g->sh != 0 || oy >= g->oh)
                                continue;
                            for (int64_t kx = 0; kx < g->kw; kx++) {
                                int64_t nx = ix + g->pad_left - kx * g->dw, ox = nx / g->sw;
                                if (nx < 0 || nx % g->sw != 0 || ox >= g->ow)
                                    continue;
                                const float *d = dy + ((b * g->oh + oy) * g->ow + ox) * g->cout;
                                const float *kk = k + ((ky * g->kw + kx) * g->cin + ci) * g->cout;
                                for (int64_t co = 0; co < g->cout; co++)
                                    acc += (double)d[co] * (double)kk[co];
                            }
                        }
                        dx[((b * g->h + iy) * g->w + ix) * g->cin + ci] = (float)acc;
                    }
}

/* Pooling window of output coordinate o, clipped to the input: [*lo, *hi). */
static void ref_window(int64_t o, int64_t s, int64_t p, int64_t pad, int64_t in, int64_t *lo,
                       int64_t *hi)
{
    int64_t a = o * s - pad, e = a + p;
    *lo = a < 0 ? 0 : a;
    *hi = e > in ? in : e;
}

void kern_ref_maxpool2d_forward(const kern_pool_geom *g, const float *x, float *y, int32_t *argmax)
{
    for (int64_t b = 0; b < g->n; b++)
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t ox = 0; ox < g->ow; ox++)
                for (int64_t ch = 0; ch < g->c; ch++) {
                    int64_t y0, y1, x0, x1, best_i = -1;
                    float best = -INFINITY;
                    ref_window(oy, g->sh, g->ph, g->pad_top, g->h, &y0, &y1);
                    ref_window(ox, g->sw, g->pw, g->pad_left, g->w, &x0, &x1);
                    for (int64_t iy = y0; iy < y1; iy++)
                        for (int64_t ix = x0; ix < x1; ix++) {
                            int64_t i = (iy * g->w + ix) * g->c + ch;
                            float v = x[b * g->h * g->w * g->c + i];
                            /* Strictly greater: the first of equal maxima wins, like TF. */
                            if (best_i < 0 || v > best) {
                                best = v;
                                best_i = i;
                            }
                        }
                    int64_t o = ((b * g->oh + oy) * g->ow + ox) * g->c + ch;
                    y[o] = best_i < 0 ? 0.0f : best;
                    if (argmax)
                        argmax[o] = (int32_t)best_i;
                }
}

void kern_ref_maxpool2d_backward(const kern_pool_geom *g, const float *dy, const int32_t *argmax,
                                 float *dx)
{
    int64_t per = g->h * g->w * g->c;
    memset(dx, 0, sizeof(float) * (size_t)(g->n * per));
    for (int64_t b = 0; b < g->n; b++)
        for (int64_t o = 0; o < g->oh * g->ow * g->c; o++) {
            int64_t i = b * g->oh * g->ow * g->c + o;
            if (argmax[i] >= 0)
                dx[b * per + argmax[i]] += dy[i];
        }
}

void kern_ref_avgpool2d_forward(const kern_pool_geom *g, const float *x, float *y)
{
    for (int64_t b = 0; b < g->n; b++)
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t ox = 0; ox < g->ow; ox++)
                for (int64_t ch = 0; ch < g->c; ch++) {
                    int64_t y0, y1, x0, x1;
                    ref_window(oy, g->sh, g->ph, g->pad_top, g->h, &y0, &y1);
                    ref_window(ox, g->sw, g->pw, g->pad_left, g->w, &x0, &x1);
                    double acc = 0.0;
                    for (int64_t iy = y0; iy < y1; iy++)
                        for (int64_t ix = x0; ix < x1; ix++)
                            acc += (double)x[((b * g->h + iy) * g->w + ix) * g->c + ch];
                    int64_t cnt = (y1 - y0) * (x1 - x0);
                    y[((b * g->oh + oy) * g->ow + ox) * g->c + ch] =
                        cnt > 0 ? (float)(acc / (double)cnt) : 0.0f;
                }
}

void kern_ref_avgpool2d_backward(const kern_pool_geom *g, const float *dy, float *dx)
{
    memset(dx, 0, sizeof(float) * (size_t)(g->n * g->h * g->w * g->c));
    for (int64_t b = 0; b < g->n; b++)
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t ox = 0; ox < g->ow; ox++) {
                int64_t y0, y1, x0, x1;
                ref_window(oy, g->sh, g->ph, g->pad_top, g->h, &y0, &y1);
                ref_window(ox, g->sw, g->pw, g->pad_left, g->w, &x0, &x1);
                int64_t cnt = (y1 - y0) * (x1 - x0);
                for (int64_t ch = 0; ch < g->c; ch++) {
                    float v = dy[((b * g->oh + oy) * g->ow + ox) * g->c + ch] / (float)cnt;
                    for (int64_t iy = y0; iy < y1; iy++)
                        for (int64_t ix = x0; ix < x1; ix++)
                            dx[((b * g->h + iy) * g->w + ix) * g->c + ch] += v;
                }
            }
}
