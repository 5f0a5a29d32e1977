/*
 * tensor.c: float32 views with a shape and strides over memory someone else owns.
 *
 * The executor's kernels work on raw arrays (llm.c style); tensors are how a stage describes its
 * flat buffers to the outside (checkpoints, tests): a name, a shape, a pointer into the buffer.
 */
#include "exec_internal.h"

ns_tensor ns_tensor_view(float *data, uint32_t ndim, const uint64_t *shape)
{
    NS_ASSERT(ndim >= 1 && ndim <= NS_EXEC_TENSOR_DIMS_MAX);
    NS_ASSERT(shape != NULL);
    ns_tensor t = {.data = data, .ndim = ndim};
    uint64_t stride = 1;
    for (uint32_t d = ndim; d-- > 0;) {
        t.shape[d] = shape[d];
        t.strides[d] = stride;
        stride *= shape[d];
    }
    return t;
}

uint64_t ns_tensor_numel(const ns_tensor *t)
{
    NS_ASSERT(t != NULL);
    NS_ASSERT(t->ndim >= 1 && t->ndim <= NS_EXEC_TENSOR_DIMS_MAX);
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->ndim; d++)
        n *= t->shape[d];
    return n;
}

bool ns_tensor_is_contiguous(const ns_tensor *t)
{
    NS_ASSERT(t != NULL);
    uint64_t stride = 1;
    for (uint32_t d = t->ndim; d-- > 0;) {
        if (t->shape[d] != 1 && t->strides[d] != stride)
            return false;
        stride *= t->shape[d];
    }
    return true;
}
