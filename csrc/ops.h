// Declarations of the CPU ops exported by kernels._cpu. Tensors cross the boundary as raw data
// pointers (uintptr_t) of contiguous buffers; kernels/cpu.py checks shapes, dtypes and contiguity.
#pragma once
#include <cstdint>
#include <string>

namespace codeinfer {

void gated_embedding(uintptr_t ids, uintptr_t modality, uintptr_t remap, uintptr_t wte,
                     uintptr_t wpe, uintptr_t positions, uintptr_t out, int64_t num_tokens,
                     int64_t hidden, const std::string& dtype);

}  // namespace codeinfer
