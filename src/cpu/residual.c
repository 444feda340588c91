/* CPU reference of the residual connection, out = a + b. */
#include "cpu/cpu_ops.h"

#define RES_PAR_MIN 65536

void fm_cpu_residual_forward(float *out, const float *a, const float *b, size_t n)
{
#pragma omp parallel for schedule(static) if (n > RES_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void fm_cpu_residual_backward(float *da, float *db, const float *dout, size_t n)
{
    if (da) {
#pragma omp parallel for schedule(static) if (n > RES_PAR_MIN)
        for (size_t i = 0; i < n; i++)
            da[i] += dout[i];
    }
    if (db) {
#pragma omp parallel for schedule(static) if (n > RES_PAR_MIN)
        for (size_t i = 0; i < n; i++)
            db[i] += dout[i];
    }
}
