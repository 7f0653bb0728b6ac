// pybind11 bindings of the CPU ops (module kernels._cpu). No libtorch: pointers and sizes only.
// Every op releases the GIL; the argument structs are filled field by field from kernels/cpu.py
// once per layer (cache, weights), and a call passes its rows' pointers and sizes.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "layer_program.h"
#include "ops.h"

namespace py = pybind11;
using codeinfer::AttentionArgs;
using codeinfer::LayerProgram;
using codeinfer::PackedLinearArgs;
using codeinfer::QuantPackArgs;
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
  // A layer's template (cache, table: kernels.cpu.RotaryStoreKV) and one call's rows.
  m.def(
      "rotary_store_kv",
      [](const RotaryArgs& layer, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t positions, uintptr_t slot_mapping,
         int64_t num_tokens, int64_t num_heads, int64_t q_stride_t, int64_t q_stride_h, int64_t k_stride_t,
         int64_t k_stride_h, int64_t v_stride_t, int64_t v_stride_h, const std::string& dtype,
         const std::string& cache_dtype) {
        RotaryArgs a = layer;
        a.q = q, a.k = k, a.v = v, a.positions = positions, a.slot_mapping = slot_mapping;
        a.num_tokens = num_tokens, a.num_heads = num_heads;
        a.q_stride_t = q_stride_t, a.q_stride_h = q_stride_h, a.k_stride_t = k_stride_t, a.k_stride_h = k_stride_h;
        a.v_stride_t = v_stride_t, a.v_stride_h = v_stride_h;
        codeinfer::rotary_store_kv(a, dtype, cache_dtype);
      },
      py::call_guard<py::gil_scoped_release>());

  py::class_<AttentionArgs>(m, "AttentionArgs")
      .def(py::init<>())
#define FIELD(name) .def_readwrite(#name, &AttentionArgs::name)
      FIELD(q) FIELD(k_cache) FIELD(v_cache) FIELD(block_tables) FIELD(seq_lens) FIELD(cu_seqlens_q)
      FIELD(out) FIELD(k_scale) FIELD(v_scale) FIELD(num_tokens) FIELD(num_seqs) FIELD(num_heads) FIELD(num_kv_heads)
      FIELD(head_dim) FIELD(num_blocks) FIELD(block_size) FIELD(max_blocks_per_seq)
      FIELD(q_stride_t) FIELD(q_stride_h) FIELD(scale) FIELD(window);
#undef FIELD
  // A layer's template (cache, scale, window: kernels.cpu.PagedAttention) and one call's queries.
  m.def(
      "paged_attention",
      [](const AttentionArgs& layer, uintptr_t q, uintptr_t out, uintptr_t block_tables, uintptr_t seq_lens,
         uintptr_t cu_seqlens_q, int64_t num_tokens, int64_t num_seqs, int64_t num_heads, int64_t max_blocks_per_seq,
         int64_t q_stride_t, int64_t q_stride_h, const std::string& dtype, const std::string& cache_dtype) {
        AttentionArgs a = layer;
        a.q = q, a.out = out, a.block_tables = block_tables, a.seq_lens = seq_lens, a.cu_seqlens_q = cu_seqlens_q;
        a.num_tokens = num_tokens, a.num_seqs = num_seqs, a.num_heads = num_heads;
        a.max_blocks_per_seq = max_blocks_per_seq, a.q_stride_t = q_stride_t, a.q_stride_h = q_stride_h;
        codeinfer::paged_attention(a, dtype, cache_dtype);
      },
      py::call_guard<py::gil_scoped_release>());

  py::class_<QuantizeArgs>(m, "QuantizeArgs")
      .def(py::init<>())
#define FIELD(name) .def_readwrite(#name, &QuantizeArgs::name)
      FIELD(x) FIELD(gamma) FIELD(beta) FIELD(out) FIELD(scales) FIELD(num_rows) FIELD(dim)
      FIELD(x_stride) FIELD(eps);
#undef FIELD
  m.def("quantize_rows", &codeinfer::quantize_rows, py::call_guard<py::gil_scoped_release>(),
        py::arg("args"), py::arg("dtype"));

  py::class_<QuantPackArgs>(m, "QuantPackArgs")
      .def(py::init<>())
#define FIELD(name) .def_readwrite(#name, &QuantPackArgs::name)
      FIELD(weight) FIELD(packed) FIELD(colsum) FIELD(scales) FIELD(out_features) FIELD(in_features)
      FIELD(group_size) FIELD(asymmetric);
#undef FIELD
  m.def("quantize_pack_int8", &codeinfer::quantize_pack_int8, py::call_guard<py::gil_scoped_release>(),
        py::arg("args"), py::arg("dtype"));
  m.def("quantize_pack_int4", &codeinfer::quantize_pack_int4, py::call_guard<py::gil_scoped_release>(),
        py::arg("args"), py::arg("dtype"));

  py::class_<PackedLinearArgs>(m, "PackedLinearArgs")
      .def(py::init<>())
#define FIELD(name) .def_readwrite(#name, &PackedLinearArgs::name)
      FIELD(x) FIELD(gamma) FIELD(beta) FIELD(packed) FIELD(colsum) FIELD(w_scales) FIELD(bias) FIELD(residual)
      FIELD(out) FIELD(num_rows) FIELD(in_features) FIELD(out_features) FIELD(x_stride) FIELD(res_stride)
      FIELD(out_stride) FIELD(act_start) FIELD(group_size) FIELD(eps);
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
                                 std::pair{"bf16_linear", &codeinfer::bf16_linear},
                                 std::pair{"int4_linear", &codeinfer::int4_linear}})
    m.def(name, linear_rows(op), py::call_guard<py::gil_scoped_release>(), py::arg("layer"), py::arg("x"),
          py::arg("out"), py::arg("residual"), py::arg("num_rows"), py::arg("x_stride"), py::arg("res_stride"),
          py::arg("act_start"), py::arg("dtype"), py::arg("out_dtype"));
  m.def("team_thread_ids", &codeinfer::team_thread_ids, py::arg("num_threads"));
  m.def("argmax_logsumexp", &codeinfer::argmax_logsumexp, py::call_guard<py::gil_scoped_release>(),
        py::arg("logits"), py::arg("argmax"), py::arg("lse"), py::arg("rows"), py::arg("vocab"), py::arg("stride"));

  // A model's decoder layers as one call per step (csrc/layer_program.h; built by kernels/cpu_program.py).
  py::class_<LayerProgram>(m, "LayerProgram")
      .def(py::init<>())
      .def("add_buffer", &LayerProgram::add_buffer, py::arg("width"), py::arg("dtype"))
      .def("add_linear", &LayerProgram::add_linear, py::arg("args"), py::arg("kernel"), py::arg("dtype"),
           py::arg("out_dtype"), py::arg("src"), py::arg("src_col"), py::arg("dst"), py::arg("residual"),
           py::arg("act_start"))
      .def("add_store_kv", &LayerProgram::add_store_kv, py::arg("args"), py::arg("dtype"), py::arg("cache_dtype"),
           py::arg("src"), py::arg("q_col"), py::arg("k_col"), py::arg("v_col"), py::arg("num_heads"))
      .def("add_attend", &LayerProgram::add_attend, py::arg("args"), py::arg("dtype"), py::arg("cache_dtype"),
           py::arg("src"), py::arg("q_col"), py::arg("num_heads"), py::arg("dst"))
      .def_property_readonly("num_ops", &LayerProgram::num_ops)
      .def(
          "run",
          [](LayerProgram& program, uintptr_t x, uintptr_t positions, uintptr_t slot_mapping, uintptr_t block_tables,
             uintptr_t seq_lens, uintptr_t cu_seqlens_q, int64_t num_tokens, int64_t num_seqs,
             int64_t max_blocks_per_seq, int64_t num_ops) {
            codeinfer::ProgramStep s;
            s.x = x, s.positions = positions, s.slot_mapping = slot_mapping, s.block_tables = block_tables;
            s.seq_lens = seq_lens, s.cu_seqlens_q = cu_seqlens_q;
            s.num_tokens = num_tokens, s.num_seqs = num_seqs, s.max_blocks_per_seq = max_blocks_per_seq;
            s.num_ops = num_ops;
            program.run(s);
          },
          py::call_guard<py::gil_scoped_release>());
}
