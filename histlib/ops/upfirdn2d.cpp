// Python binding and argument checks of the upfirdn2d kernel (upfirdn2d.cu).
#include <torch/extension.h>

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                          int64_t downy, int64_t px0, int64_t px1, int64_t py0, int64_t py1);

static at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                            int64_t downy, int64_t px0, int64_t px1, int64_t py0, int64_t py1) {
    TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor");
    TORCH_CHECK(x.dim() == 4 && x.is_floating_point(), "upfirdn2d: x must be a float [N, C, H, W] tensor");
    TORCH_CHECK(x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast),
                "upfirdn2d: x must be contiguous or channels_last");
    const auto acc = x.scalar_type() == at::ScalarType::Double ? at::ScalarType::Double : at::ScalarType::Float;
    TORCH_CHECK(f.device() == x.device() && f.scalar_type() == acc && f.dim() == 2 && f.is_contiguous(),
                "upfirdn2d: f must be a contiguous 2-D ", acc, " tensor on the device of x");
    TORCH_CHECK(f.size(0) >= 1 && f.size(1) >= 1, "upfirdn2d: f must not be empty");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up and down must be >= 1");
    TORCH_CHECK(x.size(3) * upx + px0 + px1 >= f.size(1) && x.size(2) * upy + py0 + py1 >= f.size(0),
                "upfirdn2d: the padded input is smaller than the filter");
    TORCH_CHECK(x.numel() < (int64_t(1) << 62), "upfirdn2d: x is too large");
    return upfirdn2d_cuda(x, f, upx, upy, downx, downy, px0, px1, py0, py1);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "zero-insertion upsampling, padding, FIR correlation and downsampling");
}
