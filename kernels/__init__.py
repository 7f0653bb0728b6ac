"""Ops of codeinfer: a torch reference (`kernels.reference`), C++ CPU kernels (`kernels.cpu`) and
Triton GPU kernels (`kernels.triton`), all with the same signatures. This package never imports
`engine`."""
