#include "trainer/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern_conv.h"

/* Per-step scalars of the update rules, rounded to float32 once per step (Keras casts its Python
 * float hyperparameters to the variable dtype inside update_step). */
typedef struct step_coef {
    float lr;   /* learning rate */
    float wdlr; /* weight_decay * lr, 0 when off */
    float clip; /* clipvalue, +inf when off */
    float c1;   /* SGD/RMSprop momentum; Adam/Nadam 1 - beta_1; RMSprop rho */
    float c2;   /* Adam/Nadam 1 - beta_2; RMSprop 1 - rho */
    float c3;   /* Adam alpha; Nadam u_{t+1} / (1 - prod u_{..t+1}) */
    float c4;   /* Nadam (1 - u_t) / (1 - prod u_{..t}) */
    float c5;   /* Nadam 1 - beta_2^t */
    float c6;   /* RMSprop momentum */
    float eps;  /* epsilon */
} step_coef;

/* The loops are memory-bound elementwise passes whose cost is in the division and square root
 * (Adam: about a tenth of an MLP step at one thread). The build has no -march, so each loop is
 * compiled three times: generic (SSE2), AVX2 and AVX-512, chosen at optim_create() by what the CPU
 * supports (the pattern of kernels/kern_conv.c). All three give the same bits: the operations are
 * IEEE-exact elementwise (add, mul, div, sqrt, min/max), and ISO C mode (-std=c11) keeps GCC from
 * contracting a * b + c into an FMA. */
#define OPTIM_INLINE static inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__)
#define OPTIM_X86 1
#define OPTIM_TARGET_AVX2 __attribute__((target("avx2")))
#define OPTIM_TARGET_AVX512 __attribute__((target("avx512f,avx2,prefer-vector-width=512")))
#else
#define OPTIM_X86 0
#endif

/* Update loops, one per rule variant, so that the element loop never branches on the kind or
 * its options. p, g and the slots are [n]; gs scales the gradient (clipnorm/global_clipnorm). */
typedef void (*update_fn)(const step_coef *k, size_t n, float gs, float *restrict p,
                          const float *restrict g, float *restrict s0, float *restrict s1,
                          float *restrict s2);

typedef enum rule_kind {
    RULE_SGD,
    RULE_SGD_MOMENTUM,
    RULE_SGD_NESTEROV,
    RULE_ADAM,
    RULE_ADAM_AMSGRAD,
    RULE_RMSPROP,
    RULE_RMSPROP_MOMENTUM,
    RULE_RMSPROP_CENTERED,
    RULE_RMSPROP_MOMENTUM_CENTERED,
    RULE_ADAGRAD,
    RULE_NADAM,
    RULE_COUNT
} rule_kind;

struct optim {
    model_optim_config cfg;
    rule_kind rule;
    size_t n; /* trainable element count */
    int n_slots;
    /* Gradient segments: one per trainable weight with clipnorm (Keras clips each variable's
     * gradient by its own norm), otherwise one covering everything. */
    int n_seg;
    size_t *seg_off, *seg_cnt;
    float *seg_scale; /* per-step scratch, sized at creation */
    step_coef k;      /* this step's scalars (optim_step_begin) */
    update_fn fn;     /* the rule's loop for this CPU */
};

/* Clip the (scaled) gradient to [-c, c]; c = +inf is the identity (NaN passes through). */
OPTIM_INLINE float grad_prep(float g, float gs, float c)
{
    g *= gs;
    g = g < -c ? -c : g;
    return g > c ? c : g;
}

OPTIM_INLINE void upd_sgd_body(const step_coef *k, size_t n, float gs, float *restrict p,
                               const float *restrict g, float *restrict s0, float *restrict s1,
                               float *restrict s2)
{
    (void)s0, (void)s1, (void)s2;
    const float lr = k->lr, wd = k->wdlr, cv = k->clip;
    for (size_t i = 0; i < n; i++) {
        float gi = grad_prep(g[i], gs, cv);
        float pi = p[i] - p[i] * wd;
        p[i] = pi - gi * lr;
    }
}

OPTIM_INLINE void upd_sgd_momentum_body(const step_coef *k, size_t n, float gs, float *restrict p,
                                        const float *restrict g, float *restrict s0,
                                        float *restrict s1, float *restrict s2)
{
    (void)s1, (void)s2;
    const float lr = k->lr, wd = k->wdlr, cv = k->clip, mom = k->c1;
    for (size_t i = 0; i < n; i++) {
        float gi = grad_prep(g[i], gs, cv);
        float pi = p[i] - p[i] * wd;
        float m = s0[i] * mom - gi * lr;
        s0[i] = m;
        p[i] = pi + m;
    }
}

OPTIM_INLINE void upd_sgd_nesterov_body(const step_coef *k, size_t n, float gs, float *restrict p,
                                        const float *restrict g, float *restrict s0,
                                        float *restrict s1, float *restrict s2)
{
    (void)s1, (void)s2;
    const float lr = k->lr, wd = k->wdlr, cv = k->clip, mom = k->c1;
    for (size_t i = 0; i < n; i++) {
        float gi = grad_prep(g[i], gs, cv);
        float pi = p[i] - p[i] * wd;
        float m = s0[i] * mom - gi * lr;
        s0[i] = m;
        p[i] = pi + (m * mom - gi * lr);
    }
}

OPTIM_INLINE void upd_adam_body(const step_coef *k, size_t n, float gs, float *restrict p,
                                const float *restrict g, float *restrict s0, float *restrict s1,
                                float *restrict s2)
{
    (void)s2;
    const float wd = k->wdlr, cv = k->clip, omb1 = k->c1, omb2 = k->c2, alpha = k->c3;
    const float eps = k->eps;
    for (size_t i = 0; i < n; i++) {
        float gi = grad_prep(g[i], gs, cv);
        float pi = p[i] - p[i] * wd;
        float m = s0[i] + (gi - s0[i]) * omb1;
        float v = s1[i] + (gi * gi - s1[i]) * omb2;
        s0[i] = m;
        s1[i] = v;
        p[i] = pi - (m * alpha) / (sqrtf(v) + eps);
    }
}

OPTIM_INLINE void upd_adam_amsgrad_body(const step_coef *k, size_t n, float gs, float *restrict p,
                                        const float *restrict g, float *restrict s0,
                                        float *restrict s1, float *restrict s2)
{
    const float wd = k->wdlr, cv = k->clip, omb1 = k->c1, omb2 = k->c2, alpha = k->c3;
    const float eps = k->eps;
    for (size_t i = 0; i < n; i++) {
        float gi = grad_prep(g[i], gs, cv);
        float pi = p[i] - p[i] * wd;
        float m = s0[i] + (gi - s0[i]) * omb1;
        float v = s1[i] + (gi * gi - s1[i]) * omb2;
        float vh = s2[i] > v ? s2[i] : v;
        s0[i] = m;
        s1[i] = v;
        s2[i] = vh;
        p[i] = pi - (m * alpha) / (sqrtf(vh) + eps);
    }
}

/* RMSprop, Keras 3: epsilon is added under the square root:
 * increment = lr * g / sqrt(velocity + eps) (centered: velocity - avg^2 + eps). */
OPTIM_INLINE void upd_rmsprop_body(const step_coef *k, size_t n, float gs, float *restrict p,
                                   const float *restrict g, float *restrict s0, float *restrict s1,
                                   float *restrict s2)
{
    (void)s1, (void)s2;
    const float lr = k->lr, wd = k->wdlr, cv = k->clip, rho = k->c1, omr = k->c2, eps = k->eps;
    for (size_t i = 0; i < n; i++) {
        float gi = grad_prep(g[i], gs, cv);
        float pi = p[i] - p[i] * wd;
        float v = rho * s0[i] + omr * (gi * gi);
        s0[i] = v;
        p[i] = pi - (lr * gi) / sqrtf(v + eps);
    }
}

OPTIM_INLINE void upd_rmsprop_momentum_body(const step_coef *k, size_t n, float gs,
                                            float *restrict p, const float *restrict g,
                                            float *restrict s0, float *restrict s1,
                                            float *restrict s2)
{
    (void)s2;
    const float lr = k->lr, wd = k->wdlr, cv = k->clip, rho = k->c1, omr = k->c2, eps = k->eps;
    const float mom = k->c6;
    for (size_t i = 0; i < n; i++) {
        float gi = grad_prep(g[i], gs, cv);
        float pi = p[i] - p[i] * wd;
        float v = rho * s0[i] + omr * (gi * gi);
        s0[i] = v;
        float mo = mom * s1[i] + (lr * gi) / sqrtf(v + eps);
        s1[i] = mo;
        p[i] = pi - mo;
    }
}

OPTIM_INLINE void upd_rmsprop_centered_body(const step_coef *k, size_t n, float gs,
                                            float *restrict p, const float *restrict g,
                                            float *restrict s0, float *restrict s1,
                                            float *restrict s2)
{
    (void)s2;
    /* Without momentum the average gradient is the second slot. */
    const float lr = k->lr, wd = k->wdlr, cv = k->clip, rho = k->c1, omr = k->c2, eps = k->eps;
    for (size_t i = 0; i < n; i++) {
        float gi = grad_prep(g[i], gs, cv);
        float pi = p[i] - p[i] * wd;
        float v = rho * s0[i] + omr * (gi * gi);
        float a = rho * s1[i] + omr * gi;
        s0[i] = v;
        s1[i] = a;
        p[i] = pi - (lr * gi) / sqrtf(v - a * a + eps);
    }
}

OPTIM_INLINE void upd_rmsprop_momentum_centered_body(const step_coef *k, size_t n, float gs,
                                                     float *restrict p, const float *restrict g,
                                                     float *restrict s0, float *restrict s1,
                                                     float *restrict s2)
{
    const float lr = k->lr, wd = k->wdlr, cv = k->clip, rho = k->c1, omr = k->c2, eps = k->eps;
    const float mom = k->c6;
    for (size_t i = 0; i < n; i++) {
        float gi = grad_prep(g[i], gs, cv);
        float pi = p[i] - p[i] * wd;
        float v = rho * s0[i] + omr * (gi * gi);
        float a = rho * s2[i] + omr * gi;
        s0[i] = v;
        s2[i] = a;
        float mo = mom * s1[i] + (lr * gi) / sqrtf(v - a * a + eps);
        s1[i] = mo;
        p[i] = pi - mo;
    }
}

OPTIM_INLINE void upd_adagrad_body(const step_coef *k, size_t n, float gs, float *restrict p,
                                   const float *restrict g, float *restrict s0, float *restrict s1,
                                   float *restrict s2)
{
    (void)s1, (void)s2;
    const float lr = k->lr, wd = k->wdlr, cv = k->clip, eps = k->eps;
    for (size_t i = 0; i < n; i++) {
        float gi = grad_prep(g[i], gs, cv);
        float pi = p[i] - p[i] * wd;
        float acc = s0[i] + gi * gi;
        s0[i] = acc;
        p[i] = pi - (lr * gi) / sqrtf(acc + eps);
    }
}

/* Nadam, Keras 3: m_hat = u_{t+1} m / (1 - prod u_{..t+1}) + (1 - u_t) g / (1 - prod u_{..t}),
 * v_hat = v / (1 - beta_2^t), p -= lr m_hat / (sqrt(v_hat) + eps). */
OPTIM_INLINE void upd_nadam_body(const step_coef *k, size_t n, float gs, float *restrict p,
                                 const float *restrict g, float *restrict s0, float *restrict s1,
                                 float *restrict s2)
{
    (void)s2;
    const float lr = k->lr, wd = k->wdlr, cv = k->clip, omb1 = k->c1, omb2 = k->c2;
    const float cm = k->c3, cg = k->c4, bc2 = k->c5, eps = k->eps;
    for (size_t i = 0; i < n; i++) {
        float gi = grad_prep(g[i], gs, cv);
        float pi = p[i] - p[i] * wd;
        float m = s0[i] + (gi - s0[i]) * omb1;
        float v = s1[i] + (gi * gi - s1[i]) * omb2;
        s0[i] = m;
        s1[i] = v;
        float mh = cm * m + cg * gi;
        float vh = v / bc2;
        p[i] = pi - (mh * lr) / (sqrtf(vh) + eps);
    }
}

#define UPD_ARGS                                                                                   \
    const step_coef *k, size_t n, float gs, float *restrict p, const float *restrict g,            \
        float *restrict s0, float *restrict s1, float *restrict s2
#if OPTIM_X86
#define UPD_VARIANTS(name)                                                                         \
    static void name(UPD_ARGS)                                                                     \
    {                                                                                              \
        name##_body(k, n, gs, p, g, s0, s1, s2);                                                   \
    }                                                                                              \
    OPTIM_TARGET_AVX2 static void name##_avx2(UPD_ARGS)                                            \
    {                                                                                              \
        name##_body(k, n, gs, p, g, s0, s1, s2);                                                   \
    }                                                                                              \
    OPTIM_TARGET_AVX512 static void name##_avx512(UPD_ARGS)                                        \
    {                                                                                              \
        name##_body(k, n, gs, p, g, s0, s1, s2);                                                   \
    }
#else
#define UPD_VARIANTS(name)                                                                         \
    static void name(UPD_ARGS)                                                                     \
    {                                                                                              \
        name##_body(k, n, gs, p, g, s0, s1, s2);                                                   \
    }
#endif
UPD_VARIANTS(upd_sgd)
UPD_VARIANTS(upd_sgd_momentum)
UPD_VARIANTS(upd_sgd_nesterov)
UPD_VARIANTS(upd_adam)
UPD_VARIANTS(upd_adam_amsgrad)
UPD_VARIANTS(upd_rmsprop)
UPD_VARIANTS(upd_rmsprop_momentum)
UPD_VARIANTS(upd_rmsprop_centered)
UPD_VARIANTS(upd_rmsprop_momentum_centered)
UPD_VARIANTS(upd_adagrad)
UPD_VARIANTS(upd_nadam)

static const update_fn UPDATE_FNS[] = {
    [RULE_SGD] = upd_sgd,
    [RULE_SGD_MOMENTUM] = upd_sgd_momentum,
    [RULE_SGD_NESTEROV] = upd_sgd_nesterov,
    [RULE_ADAM] = upd_adam,
    [RULE_ADAM_AMSGRAD] = upd_adam_amsgrad,
    [RULE_RMSPROP] = upd_rmsprop,
    [RULE_RMSPROP_MOMENTUM] = upd_rmsprop_momentum,
    [RULE_RMSPROP_CENTERED] = upd_rmsprop_centered,
    [RULE_RMSPROP_MOMENTUM_CENTERED] = upd_rmsprop_momentum_centered,
    [RULE_ADAGRAD] = upd_adagrad,
    [RULE_NADAM] = upd_nadam,
};
_Static_assert(sizeof UPDATE_FNS / sizeof UPDATE_FNS[0] == RULE_COUNT, "one loop per rule");
#if OPTIM_X86
static const update_fn UPDATE_FNS_AVX2[] = {
    [RULE_SGD] = upd_sgd_avx2,
    [RULE_SGD_MOMENTUM] = upd_sgd_momentum_avx2,
    [RULE_SGD_NESTEROV] = upd_sgd_nesterov_avx2,
    [RULE_ADAM] = upd_adam_avx2,
    [RULE_ADAM_AMSGRAD] = upd_adam_amsgrad_avx2,
    [RULE_RMSPROP] = upd_rmsprop_avx2,
    [RULE_RMSPROP_MOMENTUM] = upd_rmsprop_momentum_avx2,
    [RULE_RMSPROP_CENTERED] = upd_rmsprop_centered_avx2,
    [RULE_RMSPROP_MOMENTUM_CENTERED] = upd_rmsprop_momentum_centered_avx2,
    [RULE_ADAGRAD] = upd_adagrad_avx2,
    [RULE_NADAM] = upd_nadam_avx2,
};
_Static_assert(sizeof UPDATE_FNS_AVX2 / sizeof UPDATE_FNS_AVX2[0] == RULE_COUNT, "one per rule");
static const update_fn UPDATE_FNS_AVX512[] = {
    [RULE_SGD] = upd_sgd_avx512,
    [RULE_SGD_MOMENTUM] = upd_sgd_momentum_avx512,
    [RULE_SGD_NESTEROV] = upd_sgd_nesterov_avx512,
    [RULE_ADAM] = upd_adam_avx512,
    [RULE_ADAM_AMSGRAD] = upd_adam_amsgrad_avx512,
    [RULE_RMSPROP] = upd_rmsprop_avx512,
    [RULE_RMSPROP_MOMENTUM] = upd_rmsprop_momentum_avx512,
    [RULE_RMSPROP_CENTERED] = upd_rmsprop_centered_avx512,
    [RULE_RMSPROP_MOMENTUM_CENTERED] = upd_rmsprop_momentum_centered_avx512,
    [RULE_ADAGRAD] = upd_adagrad_avx512,
    [RULE_NADAM] = upd_nadam_avx512,
};
_Static_assert(sizeof UPDATE_FNS_AVX512 / sizeof UPDATE_FNS_AVX512[0] == RULE_COUNT,
               "one per rule");
#endif

static rule_kind rule_of(const model_optim_config *c)
{
    switch (c->kind) {
    case OPTIM_SGD:
        if (c->momentum > 0.0)
            return c->nesterov ? RULE_SGD_NESTEROV : RULE_SGD_MOMENTUM;
        return RULE_SGD;
    case OPTIM_ADAM:
    case OPTIM_ADAMW:
        return c->amsgrad ? RULE_ADAM_AMSGRAD : RULE_ADAM;
    case OPTIM_RMSPROP:
        if (c->momentum > 0.0)
            return c->centered ? RULE_RMSPROP_MOMENTUM_CENTERED : RULE_RMSPROP_MOMENTUM;
        return c->centered ? RULE_RMSPROP_CENTERED : RULE_RMSPROP;
    case OPTIM_ADAGRAD:
        return RULE_ADAGRAD;
    case OPTIM_NADAM:
        return RULE_NADAM;
    case OPTIM_COUNT:
        break;
    }
    return RULE_COUNT;
}

int optim_slot_count(const model_optim_config *c)
{
    switch (c->kind) {
    case OPTIM_SGD:
        return c->momentum > 0.0 ? 1 : 0;
    case OPTIM_ADAM:
    case OPTIM_ADAMW:
        return c->amsgrad ? 3 : 2;
    case OPTIM_RMSPROP:
        return 1 + (c->momentum > 0.0) + (c->centered ? 1 : 0);
    case OPTIM_ADAGRAD:
        return 1;
    case OPTIM_NADAM:
        return 2;
    case OPTIM_COUNT:
        break;
    }
    return 0;
}

const char *optim_slot_name(const model_optim_config *c, int k)
{
    if (k < 0 || k >= optim_slot_count(c))
        return NULL;
    switch (c->kind) {
    case OPTIM_SGD:
        return "momentum";
    case OPTIM_ADAM:
    case OPTIM_ADAMW:
    case OPTIM_NADAM: {
        static const char *const names[] = {"momentum", "velocity", "velocity_hat"};
        return names[k];
    }
    case OPTIM_RMSPROP:
        if (k == 0)
            return "velocity";
        if (k == 1 && c->momentum > 0.0)
            return "momentum";
        return "average_gradient";
    case OPTIM_ADAGRAD:
        return "accumulator";
    case OPTIM_COUNT:
        break;
    }
    return NULL;
}

static const char *optim_label(optim_kind k)
{
    switch (k) {
    case OPTIM_SGD:
        return "SGD";
    case OPTIM_ADAM:
        return "Adam";
    case OPTIM_ADAMW:
        return "AdamW";
    case OPTIM_RMSPROP:
        return "RMSprop";
    case OPTIM_ADAGRAD:
        return "Adagrad";
    case OPTIM_NADAM:
        return "Nadam";
    case OPTIM_COUNT:
        break;
    }
    return "optimizer";
}

static int check_config(const model_optim_config *c, err_info *e)
{
    if ((int)c->kind < 0 || c->kind >= OPTIM_COUNT)
        return err_set(e, ERR_CONFIG, "optimizer: unknown kind %d", (int)c->kind);
    const char *nm = optim_label(c->kind);
    int n_clip = (c->clipnorm != 0.0) + (c->clipvalue != 0.0) + (c->global_clipnorm != 0.0);
    if (n_clip > 1)
        return err_set(e, ERR_CONFIG,
                       "%s: only one of clipnorm, clipvalue and global_clipnorm can be set "
                       "(clipnorm=%g, clipvalue=%g, global_clipnorm=%g)",
                       nm, c->clipnorm, c->clipvalue, c->global_clipnorm);
    if (c->clipnorm < 0.0 || c->clipvalue < 0.0 || c->global_clipnorm < 0.0)
        return err_set(e, ERR_CONFIG,
                       "%s: clipping values must be >= 0 (clipnorm=%g, clipvalue=%g, "
                       "global_clipnorm=%g)",
                       nm, c->clipnorm, c->clipvalue, c->global_clipnorm);
    if (!(c->weight_decay >= 0.0))
        return err_set(e, ERR_CONFIG, "%s: weight_decay %g (expected >= 0)", nm, c->weight_decay);
    switch (c->kind) {
    case OPTIM_SGD:
        if (!(c->momentum >= 0.0 && c->momentum <= 1.0))
            return err_set(e, ERR_CONFIG, "%s: momentum %g (expected in [0, 1])", nm, c->momentum);
        break;
    case OPTIM_ADAM:
    case OPTIM_ADAMW:
    case OPTIM_NADAM:
        if (!(c->beta_1 >= 0.0 && c->beta_1 < 1.0) || !(c->beta_2 >= 0.0 && c->beta_2 < 1.0))
            return err_set(e, ERR_CONFIG, "%s: beta_1 %g, beta_2 %g (expected in [0, 1))", nm,
                           c->beta_1, c->beta_2);
        if (!(c->epsilon >= 0.0))
            return err_set(e, ERR_CONFIG, "%s: epsilon %g (expected >= 0)", nm, c->epsilon);
        break;
    case OPTIM_RMSPROP:
        if (!(c->rho >= 0.0 && c->rho <= 1.0))
            return err_set(e, ERR_CONFIG, "%s: rho %g (expected in [0, 1])", nm, c->rho);
        if (!(c->momentum >= 0.0 && c->momentum <= 1.0))
            return err_set(e, ERR_CONFIG, "%s: momentum %g (expected in [0, 1])", nm, c->momentum);
        if (!(c->epsilon >= 0.0))
            return err_set(e, ERR_CONFIG, "%s: epsilon %g (expected >= 0)", nm, c->epsilon);
        break;
    case OPTIM_ADAGRAD:
        if (!(c->initial_accumulator_value >= 0.0))
            return err_set(e, ERR_CONFIG, "%s: initial_accumulator_value %g (expected >= 0)", nm,
                           c->initial_accumulator_value);
        if (!(c->epsilon >= 0.0))
            return err_set(e, ERR_CONFIG, "%s: epsilon %g (expected >= 0)", nm, c->epsilon);
        break;
    case OPTIM_COUNT:
        break;
    }
    const model_schedule *s = &c->lr;
    if ((int)s->kind < 0 || s->kind >= SCHED_COUNT)
        return err_set(e, ERR_CONFIG, "%s: unknown learning rate schedule kind %d", nm,
                       (int)s->kind);
    switch (s->kind) {
    case SCHED_CONSTANT:
        break;
    case SCHED_EXPONENTIAL:
    case SCHED_COSINE:
        if (!(s->decay_steps > 0.0))
            return err_set(e, ERR_CONFIG,
                           "%s: learning rate schedule: decay_steps %g (expected > 0)", nm,
                           s->decay_steps);
        break;
    case SCHED_PIECEWISE:
        if (s->n_bounds < 1 || s->n_bounds > MODEL_MAX_BOUNDS)
            return err_set(e, ERR_CONFIG,
                           "%s: PiecewiseConstantDecay: %d boundaries (expected 1 to %d)", nm,
                           s->n_bounds, MODEL_MAX_BOUNDS);
        break;
    case SCHED_COUNT:
        break;
    }
    return ERR_OK;
}

/* Keras 3 Nadam keeps prod_{s<=t} beta_1 (1 - 0.5 * 0.96^s) in a variable; it is a function of
 * the iteration count alone, so a state that lacks it can rebuild it. */
static double nadam_u_product(double beta_1, int64_t iterations)
{
    double u = 1.0;
    for (int64_t s = 1; s <= iterations; s++)
        u *= beta_1 * (1.0 - 0.5 * pow(0.96, (double)s));
    return u;
}

void optim_destroy(optim *o)
{
    if (!o)
        return;
    free(o->seg_off);
    free(o->seg_cnt);
    free(o->seg_scale);
    free(o);
}

int optim_create(model *m, optim **out, err_info *e)
{
    const model_optim_config *c = &m->train.optim;
    int rc = check_config(c, e);
    if (rc != ERR_OK)
        return rc;
    if (!m->built || (m->n_trainable > 0 && !m->params))
        return err_set(e, ERR_USAGE, "%s: model \"%s\" is not built", optim_label(c->kind),
                       m->name);
    optim *o = calloc(1, sizeof *o);
    if (!o)
        return err_set(e, ERR_NOMEM, "optimizer: out of memory");
    o->cfg = *c;
    o->rule = rule_of(c);
    o->fn = UPDATE_FNS[o->rule];
#if OPTIM_X86
    if (kern_isa_supported(KERN_ISA_AVX512))
        o->fn = UPDATE_FNS_AVX512[o->rule];
    else if (kern_isa_supported(KERN_ISA_AVX2))
        o->fn = UPDATE_FNS_AVX2[o->rule];
#endif
    o->n = m->n_trainable;
    o->n_slots = optim_slot_count(c);

    /* Segments for clipnorm: the trainable weights, each clipped by its own norm. */
    int n_tw = 0;
    for (int w = 0; w < m->n_weights; w++)
        n_tw += m->weights[w].trainable;
    int n_seg = c->clipnorm > 0.0 ? n_tw : 1;
    size_t cap = n_seg > 0 ? (size_t)n_seg : 1;
    o->seg_off = malloc(cap * sizeof *o->seg_off);
    o->seg_cnt = malloc(cap * sizeof *o->seg_cnt);
    o->seg_scale = malloc(cap * sizeof *o->seg_scale);
    if (!o->seg_off || !o->seg_cnt || !o->seg_scale) {
        rc = err_set(e, ERR_NOMEM, "optimizer: out of memory");
        goto fail;
    }
    if (c->clipnorm > 0.0) {
        int s = 0;
        for (int w = 0; w < m->n_weights; w++) {
            const model_weight *wt = &m->weights[w];
            if (!wt->trainable)
                continue;
            if (wt->offset > o->n || wt->count > o->n - wt->offset) {
                rc = err_set(e, ERR_INTERNAL,
                             "optimizer: trainable weight \"%s\" [%zu, +%zu) lies outside the "
                             "%zu trainable parameters",
                             wt->name, wt->offset, wt->count, o->n);
                goto fail;
            }
            o->seg_off[s] = wt->offset;
            o->seg_cnt[s] = wt->count;
            s++;
        }
    } else {
        o->seg_off[0] = 0;
        o->seg_cnt[0] = o->n;
    }
    o->n_seg = n_seg;

    if (m->opt.n_slots != o->n_slots || (o->n_slots > 0 && o->n > 0 && !m->opt.slots)) {
        if ((rc = model_opt_state_alloc(m, o->n_slots, e)) != ERR_OK) {
            err_wrap(e, "%s", optim_label(c->kind));
            goto fail;
        }
        m->opt.iterations = 0;
        memset(m->opt.scalars, 0, sizeof m->opt.scalars);
        if (c->kind == OPTIM_ADAGRAD) {
            float a0 = (float)c->initial_accumulator_value;
            for (size_t i = 0; i < o->n; i++)
                m->opt.slots[i] = a0;
        }
        if (c->kind == OPTIM_NADAM)
            m->opt.scalars[0] = 1.0;
    }
    if (c->kind == OPTIM_NADAM && !(m->opt.scalars[0] > 0.0))
        m->opt.scalars[0] = nadam_u_product(c->beta_1, m->opt.iterations);
    *out = o;
    return ERR_OK;
fail:
    optim_destroy(o);
    return rc;
}

double optim_schedule_value(const model_schedule *s, int64_t iteration)
{
    double step = (double)iteration;
    switch (s->kind) {
    case SCHED_CONSTANT:
        return s->initial;
    case SCHED_EXPONENTIAL: {
        double p = step / s->decay_steps;
        if (s->staircase)
            p = floor(p);
        return s->initial * pow(s->decay_rate, p);
    }
    case SCHED_PIECEWISE: {
        int n = s->n_bounds;
        for (int i = 0; i < n; i++)
            if (step <= s->bounds[i])
                return s->values[i];
        return s->values[n];
    }
    case SCHED_COSINE: {
        double t = step < s->decay_steps ? step : s->decay_steps;
        double cosine = 0.5 * (1.0 + cos(3.14159265358979323846 * t / s->decay_steps));
        return s->initial * ((1.0 - s->alpha) * cosine + s->alpha);
    }
    case SCHED_COUNT:
        break;
    }
    return s->initial;
}

double optim_lr(const optim *o, int64_t iteration)
{
    return optim_schedule_value(&o->cfg.lr, iteration);
}

static double sumsq(const float *g, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)g[i] * (double)g[i];
    return s;
}

int optim_step_begin(optim *o, model *m, const float *grads, err_info *e)
{
    const model_optim_config *c = &o->cfg;
    if (m->n_trainable != o->n || m->opt.n_slots != o->n_slots)
        return err_set(e, ERR_INTERNAL,
                       "%s: model changed since the optimizer was created (%zu trainable "
                       "parameters and %d slots, expected %zu and %d)",
                       optim_label(c->kind), m->n_trainable, m->opt.n_slots, o->n, o->n_slots);
    int64_t it = m->opt.iterations;
    double lr = optim_lr(o, it);
    double t = (double)(it + 1); /* Keras local_step */

    step_coef k = {0};
    k.lr = (float)lr;
    k.wdlr = c->weight_decay > 0.0 ? (float)(c->weight_decay * lr) : 0.0f;
    k.clip = c->clipvalue > 0.0 ? (float)c->clipvalue : INFINITY;
    k.eps = (float)c->epsilon;
    switch (c->kind) {
    case OPTIM_SGD:
        k.c1 = (float)c->momentum;
        break;
    case OPTIM_ADAM:
    case OPTIM_ADAMW:
        k.c1 = (float)(1.0 - c->beta_1);
        k.c2 = (float)(1.0 - c->beta_2);
        k.c3 = (float)(lr * sqrt(1.0 - pow(c->beta_2, t)) / (1.0 - pow(c->beta_1, t)));
        break;
    case OPTIM_RMSPROP:
        k.c1 = (float)c->rho;
        k.c2 = (float)(1.0 - c->rho);
        k.c6 = (float)c->momentum;
        break;
    case OPTIM_ADAGRAD:
        break;
    case OPTIM_NADAM: {
        /* Keras updates u_product before the variable updates (_backend_update_step). */
        double b1 = c->beta_1;
        double u_t = b1 * (1.0 - 0.5 * pow(0.96, t));
        double u_t1 = b1 * (1.0 - 0.5 * pow(0.96, t + 1.0));
        double up_t = m->opt.scalars[0] * u_t;
        double up_t1 = up_t * u_t1;
        m->opt.scalars[0] = up_t;
        k.c1 = (float)(1.0 - b1);
        k.c2 = (float)(1.0 - c->beta_2);
        k.c3 = (float)(u_t1 / (1.0 - up_t1));
        k.c4 = (float)((1.0 - u_t) / (1.0 - up_t));
        k.c5 = (float)(1.0 - pow(c->beta_2, t));
        break;
    }
    case OPTIM_COUNT:
        break;
    }

    /* Gradient scales: clipnorm per weight, or global_clipnorm over everything. */
    if (c->clipnorm > 0.0) {
        for (int s = 0; s < o->n_seg; s++) {
            double nrm = sqrt(sumsq(grads + o->seg_off[s], o->seg_cnt[s]));
            o->seg_scale[s] = (float)(c->clipnorm / (nrm > c->clipnorm ? nrm : c->clipnorm));
        }
    } else if (c->global_clipnorm > 0.0) {
        /* clip_by_global_norm: cn * min(1 / norm, 1 / cn) + (norm - norm), in float32, so a
         * non-finite norm poisons every gradient exactly as in Keras. */
        float nrm = (float)sqrt(sumsq(grads, o->n));
        float cn = (float)c->global_clipnorm;
        float a = 1.0f / nrm, b = 1.0f / cn;
        o->seg_scale[0] = cn * (a < b ? a : b) + (nrm - nrm);
    } else {
        o->seg_scale[0] = 1.0f;
    }

    o->k = k;
    return ERR_OK;
}

void optim_step_range(const optim *o, model *m, const float *grads, size_t lo, size_t hi)
{
    optim_step_range_at(o, m, grads != NULL ? grads + lo : NULL, lo, hi);
}

bool optim_clips_by_norm(const optim *o)
{
    return o->cfg.clipnorm > 0.0 || o->cfg.global_clipnorm > 0.0;
}

void optim_step_range_at(const optim *o, model *m, const float *g, size_t lo, size_t hi)
{
    update_fn fn = o->fn;
    float *slots = m->opt.slots;
    size_t n = o->n;
    if (hi > n)
        hi = n;
    /* The rules are elementwise: any split into ranges gives the same bits as one pass. */
    for (int s = 0; s < o->n_seg; s++) {
        size_t a = o->seg_off[s], b = a + o->seg_cnt[s];
        a = a > lo ? a : lo;
        b = b < hi ? b : hi;
        if (a >= b)
            continue;
        float *s0 = o->n_slots > 0 ? slots + a : NULL;
        float *s1 = o->n_slots > 1 ? slots + n + a : NULL;
        float *s2 = o->n_slots > 2 ? slots + 2 * n + a : NULL;
        fn(&o->k, b - a, o->seg_scale[s], m->params + a, g + (a - lo), s0, s1, s2);
    }
}

void optim_step_end(const optim *o, model *m)
{
    (void)o;
    m->opt.iterations++;
}

int optim_step(optim *o, model *m, const float *grads, err_info *e)
{
    int rc = optim_step_begin(o, m, grads, e);
    if (rc != ERR_OK)
        return rc;
    optim_step_range(o, m, grads, 0, o->n);
    optim_step_end(o, m);
    return ERR_OK;
}
