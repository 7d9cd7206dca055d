/* Optimizers and schedules: several steps of every rule (and its options, clipping, weight decay
 * and schedules) against an independent double-precision transcription of the Keras 3 formulas;
 * slot layout, state reuse, configuration errors. */
#include "trainer/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/rng.h"
#include "test_util.h"

/* Input [-1, 4] -> Dense(3) -> BatchNormalization: trainable kernel [4, 3], bias [3], gamma [3],
 * beta [3] (21 elements); non-trainable moving_mean, moving_variance. */
static model *small_model(void)
{
    model *m = NULL;
    err_info e = {0};
    CHECK(model_create(&m, &e) == ERR_OK);
    int in = -1, d = -1, bn = -1;
    CHECK(model_layer_add(m, LAYER_INPUT, "input", &in, &e) == ERR_OK);
    m->layers[in].input_shape.rank = 2;
    m->layers[in].input_shape.dims[0] = -1;
    m->layers[in].input_shape.dims[1] = 4;
    CHECK(model_layer_add(m, LAYER_DENSE, "dense", &d, &e) == ERR_OK);
    m->layers[d].cfg.units = 3;
    model_ref r = {in, 0, 0};
    CHECK(model_node_add(m, d, 1, &r, &e) == ERR_OK);
    CHECK(model_layer_add(m, LAYER_BATCHNORM, "bn", &bn, &e) == ERR_OK);
    r.layer = d;
    CHECK(model_node_add(m, bn, 1, &r, &e) == ERR_OK);
    model_ref a = {in, 0, 0}, b = {bn, 0, 0};
    CHECK(model_inputs_set(m, 1, &a, &e) == ERR_OK);
    CHECK(model_outputs_set(m, 1, &b, &e) == ERR_OK);
    int rc = model_build(m, &e);
    if (rc != ERR_OK)
        fprintf(stderr, "model_build: %s\n", e.msg);
    CHECK(rc == ERR_OK);
    CHECK(m->n_trainable == 21 && m->n_params == 27);
    for (size_t i = 0; i < m->n_params; i++)
        m->params[i] = (float)(0.1 * (double)i - 1.0);
    return m;
}

/* ---- the reference: Keras 3 formulas in double, written out independently ---- */

enum { N = 21, STEPS = 6 };
static const double PI = 3.14159265358979323846;

typedef struct ref {
    double p[N];
    double s[3][N];
} ref;

static double ref_lr(const model_schedule *s, int64_t step)
{
    double t = (double)step;
    if (s->kind == SCHED_EXPONENTIAL) {
        double e = t / s->decay_steps;
        return s->initial * pow(s->decay_rate, s->staircase ? floor(e) : e);
    }
    if (s->kind == SCHED_PIECEWISE) {
        int i = 0;
        while (i < s->n_bounds && t > s->bounds[i])
            i++;
        return s->values[i];
    }
    if (s->kind == SCHED_COSINE) {
        double f = fmin(t, s->decay_steps) / s->decay_steps;
        return s->initial * (s->alpha + (1 - s->alpha) * (1 + cos(PI * f)) / 2);
    }
    return s->initial;
}

/* seg: the trainable weights' [offset, offset + count) for clipnorm. */
static void ref_step(const model_optim_config *c, ref *r, const float *gf, int64_t iter,
                     const model *m)
{
    double g[N];
    for (int i = 0; i < N; i++)
        g[i] = gf[i];
    if (c->clipnorm > 0) {
        for (int w = 0; w < m->n_weights; w++) {
            const model_weight *W = &m->weights[w];
            if (!W->trainable)
                continue;
            double ss = 0;
            for (size_t i = W->offset; i < W->offset + W->count; i++)
                ss += g[i] * g[i];
            double nrm = sqrt(ss);
            if (nrm > c->clipnorm)
                for (size_t i = W->offset; i < W->offset + W->count; i++)
                    g[i] *= c->clipnorm / nrm;
        }
    }
    if (c->global_clipnorm > 0) {
        double ss = 0;
        for (int i = 0; i < N; i++)
            ss += g[i] * g[i];
        double nrm = sqrt(ss);
        if (nrm > c->global_clipnorm)
            for (int i = 0; i < N; i++)
                g[i] *= c->global_clipnorm / nrm;
    }
    if (c->clipvalue > 0)
        for (int i = 0; i < N; i++)
            g[i] = fmax(-c->clipvalue, fmin(c->clipvalue, g[i]));
    double lr = ref_lr(&c->lr, iter);
    double t = (double)(iter + 1);
    for (int i = 0; i < N; i++)
        r->p[i] -= r->p[i] * c->weight_decay * lr;
    double b1 = c->beta_1, b2 = c->beta_2, eps = c->epsilon;
    for (int i = 0; i < N; i++) {
        double gi = g[i];
        double *p = &r->p[i], *s0 = &r->s[0][i], *s1 = &r->s[1][i], *s2 = &r->s[2][i];
        switch (c->kind) {
        case OPTIM_SGD:
            if (c->momentum > 0) {
                *s0 = c->momentum * *s0 - lr * gi; /* velocity */
                *p += c->nesterov ? c->momentum * *s0 - lr * gi : *s0;
            } else {
                *p -= lr * gi;
            }
            break;
        case OPTIM_ADAM:
        case OPTIM_ADAMW: {
            *s0 = b1 * *s0 + (1 - b1) * gi;
            *s1 = b2 * *s1 + (1 - b2) * gi * gi;
            double v = *s1;
            if (c->amsgrad) {
                *s2 = fmax(*s2, *s1);
                v = *s2;
            }
            double lr_t = lr * sqrt(1 - pow(b2, t)) / (1 - pow(b1, t));
            *p -= lr_t * *s0 / (sqrt(v) + eps);
            break;
        }
        case OPTIM_RMSPROP: {
            double *avg = c->momentum > 0 ? s2 : s1, *mom = s1;
            *s0 = c->rho * *s0 + (1 - c->rho) * gi * gi;
            double den = *s0;
            if (c->centered) {
                *avg = c->rho * *avg + (1 - c->rho) * gi;
                den -= *avg * *avg;
            }
            double inc = lr * gi / sqrt(den + eps);
            if (c->momentum > 0) {
                *mom = c->momentum * *mom + inc;
                *p -= *mom;
            } else {
                *p -= inc;
            }
            break;
        }
        case OPTIM_ADAGRAD:
            *s0 += gi * gi;
            *p -= lr * gi / sqrt(*s0 + eps);
            break;
        case OPTIM_NADAM: {
            /* mu_k = beta_1 (1 - 0.5 * 0.96^k); prod over k <= t and k <= t + 1. */
            double prod_t = 1;
            for (int k = 1; k <= (int)t; k++)
                prod_t *= b1 * (1 - 0.5 * pow(0.96, k));
            double mu_t = b1 * (1 - 0.5 * pow(0.96, t));
            double mu_t1 = b1 * (1 - 0.5 * pow(0.96, t + 1));
            double prod_t1 = prod_t * mu_t1;
            *s0 = b1 * *s0 + (1 - b1) * gi;
            *s1 = b2 * *s1 + (1 - b2) * gi * gi;
            double mhat = mu_t1 * *s0 / (1 - prod_t1) + (1 - mu_t) * gi / (1 - prod_t);
            double vhat = *s1 / (1 - pow(b2, t));
            *p -= lr * mhat / (sqrt(vhat) + eps);
            break;
        }
        case OPTIM_COUNT:
            break;
        }
    }
}

/* ---- the cases ---- */

typedef struct tcase {
    const char *name;
    model_optim_config c;
    int grad_kind; /* 0 random in [-1, 1]; 1 with tiny gamma/beta gradients */
} tcase;

static model_optim_config cfg(optim_kind k, double lr)
{
    model_optim_config c = model_optim_config_default(k);
    c.lr.initial = lr;
    return c;
}

static void make_grads(rng *r, float *g, int kind)
{
    for (int i = 0; i < N; i++) {
        g[i] = (float)(2 * rng_uniform(r) - 1);
        if (kind == 1 && i >= 15)
            g[i] *= 0.01f;
    }
}

static void run_case(const tcase *tc)
{
    model *m = small_model();
    m->train.optim = tc->c;
    optim *o = NULL;
    err_info e = {0};
    int rc = optim_create(m, &o, &e);
    EXPECT_MSG(rc == ERR_OK, "%s: %s", tc->name, e.msg);
    if (rc != ERR_OK) {
        model_destroy(m);
        return;
    }
    EXPECT_MSG(m->opt.n_slots == optim_slot_count(&tc->c), "%s", tc->name);
    ref r;
    memset(&r, 0, sizeof r);
    for (int i = 0; i < N; i++)
        r.p[i] = m->params[i];
    if (tc->c.kind == OPTIM_ADAGRAD)
        for (int i = 0; i < N; i++)
            r.s[0][i] = tc->c.initial_accumulator_value;
    float frozen[6];
    memcpy(frozen, m->params + N, sizeof frozen);
    rng g_rng;
    rng_seed(&g_rng, 2024, 1);
    float g[N];
    int bad = 0;
    for (int step = 0; step < STEPS; step++) {
        make_grads(&g_rng, g, tc->grad_kind);
        ref_step(&tc->c, &r, g, step, m);
        EXPECT(optim_step(o, m, g, &e) == ERR_OK);
        for (int i = 0; i < N; i++) {
            if (!test_close(m->params[i], r.p[i], 2e-5, 2e-6)) {
                if (bad++ < 4)
                    fprintf(stderr, "%s: step %d param %d: %.9g, reference %.9g\n", tc->name,
                            step + 1, i, (double)m->params[i], r.p[i]);
            }
            for (int k = 0; k < m->opt.n_slots; k++) {
                double want = r.s[k][i];
                float got = m->opt.slots[(size_t)k * N + (size_t)i];
                if (!test_close(got, want, 2e-5, 1e-7)) {
                    if (bad++ < 4)
                        fprintf(stderr, "%s: step %d slot %d[%d]: %.9g, reference %.9g\n", tc->name,
                                step + 1, k, i, (double)got, want);
                }
            }
        }
    }
    EXPECT_MSG(bad == 0, "%s: %d mismatches", tc->name, bad);
    EXPECT(m->opt.iterations == STEPS);
    EXPECT_MSG(memcmp(frozen, m->params + N, sizeof frozen) == 0, "%s: non-trainable changed",
               tc->name);
    optim_destroy(o);
    model_destroy(m);
}

static void test_rules(void)
{
    tcase cases[40];
    int n = 0;
    model_optim_config c;

    cases[n++] = (tcase){"sgd", cfg(OPTIM_SGD, 0.1), 0};
    c = cfg(OPTIM_SGD, 0.1);
    c.momentum = 0.9;
    cases[n++] = (tcase){"sgd momentum", c, 0};
    c.nesterov = true;
    cases[n++] = (tcase){"sgd nesterov", c, 0};
    c.weight_decay = 0.05;
    cases[n++] = (tcase){"sgd nesterov weight_decay", c, 0};

    cases[n++] = (tcase){"adam", cfg(OPTIM_ADAM, 0.01), 0};
    c = cfg(OPTIM_ADAM, 0.01);
    c.amsgrad = true;
    c.beta_1 = 0.8;
    c.beta_2 = 0.95;
    c.epsilon = 1e-3;
    cases[n++] = (tcase){"adam amsgrad", c, 0};
    c = cfg(OPTIM_ADAMW, 0.01);
    cases[n++] = (tcase){"adamw default decay", c, 0};
    c.weight_decay = 0.5;
    cases[n++] = (tcase){"adamw", c, 0};

    cases[n++] = (tcase){"rmsprop", cfg(OPTIM_RMSPROP, 0.01), 0};
    c = cfg(OPTIM_RMSPROP, 0.01);
    c.momentum = 0.5;
    cases[n++] = (tcase){"rmsprop momentum", c, 0};
    c = cfg(OPTIM_RMSPROP, 0.01);
    c.centered = true;
    c.rho = 0.8;
    cases[n++] = (tcase){"rmsprop centered", c, 0};
    c.momentum = 0.3;
    cases[n++] = (tcase){"rmsprop momentum centered", c, 0};

    cases[n++] = (tcase){"adagrad", cfg(OPTIM_ADAGRAD, 0.1), 0};
    c = cfg(OPTIM_ADAGRAD, 0.1);
    c.initial_accumulator_value = 0.0;
    c.epsilon = 1e-4;
    cases[n++] = (tcase){"adagrad zero accumulator", c, 0};

    cases[n++] = (tcase){"nadam", cfg(OPTIM_NADAM, 0.01), 0};
    c = cfg(OPTIM_NADAM, 0.02);
    c.beta_1 = 0.7;
    c.weight_decay = 0.1;
    cases[n++] = (tcase){"nadam beta_1 weight_decay", c, 0};

    /* Clipping. */
    c = cfg(OPTIM_SGD, 0.1);
    c.clipnorm = 0.5;
    cases[n++] = (tcase){"sgd clipnorm", c, 1};
    c = cfg(OPTIM_ADAM, 0.01);
    c.clipnorm = 0.3;
    cases[n++] = (tcase){"adam clipnorm", c, 1};
    c = cfg(OPTIM_SGD, 0.1);
    c.global_clipnorm = 1.0;
    cases[n++] = (tcase){"sgd global_clipnorm", c, 0};
    c.global_clipnorm = 100.0;
    cases[n++] = (tcase){"sgd global_clipnorm inactive", c, 0};
    c = cfg(OPTIM_RMSPROP, 0.01);
    c.clipvalue = 0.3;
    cases[n++] = (tcase){"rmsprop clipvalue", c, 0};

    /* Schedules inside the step (evaluated at iterations before the increment). */
    c = cfg(OPTIM_SGD, 0.1);
    c.momentum = 0.5;
    c.lr.kind = SCHED_PIECEWISE;
    c.lr.n_bounds = 2;
    c.lr.bounds[0] = 1;
    c.lr.bounds[1] = 3;
    c.lr.values[0] = 0.1;
    c.lr.values[1] = 0.05;
    c.lr.values[2] = 0.01;
    cases[n++] = (tcase){"sgd piecewise", c, 0};
    c = cfg(OPTIM_ADAM, 0.01);
    c.lr.kind = SCHED_EXPONENTIAL;
    c.lr.decay_steps = 2;
    c.lr.decay_rate = 0.5;
    cases[n++] = (tcase){"adam exponential", c, 0};
    c.lr.staircase = true;
    cases[n++] = (tcase){"adam exponential staircase", c, 0};
    c = cfg(OPTIM_NADAM, 0.01);
    c.lr.kind = SCHED_COSINE;
    c.lr.decay_steps = 4;
    c.lr.alpha = 0.2;
    c.weight_decay = 0.2; /* decay uses the scheduled rate too */
    cases[n++] = (tcase){"nadam cosine weight_decay", c, 0};

    for (int i = 0; i < n; i++)
        run_case(&cases[i]);
}

static void test_schedules(void)
{
    model_schedule s = {0};
    s.kind = SCHED_CONSTANT;
    s.initial = 0.3;
    EXPECT(optim_schedule_value(&s, 0) == 0.3 && optim_schedule_value(&s, 1000) == 0.3);

    s.kind = SCHED_EXPONENTIAL;
    s.initial = 0.1;
    s.decay_steps = 10;
    s.decay_rate = 0.5;
    EXPECT(test_close(optim_schedule_value(&s, 0), 0.1, 1e-12, 0));
    EXPECT(test_close(optim_schedule_value(&s, 5), 0.1 * sqrt(0.5), 1e-12, 0));
    EXPECT(test_close(optim_schedule_value(&s, 10), 0.05, 1e-12, 0));
    EXPECT(test_close(optim_schedule_value(&s, 25), 0.1 * pow(0.5, 2.5), 1e-12, 0));
    s.staircase = true;
    EXPECT(test_close(optim_schedule_value(&s, 5), 0.1, 1e-12, 0));
    EXPECT(test_close(optim_schedule_value(&s, 9), 0.1, 1e-12, 0));
    EXPECT(test_close(optim_schedule_value(&s, 10), 0.05, 1e-12, 0));
    EXPECT(test_close(optim_schedule_value(&s, 25), 0.025, 1e-12, 0));

    memset(&s, 0, sizeof s);
    s.kind = SCHED_PIECEWISE;
    s.n_bounds = 2;
    s.bounds[0] = 3;
    s.bounds[1] = 6;
    s.values[0] = 1.0;
    s.values[1] = 0.5;
    s.values[2] = 0.1;
    double want[] = {1, 1, 1, 1, 0.5, 0.5, 0.5, 0.1, 0.1};
    for (int i = 0; i < 9; i++)
        EXPECT_MSG(optim_schedule_value(&s, i) == want[i], "piecewise step %d", i);
    EXPECT(optim_schedule_value(&s, 1000000) == 0.1);

    memset(&s, 0, sizeof s);
    s.kind = SCHED_COSINE;
    s.initial = 1.0;
    s.decay_steps = 10;
    s.alpha = 0.1;
    EXPECT(test_close(optim_schedule_value(&s, 0), 1.0, 1e-12, 0));
    EXPECT(test_close(optim_schedule_value(&s, 5), 0.55, 1e-12, 0));
    EXPECT(test_close(optim_schedule_value(&s, 10), 0.1, 1e-12, 0));
    EXPECT(test_close(optim_schedule_value(&s, 20), 0.1, 1e-12, 0));
    EXPECT(
        test_close(optim_schedule_value(&s, 2), 0.1 + 0.9 * 0.5 * (1 + cos(PI * 0.2)), 1e-12, 0));

    /* optim_lr reads the handle's copy. */
    model *m = small_model();
    m->train.optim = cfg(OPTIM_SGD, 0.1);
    m->train.optim.lr = s;
    optim *o = NULL;
    EXPECT(optim_create(m, &o, NULL) == ERR_OK);
    EXPECT(test_close(optim_lr(o, 5), 0.55, 1e-12, 0));
    optim_destroy(o);
    model_destroy(m);
}

static void test_clipping(void)
{
    /* clipnorm clips each weight by its own norm; small ones pass untouched. */
    model *m = small_model();
    m->train.optim = cfg(OPTIM_SGD, 1.0);
    m->train.optim.clipnorm = 1.0;
    optim *o = NULL;
    err_info e = {0};
    EXPECT(optim_create(m, &o, &e) == ERR_OK);
    float g[N] = {0}, before[N];
    for (int i = 0; i < 12; i++)
        g[i] = 3.0f; /* kernel norm sqrt(12) * 3 */
    g[12] = 0.5f;    /* bias norm 0.5 */
    memcpy(before, m->params, sizeof before);
    EXPECT(optim_step(o, m, g, &e) == ERR_OK);
    double k = 1.0 / sqrt(12.0);
    EXPECT(test_close(before[0] - m->params[0], k, 1e-6, 0));
    EXPECT(test_close(before[12] - m->params[12], 0.5, 1e-6, 0));
    EXPECT(m->params[13] == before[13]);
    optim_destroy(o);

    /* global_clipnorm scales everything by c / ||g||. */
    m->train.optim.clipnorm = 0;
    m->train.optim.global_clipnorm = 2.0;
    EXPECT(optim_create(m, &o, &e) == ERR_OK);
    for (int i = 0; i < N; i++)
        g[i] = i < 16 ? 1.0f : 0.0f; /* norm 4 */
    memcpy(before, m->params, sizeof before);
    EXPECT(optim_step(o, m, g, &e) == ERR_OK);
    EXPECT(test_close(before[0] - m->params[0], 0.5, 1e-6, 0));
    EXPECT(m->params[20] == before[20]);
    /* A non-finite global norm makes every update NaN, as in Keras. */
    g[3] = INFINITY;
    EXPECT(optim_step(o, m, g, &e) == ERR_OK);
    EXPECT(isnan(m->params[0]) && isnan(m->params[20]));
    optim_destroy(o);
    model_destroy(m);

    /* clipvalue. */
    m = small_model();
    m->train.optim = cfg(OPTIM_SGD, 1.0);
    m->train.optim.clipvalue = 0.25;
    EXPECT(optim_create(m, &o, &e) == ERR_OK);
    for (int i = 0; i < N; i++)
        g[i] = (float)(i - 10) * 0.1f;
    memcpy(before, m->params, sizeof before);
    EXPECT(optim_step(o, m, g, &e) == ERR_OK);
    EXPECT(test_close(before[0] - m->params[0], -0.25, 1e-6, 0));
    EXPECT(test_close(before[11] - m->params[11], 0.1, 1e-5, 0));
    EXPECT(test_close(before[20] - m->params[20], 0.25, 1e-6, 0));
    optim_destroy(o);
    model_destroy(m);
}

static void test_slots(void)
{
    model_optim_config c = cfg(OPTIM_RMSPROP, 0.1);
    c.momentum = 0.5;
    c.centered = true;
    EXPECT(optim_slot_count(&c) == 3);
    EXPECT(strcmp(optim_slot_name(&c, 0), "velocity") == 0);
    EXPECT(strcmp(optim_slot_name(&c, 1), "momentum") == 0);
    EXPECT(strcmp(optim_slot_name(&c, 2), "average_gradient") == 0);
    EXPECT(optim_slot_name(&c, 3) == NULL && optim_slot_name(&c, -1) == NULL);
    c.momentum = 0;
    EXPECT(optim_slot_count(&c) == 2 && strcmp(optim_slot_name(&c, 1), "average_gradient") == 0);
    c.centered = false;
    EXPECT(optim_slot_count(&c) == 1);
    c = cfg(OPTIM_SGD, 0.1);
    EXPECT(optim_slot_count(&c) == 0 && optim_slot_name(&c, 0) == NULL);
    c.momentum = 0.9;
    EXPECT(optim_slot_count(&c) == 1 && strcmp(optim_slot_name(&c, 0), "momentum") == 0);
    c = cfg(OPTIM_ADAM, 0.1);
    EXPECT(optim_slot_count(&c) == 2 && strcmp(optim_slot_name(&c, 1), "velocity") == 0);
    c.amsgrad = true;
    EXPECT(optim_slot_count(&c) == 3 && strcmp(optim_slot_name(&c, 2), "velocity_hat") == 0);
    c = cfg(OPTIM_ADAGRAD, 0.1);
    EXPECT(optim_slot_count(&c) == 1 && strcmp(optim_slot_name(&c, 0), "accumulator") == 0);
    c = cfg(OPTIM_NADAM, 0.1);
    EXPECT(optim_slot_count(&c) == 2 && strcmp(optim_slot_name(&c, 0), "momentum") == 0);

    /* Fresh state: Adagrad accumulators start at initial_accumulator_value. */
    model *m = small_model();
    m->train.optim = cfg(OPTIM_ADAGRAD, 0.1);
    m->train.optim.initial_accumulator_value = 0.25;
    optim *o = NULL;
    err_info e = {0};
    EXPECT(optim_create(m, &o, &e) == ERR_OK);
    EXPECT(m->opt.n_slots == 1 && m->opt.slots[0] == 0.25f && m->opt.slots[N - 1] == 0.25f);
    optim_destroy(o);
    model_destroy(m);

    /* Nadam: u_product starts at 1 and follows prod beta_1 (1 - 0.5 * 0.96^t); existing state
     * with the same slot count is kept (restored from a file), and a missing u_product is
     * rebuilt from iterations. */
    m = small_model();
    m->train.optim = cfg(OPTIM_NADAM, 0.01);
    EXPECT(optim_create(m, &o, &e) == ERR_OK);
    EXPECT(m->opt.scalars[0] == 1.0 && m->opt.iterations == 0);
    float g[N];
    for (int i = 0; i < N; i++)
        g[i] = 0.1f * (float)i;
    for (int s = 0; s < 3; s++)
        EXPECT(optim_step(o, m, g, &e) == ERR_OK);
    double u = 1;
    for (int t = 1; t <= 3; t++)
        u *= 0.9 * (1 - 0.5 * pow(0.96, t));
    EXPECT(test_close(m->opt.scalars[0], u, 1e-12, 0));
    optim_destroy(o);
    float m5 = m->opt.slots[5];
    EXPECT(m5 != 0.0f);
    m->opt.scalars[0] = 0.0; /* as if the file had no u_product */
    EXPECT(optim_create(m, &o, &e) == ERR_OK);
    EXPECT(m->opt.iterations == 3 && m->opt.slots[5] == m5);
    EXPECT(test_close(m->opt.scalars[0], u, 1e-12, 0));
    optim_destroy(o);
    /* A different slot count (Adam amsgrad: 3) replaces the state. */
    m->train.optim = cfg(OPTIM_ADAM, 0.01);
    m->train.optim.amsgrad = true;
    EXPECT(optim_create(m, &o, &e) == ERR_OK);
    EXPECT(m->opt.n_slots == 3 && m->opt.iterations == 0 && m->opt.slots[5] == 0.0f);
    /* The model changing under the handle is reported. */
    EXPECT(model_opt_state_alloc(m, 1, &e) == ERR_OK);
    memset(&e, 0, sizeof e);
    EXPECT(optim_step(o, m, g, &e) == ERR_INTERNAL);
    EXPECT(strstr(e.msg, "Adam") != NULL);
    optim_destroy(o);
    optim_destroy(NULL);
    model_destroy(m);
}

static void test_config_errors(void)
{
    struct {
        const char *name;
        model_optim_config c;
        const char *want;
    } bad[16];
    int n = 0;
    model_optim_config c = cfg(OPTIM_SGD, 0.1);
    c.clipnorm = 1;
    c.clipvalue = 1;
    bad[n].name = "two clips";
    bad[n].c = c;
    bad[n++].want = "only one of clipnorm";
    c = cfg(OPTIM_ADAM, 0.1);
    c.global_clipnorm = 1;
    c.clipvalue = 1;
    bad[n].name = "two clips adam";
    bad[n].c = c;
    bad[n++].want = "global_clipnorm=1";
    c = cfg(OPTIM_SGD, 0.1);
    c.clipnorm = -1;
    bad[n].name = "negative clip";
    bad[n].c = c;
    bad[n++].want = "clipnorm=-1";
    c = cfg(OPTIM_SGD, 0.1);
    c.momentum = 1.5;
    bad[n].name = "momentum";
    bad[n].c = c;
    bad[n++].want = "momentum 1.5";
    c = cfg(OPTIM_ADAM, 0.1);
    c.beta_1 = 1.0;
    bad[n].name = "beta_1";
    bad[n].c = c;
    bad[n++].want = "beta_1 1";
    c = cfg(OPTIM_NADAM, 0.1);
    c.beta_2 = -0.1;
    bad[n].name = "beta_2";
    bad[n].c = c;
    bad[n++].want = "Nadam";
    c = cfg(OPTIM_RMSPROP, 0.1);
    c.rho = 1.5;
    bad[n].name = "rho";
    bad[n].c = c;
    bad[n++].want = "rho 1.5";
    c = cfg(OPTIM_RMSPROP, 0.1);
    c.epsilon = -1;
    bad[n].name = "epsilon";
    bad[n].c = c;
    bad[n++].want = "epsilon -1";
    c = cfg(OPTIM_ADAGRAD, 0.1);
    c.initial_accumulator_value = -1;
    bad[n].name = "accumulator";
    bad[n].c = c;
    bad[n++].want = "initial_accumulator_value -1";
    c = cfg(OPTIM_ADAMW, 0.1);
    c.weight_decay = -0.1;
    bad[n].name = "weight_decay";
    bad[n].c = c;
    bad[n++].want = "AdamW: weight_decay";
    c = cfg(OPTIM_SGD, 0.1);
    c.lr.kind = SCHED_EXPONENTIAL;
    c.lr.decay_steps = 0;
    bad[n].name = "decay_steps";
    bad[n].c = c;
    bad[n++].want = "decay_steps 0";
    c = cfg(OPTIM_SGD, 0.1);
    c.lr.kind = SCHED_PIECEWISE;
    c.lr.n_bounds = 0;
    bad[n].name = "bounds";
    bad[n].c = c;
    bad[n++].want = "PiecewiseConstantDecay: 0 boundaries";
    c = cfg(OPTIM_SGD, 0.1);
    c.kind = OPTIM_COUNT;
    bad[n].name = "kind";
    bad[n].c = c;
    bad[n++].want = "unknown kind";
    for (int i = 0; i < n; i++) {
        model *m = small_model();
        m->train.optim = bad[i].c;
        optim *o = (optim *)&bad; /* must stay untouched */
        err_info e = {0};
        int rc = optim_create(m, &o, &e);
        EXPECT_MSG(rc == ERR_CONFIG, "%s: rc %d", bad[i].name, rc);
        EXPECT_MSG(strstr(e.msg, bad[i].want) != NULL, "%s: \"%s\" lacks \"%s\"", bad[i].name,
                   e.msg, bad[i].want);
        EXPECT(o == (optim *)&bad && m->opt.n_slots == 0);
        model_destroy(m);
    }
    /* An unbuilt model. */
    model *m = NULL;
    EXPECT(model_create(&m, NULL) == ERR_OK);
    optim *o = NULL;
    err_info e = {0};
    EXPECT(optim_create(m, &o, &e) == ERR_USAGE && o == NULL);
    model_destroy(m);
}

int main(void)
{
    test_rules();
    test_schedules();
    test_clipping();
    test_slots();
    test_config_errors();
    return test_finish();
}
