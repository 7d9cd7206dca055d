#ifndef CORNU_KERNELS_RNG_H
#define CORNU_KERNELS_RNG_H

/* Deterministic random streams (xoshiro256** seeded through splitmix64). A stream is a pure
 * function of (seed, stream id): ranks, epochs and layers derive their own stream ids, so results
 * never depend on call order elsewhere. The state is passed by pointer; nothing is global. */

#include <stdint.h>

typedef struct rng {
    uint64_t s[4];
} rng;

/* Seeds r from (seed, stream). */
void rng_seed(rng *r, uint64_t seed, uint64_t stream);
/* Next 64 random bits. */
uint64_t rng_next(rng *r);
/* Uniform double in [0, 1) with 53 random bits. */
double rng_uniform(rng *r);
/* Uniform float in [0, 1) with 24 random bits. */
float rng_uniform_f(rng *r);
/* Standard normal (Box-Muller, one value per call, deterministic). */
double rng_normal(rng *r);
/* Uniform integer in [0, n) without modulo bias; n > 0. */
uint64_t rng_below(rng *r, uint64_t n);
/* Mixes several ids into one stream id (e.g. rng_mix(epoch, layer)). */
uint64_t rng_mix(uint64_t a, uint64_t b);

#endif
