// Every schema of the mlmfast op family, in one TORCH_LIBRARY block. Backends register their
// kernels in cpu/ and cuda/ (TORCH_LIBRARY_IMPL); mlmfast/ops.py is the typed Python surface.
#include <Python.h>
#include <torch/library.h>

#include "mask_tokens.h"
#include "span_corrupt_op.h"

// Importing mlmfast._C from Python loads this shared object, which runs the static
// registrations below. Besides the ops it exposes only the collation helpers of cpu/collate.cpp
// (Python's limited API: one abi3 wheel per platform and torch).
namespace mlmfast {
PyMethodDef* collate_methods();  // cpu/collate.cpp
}

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                          mlmfast::collate_methods()};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(mlmfast, m) {
  m.def("mask_tokens(Tensor input_ids, " MLMFAST_MASK_ARGS ") -> (Tensor, Tensor)");
  m.def("mask_tokens_(Tensor(a!) input_ids, Tensor(b!) labels, " MLMFAST_MASK_ARGS ") -> ()");
  m.def("mask_tokens_into(Tensor input_ids, Tensor(a!) out, Tensor(b!) labels, " MLMFAST_MASK_ARGS
        ") -> ()");
  m.def("philox4x32_10(Tensor counters, int seed) -> Tensor");
  // T5 span corruption: (input_ids, attention_mask, labels), int64
  m.def("span_corrupt(Tensor input_ids, " MLMFAST_SPAN_ARGS ") -> (Tensor, Tensor, Tensor)");
}
