// Python binding and argument checks of the fused bias + activation kernel (bias_act.cu).
#include <torch/extension.h>

at::Tensor bias_act_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g, int64_t mode, int64_t act,
                         double alpha, double gain, double clamp, int64_t step, int64_t size);

static at::Tensor bias_act(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g, int64_t mode, int64_t act,
                           double alpha, double gain, double clamp, int64_t step, int64_t size) {
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
    TORCH_CHECK(x.is_floating_point(), "bias_act: x must be a floating-point tensor");
    TORCH_CHECK(x.is_non_overlapping_and_dense(), "bias_act: x must be dense (contiguous or channels_last)");
    TORCH_CHECK(mode >= 0 && mode <= 2, "bias_act: mode must be 0, 1 or 2");
    TORCH_CHECK(act >= 0 && act <= 8, "bias_act: unknown activation index ", act);
    TORCH_CHECK(step >= 1 && size >= 1, "bias_act: step and size must be positive");
    if (b.numel() > 0) {
        TORCH_CHECK(b.device() == x.device() && b.scalar_type() == x.scalar_type(),
                    "bias_act: b must have the device and dtype of x");
        TORCH_CHECK(b.dim() == 1 && b.numel() == size && b.is_contiguous(), "bias_act: b must be contiguous [size]");
    }
    if (mode > 0) {
        TORCH_CHECK(g.device() == x.device() && g.scalar_type() == x.scalar_type(),
                    "bias_act: g must have the device and dtype of x");
        TORCH_CHECK(g.sizes() == x.sizes() && g.strides() == x.strides(), "bias_act: g must have the layout of x");
    }
    return bias_act_cuda(x, b, g, mode, act, alpha, gain, clamp, step, size);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act, "fused bias + activation + gain + clamp (mode 0) and its derivatives (modes 1, 2)");
}
