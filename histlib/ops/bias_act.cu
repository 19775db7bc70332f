// Fused bias + activation + gain + clamp, and its first and second derivatives, as one element-wise pass.
//
// s = x + b[c] with c = (i / step) % size for the element at memory offset i (true for any dense layout where the
// bias dimension has stride `step`, e.g. c = i % C for channels_last), then
//   mode 0: y = clamp(gain * f(s))
//   mode 1: y = g * gain * f'(s)  * [|gain * f(s)| <= clamp]
//   mode 2: y = g * gain * f''(s) * [|gain * f(s)| <= clamp]
// Arithmetic runs in float for half / bfloat16 / float inputs and in double for double inputs.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

namespace {

__device__ __forceinline__ float exp_(float v) { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
__device__ __forceinline__ float expm1_(float v) { return expm1f(v); }
__device__ __forceinline__ double expm1_(double v) { return expm1(v); }
__device__ __forceinline__ float log1p_(float v) { return log1pf(v); }
__device__ __forceinline__ double log1p_(double v) { return log1p(v); }
__device__ __forceinline__ float tanh_(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_(double v) { return tanh(v); }

template <typename T>
__device__ __forceinline__ T sigmoid_(T s) {
    return T(1) / (T(1) + exp_(-s));
}

// order 0: f(s), 1: f'(s), 2: f''(s). Activation numbers follow `cuda_idx` in bias_act.py.
template <typename T>
__device__ __forceinline__ T act_fn(int act, int order, T s, T alpha) {
    const T zero = T(0);
    const T one = T(1);
    switch (act) {
        case 0:  // linear
            return order == 0 ? s : (order == 1 ? one : zero);
        case 1:  // relu (derivative 0 at s = 0, as torch)
            if (order == 0) return s > zero ? s : zero;
            return (order == 1 && s > zero) ? one : zero;
        case 2:  // lrelu
            if (order == 0) return s > zero ? s : s * alpha;
            return order == 1 ? (s > zero ? one : alpha) : zero;
        case 3: {  // tanh
            const T t = tanh_(s);
            if (order == 0) return t;
            const T d = one - t * t;
            return order == 1 ? d : T(-2) * t * d;
        }
        case 4: {  // sigmoid
            const T sg = sigmoid_(s);
            if (order == 0) return sg;
            const T d = sg * (one - sg);
            return order == 1 ? d : d * (one - T(2) * sg);
        }
        case 5: {  // elu: alpha (e^s - 1) below 0
            if (s > zero) return order == 0 ? s : (order == 1 ? one : zero);
            return order == 0 ? alpha * expm1_(s) : alpha * exp_(s);
        }
        case 6: {  // selu
            const T scale = T(1.0507009873554805);
            const T scale_alpha = T(1.0507009873554805 * 1.6732632423543772);
            if (s > zero) return order == 0 ? scale * s : (order == 1 ? scale : zero);
            return order == 0 ? scale_alpha * expm1_(s) : scale_alpha * exp_(s);
        }
        case 7: {  // softplus, linear above 20 as torch
            if (s > T(20)) return order == 0 ? s : (order == 1 ? one : zero);
            if (order == 0) return log1p_(exp_(s));
            const T sg = sigmoid_(s);
            return order == 1 ? sg : sg * (one - sg);
        }
        case 8: {  // swish
            const T sg = sigmoid_(s);
            if (order == 0) return s * sg;
            if (order == 1) return sg * (one + s * (one - sg));
            return sg * (one - sg) * (T(2) + s * (one - T(2) * sg));
        }
        default:
            return zero;
    }
}

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // independent loads in flight per thread (scalar kernel)

// One output element from s = x + b, the incoming gradient gv (modes 1, 2) and the constants.
template <typename T>
__device__ __forceinline__ T bias_act_value(int mode, int act, T s, T gv, T alpha, T gain, T clamp) {
    if (mode == 0) {
        T v = act_fn<T>(act, 0, s, alpha) * gain;
        if (clamp >= T(0)) v = v > clamp ? clamp : (v < -clamp ? -clamp : v);
        return v;
    }
    T v = gv * act_fn<T>(act, mode, s, alpha) * gain;
    if (clamp >= T(0)) {
        const T out = act_fn<T>(act, 0, s, alpha) * gain;
        if (out > clamp || out < -clamp) v = T(0);  // clamped outputs pass no gradient
    }
    return v;
}

// Scalar kernel: any size and alignment.
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) bias_act_kernel(
        scalar_t* __restrict__ y, const scalar_t* __restrict__ x, const scalar_t* __restrict__ b,
        const scalar_t* __restrict__ g, index_t n, index_t step, index_t size, int mode, int act,
        at::opmath_type<scalar_t> alpha, at::opmath_type<scalar_t> gain, at::opmath_type<scalar_t> clamp) {
    using T = at::opmath_type<scalar_t>;
    const index_t stride = static_cast<index_t>(gridDim.x) * kThreads * kUnroll;
    for (index_t base = static_cast<index_t>(blockIdx.x) * kThreads * kUnroll + threadIdx.x; base < n;
         base += stride) {
        T s[kUnroll];
        T gv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const index_t i = base + static_cast<index_t>(u) * kThreads;
            s[u] = T(0);
            gv[u] = T(0);
            if (i < n) {
                s[u] = static_cast<T>(x[i]);
                if (b != nullptr) s[u] += static_cast<T>(b[(i / step) % size]);
                if (mode > 0) gv[u] = static_cast<T>(g[i]);
            }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const index_t i = base + static_cast<index_t>(u) * kThreads;
            if (i < n) y[i] = static_cast<scalar_t>(bias_act_value<T>(mode, act, s[u], gv[u], alpha, gain, clamp));
        }
    }
}

// 16 bytes of elements, loaded and stored as one vector.
template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
    scalar_t v[VEC];
};

// Vector kernel: n % VEC == 0 and x, y, g 16-byte aligned. One division pair per vector: the bias index of the
// following elements is stepped along (r counts up to `step`, then c moves to the next channel).
template <typename scalar_t, typename index_t, int VEC>
__global__ void __launch_bounds__(kThreads) bias_act_vec_kernel(
        scalar_t* __restrict__ y, const scalar_t* __restrict__ x, const scalar_t* __restrict__ b,
        const scalar_t* __restrict__ g, index_t n_vec, index_t step, index_t size, int mode, int act,
        at::opmath_type<scalar_t> alpha, at::opmath_type<scalar_t> gain, at::opmath_type<scalar_t> clamp) {
    using T = at::opmath_type<scalar_t>;
    using P = Pack<scalar_t, VEC>;
    const P* xv = reinterpret_cast<const P*>(x);
    const P* gvp = reinterpret_cast<const P*>(g);
    P* yv = reinterpret_cast<P*>(y);
    const index_t stride = static_cast<index_t>(gridDim.x) * kThreads;
    for (index_t vi = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; vi < n_vec; vi += stride) {
        const P xp = xv[vi];
        P gp;
        if (mode > 0) gp = gvp[vi];
        const index_t i0 = vi * VEC;
        const index_t q = i0 / step;
        index_t r = i0 - q * step;
        index_t c = q % size;
        P out;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            T s = static_cast<T>(xp.v[k]);
            if (b != nullptr) s += static_cast<T>(b[c]);
            const T gval = mode > 0 ? static_cast<T>(gp.v[k]) : T(0);
            out.v[k] = static_cast<scalar_t>(bias_act_value<T>(mode, act, s, gval, alpha, gain, clamp));
            if (++r == step) {
                r = 0;
                if (++c == size) c = 0;
            }
        }
        yv[vi] = out;
    }
}

bool aligned16(const void* p) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <typename scalar_t, typename index_t>
void launch(at::Tensor& y, const at::Tensor& x, const at::Tensor& b, const at::Tensor& g, int64_t mode, int64_t act,
            double alpha, double gain, double clamp, int64_t step, int64_t size) {
    using T = at::opmath_type<scalar_t>;
    constexpr int VEC = 16 / sizeof(scalar_t);
    const int64_t n = x.numel();
    const scalar_t* bp = b.numel() > 0 ? b.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gp = mode > 0 ? g.data_ptr<scalar_t>() : nullptr;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    auto stream = c10::cuda::getCurrentCUDAStream();
    const bool vec_ok = n % VEC == 0 && aligned16(xp) && aligned16(yp) && (gp == nullptr || aligned16(gp));
    if (vec_ok) {
        const int64_t n_vec = n / VEC;
        const int64_t blocks = std::min<int64_t>((n_vec + kThreads - 1) / kThreads, int64_t(1) << 30);
        bias_act_vec_kernel<scalar_t, index_t, VEC><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
            yp, xp, bp, gp, static_cast<index_t>(n_vec), static_cast<index_t>(step), static_cast<index_t>(size),
            static_cast<int>(mode), static_cast<int>(act), static_cast<T>(alpha), static_cast<T>(gain),
            static_cast<T>(clamp));
    } else {
        const int64_t per_block = static_cast<int64_t>(kThreads) * kUnroll;
        const int64_t blocks = std::min<int64_t>((n + per_block - 1) / per_block, int64_t(1) << 30);
        bias_act_kernel<scalar_t, index_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
            yp, xp, bp, gp, static_cast<index_t>(n), static_cast<index_t>(step), static_cast<index_t>(size),
            static_cast<int>(mode), static_cast<int>(act), static_cast<T>(alpha), static_cast<T>(gain),
            static_cast<T>(clamp));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor bias_act_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g, int64_t mode, int64_t act,
                         double alpha, double gain, double clamp, int64_t step, int64_t size) {
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor y = at::empty_like(x);  // a dense x keeps its exact strides, so y[i] pairs with x[i]
    TORCH_CHECK(y.strides() == x.strides(), "bias_act: could not allocate the output in the layout of x");
    if (x.numel() == 0) return y;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "bias_act", [&] {
        // 32-bit indices are much cheaper for the division by `step`; unsigned so base + stride cannot overflow
        if (x.numel() <= INT32_MAX) {
            launch<scalar_t, uint32_t>(y, x, b, g, mode, act, alpha, gain, clamp, step, size);
        } else {
            launch<scalar_t, uint64_t>(y, x, b, g, mode, act, alpha, gain, clamp, step, size);
        }
    });
    return y;
}
