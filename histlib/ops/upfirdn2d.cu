// upfirdn2d: zero-insertion upsampling, padding, FIR correlation and downsampling in one pass.
//
// One thread per output sample (n, c, oy, ox). In the upsampled-and-padded image, tap (ky, kx) of that output reads
// position (oy * downy + ky, ox * downx + kx), i.e. upsampled coordinate u = o * down - pad0 + k, which holds a real
// input sample only when u is a multiple of `up` (polyphase: those taps are k = k0, k0 + up, ...). The taps `f`
// arrive already flipped (convolution vs correlation) and scaled by the gain, in the accumulation type.
// The output is allocated in the memory order of x (contiguous or channels_last) and threads walk it linearly.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

namespace {

struct Params {
    int64_t n;  // number of outputs
    int C, in_h, in_w, out_h, out_w;
    int64_t sxn, sxc, sxh, sxw;  // element strides of x
    int upx, upy, downx, downy, px0, py0, fw, fh;
    bool channels_last;  // memory order of the output (and x)
};

__device__ __forceinline__ int pos_mod(int a, int m) {
    const int r = a % m;
    return r < 0 ? r + m : r;
}

constexpr int kThreads = 256;

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) upfirdn2d_kernel(
        scalar_t* __restrict__ y, const scalar_t* __restrict__ x, const at::opmath_type<scalar_t>* __restrict__ f,
        Params p) {
    using T = at::opmath_type<scalar_t>;
    const index_t n_out = static_cast<index_t>(p.n);
    const index_t stride = static_cast<index_t>(gridDim.x) * kThreads;
    for (index_t idx = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; idx < n_out; idx += stride) {
        index_t t = idx;
        int ox, oy, c;
        index_t n;
        if (p.channels_last) {  // [N, H, W, C] in memory
            c = static_cast<int>(t % p.C);
            t /= p.C;
            ox = static_cast<int>(t % p.out_w);
            t /= p.out_w;
            oy = static_cast<int>(t % p.out_h);
            n = t / p.out_h;
        } else {  // [N, C, H, W]
            ox = static_cast<int>(t % p.out_w);
            t /= p.out_w;
            oy = static_cast<int>(t % p.out_h);
            t /= p.out_h;
            c = static_cast<int>(t % p.C);
            n = t / p.C;
        }
        const int uy0 = oy * p.downy - p.py0;  // upsampled row read by tap ky = 0
        const int ux0 = ox * p.downx - p.px0;
        const int ky0 = pos_mod(-uy0, p.upy);  // first tap that lands on a real (non-inserted) row
        const int kx0 = pos_mod(-ux0, p.upx);
        const scalar_t* xp = x + static_cast<int64_t>(n) * p.sxn + static_cast<int64_t>(c) * p.sxc;
        T acc = T(0);
        for (int ky = ky0; ky < p.fh; ky += p.upy) {
            const int iy = (uy0 + ky) / p.upy;  // exact: uy0 + ky is a multiple of upy
            if (iy < 0) continue;
            if (iy >= p.in_h) break;
            const scalar_t* row = xp + static_cast<int64_t>(iy) * p.sxh;
            const T* frow = f + ky * p.fw;
            for (int kx = kx0; kx < p.fw; kx += p.upx) {
                const int ix = (ux0 + kx) / p.upx;
                if (ix < 0) continue;
                if (ix >= p.in_w) break;
                acc += frow[kx] * static_cast<T>(row[static_cast<int64_t>(ix) * p.sxw]);
            }
        }
        y[idx] = static_cast<scalar_t>(acc);
    }
}

}  // namespace

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                          int64_t downy, int64_t px0, int64_t px1, int64_t py0, int64_t py1) {
    const c10::cuda::CUDAGuard guard(x.device());
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const int64_t fh = f.size(0), fw = f.size(1);
    const int64_t out_w = (W * upx + px0 + px1 - fw) / downx + 1;  // numerators checked >= 0 by the caller
    const int64_t out_h = (H * upy + py0 + py1 - fh) / downy + 1;
    const bool channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor y = at::empty({N, C, out_h, out_w},
                             x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
    if (y.numel() == 0 || x.numel() == 0) return y.zero_();

    Params p;
    p.n = y.numel();
    p.C = static_cast<int>(C);
    p.in_h = static_cast<int>(H);
    p.in_w = static_cast<int>(W);
    p.out_h = static_cast<int>(out_h);
    p.out_w = static_cast<int>(out_w);
    p.sxn = x.stride(0);
    p.sxc = x.stride(1);
    p.sxh = x.stride(2);
    p.sxw = x.stride(3);
    p.upx = static_cast<int>(upx);
    p.upy = static_cast<int>(upy);
    p.downx = static_cast<int>(downx);
    p.downy = static_cast<int>(downy);
    p.px0 = static_cast<int>(px0);
    p.py0 = static_cast<int>(py0);
    p.fw = static_cast<int>(fw);
    p.fh = static_cast<int>(fh);
    p.channels_last = channels_last;

    const int64_t blocks = std::min<int64_t>((p.n + kThreads - 1) / kThreads, int64_t(1) << 30);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "upfirdn2d", [&] {
        using T = at::opmath_type<scalar_t>;
        auto stream = c10::cuda::getCurrentCUDAStream();
        if (p.n <= INT32_MAX) {  // 32-bit index decoding is several times cheaper than 64-bit
            upfirdn2d_kernel<scalar_t, uint32_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
                y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), f.data_ptr<T>(), p);
        } else {
            upfirdn2d_kernel<scalar_t, uint64_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
                y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), f.data_ptr<T>(), p);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return y;
}
