// pybind11 bindings of the CPU ops (module kernels._cpu). No libtorch: pointers and sizes only.
// Every op releases the GIL; the argument structs are filled field by field from kernels/cpu.py
// (a packed linear's once per layer, its rows per call).
#include <pybind11/pybind11.h>

#include "ops.h"

namespace py = pybind11;
using codeinfer::AttentionArgs;
using codeinfer::PackedLinearArgs;
using codeinfer::QuantizeArgs;
using codeinfer::RotaryArgs;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "codeinfer CPU kernels (OpenMP); call through kernels.cpu, which checks the tensors";
  m.def("gated_embedding", &codeinfer::gated_embedding, py::call_guard<py::gil_scoped_release>(),
        py::arg("ids"), py::arg("modality"), py::arg("remap"), py::arg("wte"), py::arg("wpe"),
        py::arg("positions"), py::arg("out"), py::arg("num_tokens"), py::arg("hidden"),
        py::arg("vocab"), py::arg("max_positions"), py::arg("dtype"));

  py::class_<RotaryArgs>(m, "RotaryArgs")
      .def(py::init<>())
#define FIELD(name) .def_readwrite(#name, &RotaryArgs::name)
      FIELD(q) FIELD(k) FIELD(v) FIELD(positions) FIELD(cos_sin) FIELD(k_cache) FIELD(v_cache)
      FIELD(slot_mapping) FIELD(k_scale) FIELD(v_scale) FIELD(num_tokens) FIELD(num_heads) FIELD(num_kv_heads) FIELD(head_dim)
      FIELD(rotary_dim) FIELD(max_positions) FIELD(num_blocks) FIELD(block_size) FIELD(q_stride_t)
      FIELD(q_stride_h) FIELD(k_stride_t) FIELD(k_stride_h) FIELD(v_stride_t) FIELD(v_stride_h)
      FIELD(interleaved);
#undef FIELD
  m.def("rotary_store_kv", &codeinfer::rotary_store_kv, py::call_guard<py::gil_scoped_release>(),
        py::arg("args"), py::arg("dtype"), py::arg("cache_dtype"));

  py::class_<AttentionArgs>(m, "AttentionArgs")
      .def(py::init<>())
#define FIELD(name) .def_readwrite(#name, &AttentionArgs::name)
      FIELD(q) FIELD(k_cache) FIELD(v_cache) FIELD(block_tables) FIELD(seq_lens) FIELD(cu_seqlens_q)
      FIELD(out) FIELD(k_scale) FIELD(v_scale) FIELD(num_tokens) FIELD(num_seqs) FIELD(num_heads) FIELD(num_kv_heads)
      FIELD(head_dim) FIELD(num_blocks) FIELD(block_size) FIELD(max_blocks_per_seq)
      FIELD(q_stride_t) FIELD(q_stride_h) FIELD(scale) FIELD(window);
#undef FIELD
  m.def("paged_attention", &codeinfer::paged_attention, py::call_guard<py::gil_scoped_release>(),
        py::arg("args"), py::arg("dtype"), py::arg("cache_dtype"));

  py::class_<QuantizeArgs>(m, "QuantizeArgs")
      .def(py::init<>())
#define FIELD(name) .def_readwrite(#name, &QuantizeArgs::name)
      FIELD(x) FIELD(gamma) FIELD(beta) FIELD(out) FIELD(scales) FIELD(num_rows) FIELD(dim)
      FIELD(x_stride) FIELD(eps);
#undef FIELD
  m.def("quantize_rows", &codeinfer::quantize_rows, py::call_guard<py::gil_scoped_release>(),
        py::arg("args"), py::arg("dtype"));

  py::class_<PackedLinearArgs>(m, "PackedLinearArgs")
      .def(py::init<>())
#define FIELD(name) .def_readwrite(#name, &PackedLinearArgs::name)
      FIELD(x) FIELD(gamma) FIELD(beta) FIELD(packed) FIELD(colsum) FIELD(w_scales) FIELD(bias) FIELD(residual)
      FIELD(out) FIELD(num_rows) FIELD(in_features) FIELD(out_features) FIELD(x_stride) FIELD(res_stride)
      FIELD(out_stride) FIELD(act_start) FIELD(eps);
#undef FIELD
  // A layer's template (weights, norm, bias: kernels.cpu.PackedLinear) and one call's rows.
  const auto linear_rows = [](void (*op)(const PackedLinearArgs&, const std::string&, const std::string&)) {
    return [op](const PackedLinearArgs& layer, uintptr_t x, uintptr_t out, uintptr_t residual, int64_t num_rows,
                int64_t x_stride, int64_t res_stride, int64_t act_start, const std::string& dtype,
                const std::string& out_dtype) {
      PackedLinearArgs a = layer;
      a.x = x, a.out = out, a.residual = residual, a.num_rows = num_rows;
      a.x_stride = x_stride, a.res_stride = res_stride, a.act_start = act_start;
      op(a, dtype, out_dtype);
    };
  };
  for (const auto& [name, op] : {std::pair{"int8_linear", &codeinfer::int8_linear},
                                 std::pair{"bf16_linear", &codeinfer::bf16_linear}})
    m.def(name, linear_rows(op), py::call_guard<py::gil_scoped_release>(), py::arg("layer"), py::arg("x"),
          py::arg("out"), py::arg("residual"), py::arg("num_rows"), py::arg("x_stride"), py::arg("res_stride"),
          py::arg("act_start"), py::arg("dtype"), py::arg("out_dtype"));
}
