// fitnets_fast._C: fused CPU kernels (no libtorch; the Python side passes data pointers and sizes).
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace fitnets {
void register_maxout(py::module_& m);
void register_maxout_conv(py::module_& m);
void register_hint_loss(py::module_& m);
void register_kd_loss(py::module_& m);
void register_optim(py::module_& m);
void register_dropout(py::module_& m);
}  // namespace fitnets

PYBIND11_MODULE(_C, m) {
    m.doc() = "Fused CPU kernels of fitnets_fast (maxout, maxout + max-pool, hint-loss epilogue, KD loss, the optimisers' "
            "updates and max-norm, dropout); float32 and float64, bfloat16 for the maxout kernels.";
    fitnets::register_maxout(m);
    fitnets::register_maxout_conv(m);
    fitnets::register_hint_loss(m);
    fitnets::register_kd_loss(m);
    fitnets::register_optim(m);
    fitnets::register_dropout(m);
}
