#include "trainer/model_summary.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a growing text buffer ---- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s)
{
    sb_putn(b, s, strlen(s));
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    sb_putn(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void sb_repeat(sbuf *b, const char *s, int n)
{
    for (int i = 0; i < n; i++)
        sb_puts(b, s);
}

/* ---- rich's text layout, for one table cell ---- */

/* Terminal cells of text[0..n): one per UTF-8 code point (Keras names are narrow). */
static int cells(const char *s, size_t n)
{
    int c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            c++;
    return c;
}

/* Byte offset of the cell-th code point at or after byte `from`. */
static size_t advance(const char *s, size_t n, size_t from, int count)
{
    size_t i = from;
    while (i < n && count > 0) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80)
            i++;
        count--;
    }
    return i;
}

static bool is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

#define MAX_BREAKS 256

/* rich's divide_line(text, width, fold=False), as used for table cells (whose overflow is
 * "ellipsis"): the byte offsets where lines start (after the first). Words are runs
 * "\s*\S+\s*"; a word that does not fit on the current line starts a new one, even when it is
 * longer than the width (it is cut with an ellipsis later). */
static int divide_line(const char *s, size_t n, int width, size_t *breaks)
{
    int nb = 0, pos = 0;
    size_t i = 0;
    while (i < n) {
        size_t start = i;
        while (i < n && is_space(s[i]))
            i++;
        if (i == n)
            break; /* trailing white space only: no word */
        while (i < n && !is_space(s[i]))
            i++;
        size_t word_end = i; /* end of the word without its trailing white space */
        while (i < n && is_space(s[i]))
            i++;
        int wlen = cells(s + start, word_end - start);
        int wfull = cells(s + start, i - start);
        if (pos + wlen > width) {
            if (wlen > width) {
                if (start > 0 && nb < MAX_BREAKS)
                    breaks[nb++] = start;
                pos = wfull;
            } else if (pos > 0 && start > 0) {
                if (nb < MAX_BREAKS)
                    breaks[nb++] = start;
                pos = wfull;
            }
        } else {
            pos += wfull;
        }
    }
    return nb;
}

#define MAX_CELL_LINES (MAX_BREAKS + 1)

typedef struct cell_text {
    int n_lines;
    char *lines[MAX_CELL_LINES]; /* each exactly `width` cells wide, padding included */
} cell_text;

static void cell_free(cell_text *c)
{
    for (int i = 0; i < c->n_lines; i++)
        free(c->lines[i]);
    c->n_lines = 0;
}

/* Lays text out in `width` cells, justified left or right, as rich's Text.wrap does for a
 * table cell: each line loses the trailing white space that sticks out (all of it when right
 * justified), then a line still too long is cut to width - 1 cells plus an ellipsis. */
static int cell_layout(const char *text, int width, bool right, cell_text *out)
{
    static const char ellipsis[] = "\xe2\x80\xa6"; /* U+2026 */
    size_t n = strlen(text);
    size_t breaks[MAX_BREAKS];
    int nb = divide_line(text, n, width, breaks);
    out->n_lines = 0;
    for (int l = 0; l <= nb; l++) {
        size_t a = l == 0 ? 0 : breaks[l - 1], e = l == nb ? n : breaks[l];
        if (right) {
            while (e > a && is_space(text[e - 1]))
                e--;
        } else {
            int len = cells(text + a, e - a);
            while (e > a && len > width && is_space(text[e - 1])) {
                e--;
                len--;
            }
        }
        bool cut = cells(text + a, e - a) > width;
        if (cut)
            e = advance(text, n, a, width - 1);
        int used = cells(text + a, e - a) + (cut ? 1 : 0);
        char *line =
            malloc((e - a) + (cut ? 3 : 0) + (size_t)(width > used ? width - used : 0) + 1);
        if (line == NULL)
            return ERR_NOMEM;
        size_t k = 0;
        if (right)
            for (int p = used; p < width; p++)
                line[k++] = ' ';
        memcpy(line + k, text + a, e - a);
        k += e - a;
        if (cut) {
            memcpy(line + k, ellipsis, 3);
            k += 3;
        }
        if (!right)
            for (int p = used; p < width; p++)
                line[k++] = ' ';
        line[k] = '\0';
        out->lines[out->n_lines++] = line;
    }
    return ERR_OK;
}

/* ---- Keras's formatting ---- */

/* "1,234,567" */
static void fmt_count(size_t v, char *buf, size_t len)
{
    char digits[32];
    int n = snprintf(digits, sizeof digits, "%zu", v);
    size_t k = 0;
    for (int i = 0; i < n && k + 1 < len; i++) {
        if (i > 0 && (n - i) % 3 == 0 && k + 1 < len)
            buf[k++] = ',';
        if (k + 1 < len)
            buf[k++] = digits[i];
    }
    buf[k] = '\0';
}

/* readable_memory_size(): "{:.2f} {unit}" with 1024 steps. */
static void fmt_size(double bytes, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KB", "MB", "GB", "TB", "PB"};
    for (int i = 0; i < 6; i++) {
        if (bytes / 1024 < 1) {
            snprintf(buf, len, "%.2f %s", bytes, units[i]);
            return;
        }
        bytes /= 1024;
    }
    snprintf(buf, len, "%.2f %s", bytes, units[5]);
}

static void fmt_shape(sbuf *b, const model_shape *s, int64_t batch)
{
    sb_puts(b, "(");
    for (int d = 0; d < s->rank; d++) {
        int64_t v = d == 0 ? batch : s->dims[d];
        if (d > 0)
            sb_puts(b, ", ");
        if (v < 0)
            sb_puts(b, "None");
        else
            sb_printf(b, "%lld", (long long)v);
    }
    sb_puts(b, ")");
}

/* ---- rich's column widths ---- */

/* Python's round(a / b) for a >= 0, b > 0: half to even. */
static int round_div(int a, int b)
{
    int q = a / b, r = a % b;
    if (2 * r > b || (2 * r == b && (q & 1)))
        q++;
    return q;
}

/* rich Table._calculate_column_widths for columns of fixed width: each is its width plus 2
 * for padding, capped at the room inside the borders; if they do not fit, ratio_reduce takes
 * the excess off evenly, left to right. Results include the padding. */
static void table_widths(int line_length, int ncols, const int *fixed, int *out)
{
    int inner = line_length - (ncols + 1);
    int total = 0;
    for (int i = 0; i < ncols; i++) {
        out[i] = fixed[i] + 2 < inner ? fixed[i] + 2 : inner;
        total += out[i];
    }
    if (total <= inner)
        return;
    int excess = total - inner, ratio_total = 0;
    for (int i = 0; i < ncols; i++)
        ratio_total += out[i] > 0 ? 1 : 0;
    for (int i = 0; i < ncols && ratio_total > 0; i++) {
        if (out[i] == 0)
            continue;
        int d = round_div(excess, ratio_total);
        if (d > out[i])
            d = out[i];
        out[i] -= d;
        excess -= d;
        ratio_total--;
    }
}

static void rule(sbuf *b, int ncols, const int *w, const char *l, const char *h, const char *m,
                 const char *r)
{
    sb_puts(b, l);
    for (int i = 0; i < ncols; i++) {
        sb_repeat(b, h, w[i]);
        sb_puts(b, i + 1 < ncols ? m : r);
    }
    sb_puts(b, "\n");
}

/* One table row from its cell texts; header rows align to the bottom, others to the top. */
static int table_row(sbuf *b, int ncols, const int *w, const char *const *text, const bool *right,
                     const char *vbar, bool header)
{
    cell_text c[4];
    int rc = ERR_OK, height = 1;
    for (int i = 0; i < ncols; i++)
        c[i].n_lines = 0;
    for (int i = 0; i < ncols && rc == ERR_OK; i++) {
        rc = cell_layout(text[i], w[i] - 2, right[i], &c[i]);
        if (c[i].n_lines > height)
            height = c[i].n_lines;
    }
    for (int line = 0; rc == ERR_OK && line < height; line++) {
        sb_puts(b, vbar);
        for (int i = 0; i < ncols; i++) {
            int idx = header ? line - (height - c[i].n_lines) : line;
            sb_puts(b, " ");
            if (idx >= 0 && idx < c[i].n_lines)
                sb_puts(b, c[i].lines[idx]);
            else
                sb_repeat(b, " ", w[i] - 2);
            sb_puts(b, " ");
            sb_puts(b, vbar);
        }
        sb_puts(b, "\n");
    }
    for (int i = 0; i < ncols; i++)
        cell_free(&c[i]);
    return rc;
}

/* ---- which layout Keras picks ---- */

/* Keras treats a Functional model as "sequential-like" (three columns) when every depth of
 * its graph holds one node with at most one input tensor and no layer is called twice. */
static int functional_is_chain(const model *m, bool *chain)
{
    int total = 0;
    for (int i = 0; i < m->n_layers; i++)
        total += m->layers[i].n_nodes;
    int *base = malloc(((size_t)m->n_layers + 1) * sizeof *base);
    int *depth = malloc(((size_t)total + 1) * sizeof *depth);
    int *count = calloc((size_t)total + 1, sizeof *count);
    if (base == NULL || depth == NULL || count == NULL) {
        free(base);
        free(depth);
        free(count);
        return ERR_NOMEM;
    }
    for (int i = 0, k = 0; i < m->n_layers; i++) {
        base[i] = k;
        k += m->layers[i].n_nodes;
    }
    for (int i = 0; i < total; i++)
        depth[i] = -1;
    /* Depth as Keras's map_graph: outputs 0, a producer one more than its deepest consumer;
     * only nodes the outputs depend on count. m->order lists producers first. */
    for (int i = 0; i < m->n_outputs; i++)
        depth[base[m->outputs[i].layer] + m->outputs[i].node] = 0;
    for (int o = m->n_order - 1; o >= 0; o--) {
        const model_ref *r = &m->order[o];
        int d = depth[base[r->layer] + r->node];
        if (d < 0)
            continue;
        const model_node *nd = &m->layers[r->layer].nodes[r->node];
        for (int k = 0; k < nd->n_in; k++) {
            int *dp = &depth[base[nd->in[k].layer] + nd->in[k].node];
            if (*dp < d + 1)
                *dp = d + 1;
        }
    }
    bool ok = true;
    for (int i = 0; i < m->n_layers && ok; i++) {
        int used = 0;
        for (int j = 0; j < m->layers[i].n_nodes; j++) {
            int d = depth[base[i] + j];
            if (d < 0)
                continue;
            used++;
            if (++count[d] > 1 || m->layers[i].nodes[j].n_in > 1)
                ok = false;
        }
        if (used > 1)
            ok = false;
    }
    *chain = ok;
    free(base);
    free(depth);
    free(count);
    return ERR_OK;
}

/* ---- the summary ---- */

static size_t layer_params(const model *m, int l)
{
    size_t n = 0;
    const model_layer *L = &m->layers[l];
    for (int w = L->weight0; w < L->weight0 + L->n_weights && w < m->n_weights; w++)
        n += m->weights[w].count;
    return n;
}

/* The batch extent Keras would show: a fixed batch size shared by every input, else None. */
static int64_t shown_batch(const model *m)
{
    int64_t b = -2;
    for (int i = 0; i < m->n_inputs; i++) {
        int64_t d = m->layers[m->inputs[i].layer].input_shape.dims[0];
        if (b == -2)
            b = d;
        else if (b != d)
            return -1;
    }
    return b < 0 ? -1 : b;
}

int model_summary_text_ex(const model *m, int line_length, char **out, err_info *e)
{
    if (!m->built)
        return err_set(e, ERR_USAGE, "model_summary: model \"%s\" is not built", m->name);
    if (line_length == 0)
        line_length = 76;
    bool chain = true;
    if (!m->sequential) {
        int rc = functional_is_chain(m, &chain);
        if (rc != ERR_OK)
            return err_set(e, rc, "model_summary: out of memory");
    }
    static const double pos3[] = {0.45, 0.80, 1.0}, pos4[] = {0.3, 0.56, 0.74, 1.0};
    static const char *const head[] = {"Layer (type)", "Output Shape", "Param #", "Connected to"};
    static const bool right[] = {false, false, true, false};
    int ncols = chain ? 3 : 4;
    const double *pos = chain ? pos3 : pos4;
    int fixed[4], w[4], cur = 0;
    for (int i = 0; i < ncols; i++) {
        fixed[i] = (int)(pos[i] * line_length) - cur;
        if (fixed[i] < 4)
            return err_set(e, ERR_RANGE, "model_summary: line length %d is too small", line_length);
        cur += fixed[i];
    }
    table_widths(line_length, ncols, fixed, w);
    int64_t batch = shown_batch(m);

    sbuf b = {NULL, 0, 0, false}, cell[4];
    memset(cell, 0, sizeof cell);
    int rc = ERR_OK;
    sb_printf(&b, "Model: \"%s\"\n", m->name);
    rule(&b, ncols, w, "┏", "━", "┳", "┓");
    rc = table_row(&b, ncols, w, head, right, "┃", true);
    rule(&b, ncols, w, "┡", "━", "╇", "┩");
    bool first = true;
    for (int l = 0; rc == ERR_OK && l < m->n_layers; l++) {
        const model_layer *L = &m->layers[l];
        /* Keras's Sequential.layers leaves out the leading InputLayer. */
        if (m->sequential && l == 0 && L->kind == LAYER_INPUT)
            continue;
        for (int i = 0; i < 4; i++) {
            cell[i].len = 0;
            sb_puts(&cell[i], "");
        }
        sb_printf(&cell[0], "%s (%s)", L->name, model_kind_class_name(L->kind));
        /* Output shape: the outputs of the layer's last call. */
        const model_node *nd = &L->nodes[L->n_nodes - 1];
        if (nd->n_out == 1) {
            fmt_shape(&cell[1], &nd->out[0], batch);
        } else {
            sb_puts(&cell[1], "[");
            for (int k = 0; k < nd->n_out; k++) {
                if (k > 0)
                    sb_puts(&cell[1], ", ");
                fmt_shape(&cell[1], &nd->out[k], batch);
            }
            sb_puts(&cell[1], "]");
        }
        char num[40];
        fmt_count(layer_params(m, l), num, sizeof num);
        sb_puts(&cell[2], num);
        for (int j = 0; j < L->n_nodes; j++)
            for (int k = 0; k < L->nodes[j].n_in; k++) {
                const model_ref *r = &L->nodes[j].in[k];
                sb_printf(&cell[3], "%s%s[%d][%d]", cell[3].len ? ", " : "",
                          m->layers[r->layer].name, r->node, r->tensor);
            }
        if (cell[3].len == 0)
            sb_puts(&cell[3], "-");
        if (cell[0].oom || cell[1].oom || cell[2].oom || cell[3].oom) {
            rc = ERR_NOMEM;
            break;
        }
        if (!first)
            rule(&b, ncols, w, "├", "─", "┼", "┤");
        first = false;
        const char *texts[4] = {cell[0].p, cell[1].p, cell[2].p, cell[3].p};
        rc = table_row(&b, ncols, w, texts, right, "│", false);
    }
    rule(&b, ncols, w, "└", "─", "┴", "┘");
    size_t n_non = m->n_params - m->n_trainable;
    char num[40], size[40];
    fmt_count(m->n_params, num, sizeof num);
    fmt_size((double)m->n_params * 4.0, size, sizeof size);
    sb_printf(&b, " Total params: %s (%s)\n", num, size);
    fmt_count(m->n_trainable, num, sizeof num);
    fmt_size((double)m->n_trainable * 4.0, size, sizeof size);
    sb_printf(&b, " Trainable params: %s (%s)\n", num, size);
    fmt_count(n_non, num, sizeof num);
    fmt_size((double)n_non * 4.0, size, sizeof size);
    sb_printf(&b, " Non-trainable params: %s (%s)\n", num, size);
    for (int i = 0; i < 4; i++)
        free(cell[i].p);
    if (rc == ERR_OK && b.oom)
        rc = ERR_NOMEM;
    if (rc != ERR_OK) {
        free(b.p);
        return err_set(e, rc, "model_summary: out of memory");
    }
    *out = b.p;
    return ERR_OK;
}

int model_summary_text(const model *m, char **out, err_info *e)
{
    return model_summary_text_ex(m, 0, out, e);
}
