// pybind11 bindings of the CPU ops (module kernels._cpu). No libtorch: pointers and sizes only.
#include <pybind11/pybind11.h>

#include "ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "codeinfer CPU kernels (OpenMP); call through kernels.cpu, which checks the tensors";
  m.def("gated_embedding", &codeinfer::gated_embedding, py::call_guard<py::gil_scoped_release>(),
        py::arg("ids"), py::arg("modality"), py::arg("remap"), py::arg("wte"), py::arg("wpe"),
        py::arg("positions"), py::arg("out"), py::arg("num_tokens"), py::arg("hidden"),
        py::arg("dtype"));
}
