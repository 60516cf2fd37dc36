// Pooling and local response normalisation on the CPU as XLA FFI handlers, for
// `clr_jax.harness.native`.
//
// Layout NHWC, float32, any number of leading batch dimensions (vmap folds into them).
// Pooling: windows of kh x kw every sh, sw rows and columns; the output size is given by
// the result's shape, and the window entries past the input's edge take no part (Caffe's
// rounded-up output size, as `kernels.max_pool_ceil` pads with -inf).
//
// Max pooling's forward pass: the maxima and, per output entry, the position of its window's first maximum
// in row-major order (an int8, i * kw + j), which is the gradient's routing. A NaN in a
// window makes its maximum NaN (as XLA's max does) and takes the routing.
// Its backward pass: each cotangent entry added to the input entry its routing names; an
// input entry shared by several windows sums their shares in the windows' row-major
// order, so the result does not depend on the number of threads.
//
// Average pooling divides each window's sum by its number of real entries (those inside
// the input); its backward pass gives each input entry the sum of its windows' shares,
// each cotangent entry divided by that number, in the windows' row-major order.
//
// LRN within channels (Caffe's WITHIN_CHANNEL, a size x size window, zero padded):
// y = x s^-beta with s = 1 + a * sum of x^2 over the window (a = alpha / size^2). Its
// backward pass recomputes s from x: dx = g s^-beta - c x W(g x s^-beta / s), with
// W the window sum and c = 2 alpha beta / size^2.
//
// Both run over the images in chunks, shared between the calling thread and XLA's
// intra-op thread pool; the caller claims any chunk no pool thread has started, so it
// never waits on a task that is queued behind it.

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t images, h, w, c, oh, ow, kh, kw, sh, sw;
};

// body(first, last) over the images [0, n), in chunks run by the caller and the pool.
template <typename Body>
void ForImages(ffi::ThreadPool& pool, int64_t n, const Body& body) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunks = std::min<int64_t>(n, 4 * threads);
  if (threads == 1 || chunks <= 1) {
    body(0, n);
    return;
  }
  struct Progress {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto progress = std::make_shared<Progress>();
  // A pool task that starts after every chunk is claimed returns at once and touches
  // nothing but `progress`, which it co-owns: the buffers behind `body` may be gone.
  auto work = [progress, n, chunks, body]() {
    for (int64_t i; (i = progress->next.fetch_add(1)) < chunks;) {
      body(n * i / chunks, n * (i + 1) / chunks);
      progress->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < threads; ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  while (progress->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// run(std::integral_constant<int64_t, C>) with C the channel count where it is a common
// one (the compiler then keeps a window's channels in registers), else 0 (any count).
template <typename Run>
void ByChannels(int64_t c, const Run& run) {
  switch (c) {
    case 16: return run(std::integral_constant<int64_t, 16>());
    case 32: return run(std::integral_constant<int64_t, 32>());
    case 64: return run(std::integral_constant<int64_t, 64>());
    default: return run(std::integral_constant<int64_t, 0>());
  }
}

// The windows [first, last) along one axis (size k, stride s, `count` of them) that
// hold entry `at`: those with first * s <= at < first * s + k.
inline std::pair<int64_t, int64_t> Holding(int64_t at, int64_t k, int64_t s, int64_t count) {
  return {at < k ? 0 : (at - k) / s + 1, std::min(count, at / s + 1)};
}

ffi::Error Shape(ffi::Span<const int64_t> in, ffi::Span<const int64_t> out, int64_t kh,
                 int64_t kw, int64_t sh, int64_t sw, Geometry* g) {
  const size_t rank = in.size();
  if (rank < 3 || out.size() != rank) {
    return ffi::Error::InvalidArgument("max pooling: want (..., H, W, C) arrays of one rank");
  }
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || kh * kw > 127) {
    return ffi::Error::InvalidArgument("max pooling: window 1..127 entries, strides >= 1");
  }
  int64_t images = 1;
  for (size_t a = 0; a + 3 < rank; ++a) {
    if (in[a] != out[a]) {
      return ffi::Error::InvalidArgument("max pooling: batch dimensions differ");
    }
    images *= in[a];
  }
  *g = {images, in[rank - 3], in[rank - 2], in[rank - 1], out[rank - 3], out[rank - 2],
        kh, kw, sh, sw};
  if (out[rank - 1] != g->c || g->oh < 0 || g->ow < 0 ||
      (g->oh > 0 && (g->oh - 1) * sh >= g->h) || (g->ow > 0 && (g->ow - 1) * sw >= g->w)) {
    return ffi::Error::InvalidArgument("max pooling: every window must start in the input");
  }
  return ffi::Error::Success();
}

template <int64_t kC>
void MaxForward(const Geometry& g, const float* __restrict x, float* __restrict y,
             int8_t* __restrict index, int64_t first, int64_t last) {
  const int64_t c = kC ? kC : g.c;
  for (int64_t n = first; n < last; ++n) {
    const float* image = x + n * g.h * g.w * c;
    for (int64_t oy = 0; oy < g.oh; ++oy) {
      const int64_t y0 = oy * g.sh, rows = std::min(g.kh, g.h - y0);
      for (int64_t ox = 0; ox < g.ow; ++ox) {
        const int64_t x0 = ox * g.sw, cols = std::min(g.kw, g.w - x0);
        const int64_t at = ((n * g.oh + oy) * g.ow + ox) * c;
        float* __restrict best = y + at;
        int8_t* __restrict where = index + at;
        std::memcpy(best, image + (y0 * g.w + x0) * c, c * sizeof(float));
        std::memset(where, 0, c);
        for (int64_t i = 0; i < rows; ++i) {
          for (int64_t j = (i == 0); j < cols; ++j) {
            const float* __restrict v = image + ((y0 + i) * g.w + x0 + j) * c;
            const int8_t k = static_cast<int8_t>(i * g.kw + j);
            for (int64_t ch = 0; ch < c; ++ch) {
              // larger, or a NaN where the maximum so far is not one
              const bool take = !(v[ch] <= best[ch]) && best[ch] == best[ch];
              best[ch] = take ? v[ch] : best[ch];
              where[ch] = take ? k : where[ch];
            }
          }
        }
      }
    }
  }
}

template <int64_t kC>
void MaxBackward(const Geometry& g, const int8_t* __restrict index, const float* __restrict gy,
              float* __restrict dx, int64_t first, int64_t last) {
  // Gathered per input entry (each written once, no zeroing pass), from the windows
  // that hold it in row-major order: the same sums, in the same order, as adding each
  // window's shares in turn to a zeroed input.
  const int64_t c = kC ? kC : g.c;
  for (int64_t n = first; n < last; ++n) {
    for (int64_t yy = 0; yy < g.h; ++yy) {
      const auto [oy0, oy1] = Holding(yy, g.kh, g.sh, g.oh);
      for (int64_t xx = 0; xx < g.w; ++xx) {
        const auto [ox0, ox1] = Holding(xx, g.kw, g.sw, g.ow);
        float* __restrict d = dx + ((n * g.h + yy) * g.w + xx) * c;
        for (int64_t ch = 0; ch < c; ++ch) d[ch] = 0.0f;
        for (int64_t oy = oy0; oy < oy1; ++oy) {
          for (int64_t ox = ox0; ox < ox1; ++ox) {
            const int64_t at = ((n * g.oh + oy) * g.ow + ox) * c;
            const int8_t* __restrict where = index + at;
            const float* __restrict share = gy + at;
            const int8_t k = static_cast<int8_t>((yy - oy * g.sh) * g.kw + xx - ox * g.sw);
            for (int64_t ch = 0; ch < c; ++ch) d[ch] += where[ch] == k ? share[ch] : 0.0f;
          }
        }
      }
    }
  }
}

template <int64_t kC>
void AvgForward(const Geometry& g, const float* __restrict x, float* __restrict y,
                int64_t first, int64_t last) {
  const int64_t c = kC ? kC : g.c;
  for (int64_t n = first; n < last; ++n) {
    const float* image = x + n * g.h * g.w * c;
    for (int64_t oy = 0; oy < g.oh; ++oy) {
      const int64_t y0 = oy * g.sh, rows = std::min(g.kh, g.h - y0);
      for (int64_t ox = 0; ox < g.ow; ++ox) {
        const int64_t x0 = ox * g.sw, cols = std::min(g.kw, g.w - x0);
        float* __restrict total = y + ((n * g.oh + oy) * g.ow + ox) * c;
        for (int64_t ch = 0; ch < c; ++ch) total[ch] = 0.0f;
        for (int64_t i = 0; i < rows; ++i) {
          for (int64_t j = 0; j < cols; ++j) {
            const float* __restrict v = image + ((y0 + i) * g.w + x0 + j) * c;
            for (int64_t ch = 0; ch < c; ++ch) total[ch] += v[ch];
          }
        }
        const float count = static_cast<float>(rows * cols);
        for (int64_t ch = 0; ch < c; ++ch) total[ch] /= count;
      }
    }
  }
}

template <int64_t kC>
void AvgBackward(const Geometry& g, const float* __restrict gy, float* __restrict dx,
                 int64_t first, int64_t last) {
  const int64_t c = kC ? kC : g.c;
  for (int64_t n = first; n < last; ++n) {
    for (int64_t yy = 0; yy < g.h; ++yy) {
      const auto [oy0, oy1] = Holding(yy, g.kh, g.sh, g.oh);
      for (int64_t xx = 0; xx < g.w; ++xx) {
        const auto [ox0, ox1] = Holding(xx, g.kw, g.sw, g.ow);
        float* __restrict d = dx + ((n * g.h + yy) * g.w + xx) * c;
        for (int64_t ch = 0; ch < c; ++ch) d[ch] = 0.0f;
        for (int64_t oy = oy0; oy < oy1; ++oy) {
          const int64_t rows = std::min(g.kh, g.h - oy * g.sh);
          for (int64_t ox = ox0; ox < ox1; ++ox) {
            const float count = static_cast<float>(rows * std::min(g.kw, g.w - ox * g.sw));
            const float* __restrict share = gy + ((n * g.oh + oy) * g.ow + ox) * c;
            for (int64_t ch = 0; ch < c; ++ch) d[ch] += share[ch] / count;
          }
        }
      }
    }
  }
}

struct Lrn {
  int64_t images, h, w, c, size;
  float a, beta, coefficient;
};

ffi::Error LrnShape(ffi::Span<const int64_t> in, ffi::Span<const int64_t> out, int64_t size,
                    Lrn* l) {
  if (in.size() < 3 || out.size() != in.size() ||
      !std::equal(in.begin(), in.end(), out.begin())) {
    return ffi::Error::InvalidArgument("lrn: want (..., H, W, C) arrays of one shape");
  }
  if (size < 1 || size % 2 == 0) return ffi::Error::InvalidArgument("lrn: odd size >= 1");
  const size_t rank = in.size();
  l->images = 1;
  for (size_t a = 0; a + 3 < rank; ++a) l->images *= in[a];
  l->h = in[rank - 3];
  l->w = in[rank - 2];
  l->c = in[rank - 1];
  l->size = size;
  return ffi::Error::Success();
}

// s = 1 + a * (window sum of x^2) at every entry of one image, into `scale`.
template <int64_t kC>
void LrnScale(const Lrn& l, const float* __restrict x, float* __restrict scale) {
  const int64_t c = kC ? kC : l.c, r = l.size / 2;
  for (int64_t yy = 0; yy < l.h; ++yy) {
    for (int64_t xx = 0; xx < l.w; ++xx) {
      float* __restrict s = scale + (yy * l.w + xx) * c;
      for (int64_t ch = 0; ch < c; ++ch) s[ch] = 0.0f;
      for (int64_t i = std::max<int64_t>(0, yy - r); i <= std::min(l.h - 1, yy + r); ++i) {
        for (int64_t j = std::max<int64_t>(0, xx - r); j <= std::min(l.w - 1, xx + r); ++j) {
          const float* __restrict v = x + (i * l.w + j) * c;
          for (int64_t ch = 0; ch < c; ++ch) s[ch] += v[ch] * v[ch];
        }
      }
      for (int64_t ch = 0; ch < c; ++ch) s[ch] = 1.0f + l.a * s[ch];
    }
  }
}

// s^-beta in place: two square roots for the usual 0.75, else the power.
void LrnPower(const Lrn& l, float* __restrict s, int64_t count) {
  if (l.beta == 0.75f) {
    for (int64_t i = 0; i < count; ++i) {
      const float root = 1.0f / std::sqrt(s[i]);
      s[i] = root * std::sqrt(root);
    }
  } else {
    for (int64_t i = 0; i < count; ++i) s[i] = std::pow(s[i], -l.beta);
  }
}

template <int64_t kC>
void LrnForward(const Lrn& l, const float* __restrict x, float* __restrict y, int64_t first,
                int64_t last) {
  const int64_t entries = l.h * l.w * l.c;
  std::vector<float> power(entries);
  for (int64_t n = first; n < last; ++n) {
    LrnScale<kC>(l, x + n * entries, power.data());
    LrnPower(l, power.data(), entries);
    const float* __restrict in = x + n * entries;
    float* __restrict out = y + n * entries;
    for (int64_t i = 0; i < entries; ++i) out[i] = in[i] * power[i];
  }
}

template <int64_t kC>
void LrnBackward(const Lrn& l, const float* __restrict x, const float* __restrict gy,
                 float* __restrict dx, int64_t first, int64_t last) {
  const int64_t entries = l.h * l.w * l.c, c = kC ? kC : l.c, r = l.size / 2;
  std::vector<float> scale(entries), power(entries), t(entries);
  for (int64_t n = first; n < last; ++n) {
    const float* __restrict in = x + n * entries;
    const float* __restrict g = gy + n * entries;
    float* __restrict out = dx + n * entries;
    LrnScale<kC>(l, in, scale.data());
    std::copy(scale.begin(), scale.end(), power.begin());
    LrnPower(l, power.data(), entries);
    for (int64_t i = 0; i < entries; ++i) t[i] = g[i] * (in[i] * power[i]) / scale[i];
    for (int64_t yy = 0; yy < l.h; ++yy) {
      for (int64_t xx = 0; xx < l.w; ++xx) {
        const int64_t at = (yy * l.w + xx) * c;
        float* __restrict d = out + at;
        for (int64_t ch = 0; ch < c; ++ch) d[ch] = 0.0f;
        for (int64_t i = std::max<int64_t>(0, yy - r); i <= std::min(l.h - 1, yy + r); ++i) {
          for (int64_t j = std::max<int64_t>(0, xx - r); j <= std::min(l.w - 1, xx + r); ++j) {
            const float* __restrict v = t.data() + (i * l.w + j) * c;
            for (int64_t ch = 0; ch < c; ++ch) d[ch] += v[ch];
          }
        }
        for (int64_t ch = 0; ch < c; ++ch) {
          d[ch] = g[at + ch] * power[at + ch] - l.coefficient * in[at + ch] * d[ch];
        }
      }
    }
  }
}

ffi::Error MaxPoolForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::S8> index,
                              int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
  Geometry g;
  if (ffi::Error e = Shape(x.dimensions(), y->dimensions(), kh, kw, sh, sw, &g); e.failure()) {
    return e;
  }
  const float* in = x.typed_data();
  float* out = y->typed_data();
  int8_t* where = index->typed_data();
  ByChannels(g.c, [&](auto k) {
    ForImages(pool, g.images, [&g, in, out, where](int64_t a, int64_t b) {
      MaxForward<decltype(k)::value>(g, in, out, where, a, b);
    });
  });
  return ffi::Error::Success();
}

ffi::Error MaxPoolBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> index,
                               ffi::Buffer<ffi::F32> gy, ffi::ResultBuffer<ffi::F32> dx,
                               int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
  Geometry g;
  if (ffi::Error e = Shape(dx->dimensions(), gy.dimensions(), kh, kw, sh, sw, &g);
      e.failure()) {
    return e;
  }
  const int8_t* where = index.typed_data();
  const float* share = gy.typed_data();
  float* out = dx->typed_data();
  ByChannels(g.c, [&](auto k) {
    ForImages(pool, g.images, [&g, where, share, out](int64_t a, int64_t b) {
      MaxBackward<decltype(k)::value>(g, where, share, out, a, b);
    });
  });
  return ffi::Error::Success();
}

ffi::Error AvgPoolForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::ResultBuffer<ffi::F32> y, int64_t kh, int64_t kw,
                              int64_t sh, int64_t sw) {
  Geometry g;
  if (ffi::Error e = Shape(x.dimensions(), y->dimensions(), kh, kw, sh, sw, &g); e.failure()) {
    return e;
  }
  const float* in = x.typed_data();
  float* out = y->typed_data();
  ByChannels(g.c, [&](auto k) {
    ForImages(pool, g.images, [&g, in, out](int64_t a, int64_t b) {
      AvgForward<decltype(k)::value>(g, in, out, a, b);
    });
  });
  return ffi::Error::Success();
}

ffi::Error AvgPoolBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gy,
                               ffi::ResultBuffer<ffi::F32> dx, int64_t kh, int64_t kw,
                               int64_t sh, int64_t sw) {
  Geometry g;
  if (ffi::Error e = Shape(dx->dimensions(), gy.dimensions(), kh, kw, sh, sw, &g);
      e.failure()) {
    return e;
  }
  const float* share = gy.typed_data();
  float* out = dx->typed_data();
  ByChannels(g.c, [&](auto k) {
    ForImages(pool, g.images, [&g, share, out](int64_t a, int64_t b) {
      AvgBackward<decltype(k)::value>(g, share, out, a, b);
    });
  });
  return ffi::Error::Success();
}

ffi::Error LrnForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::ResultBuffer<ffi::F32> y, int64_t size, float a, float beta) {
  Lrn l;
  if (ffi::Error e = LrnShape(x.dimensions(), y->dimensions(), size, &l); e.failure()) return e;
  l.a = a;
  l.beta = beta;
  l.coefficient = 0.0f;
  const float* in = x.typed_data();
  float* out = y->typed_data();
  ByChannels(l.c, [&](auto k) {
    ForImages(pool, l.images, [&l, in, out](int64_t p, int64_t q) {
      LrnForward<decltype(k)::value>(l, in, out, p, q);
    });
  });
  return ffi::Error::Success();
}

ffi::Error LrnBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> gy, ffi::ResultBuffer<ffi::F32> dx,
                           int64_t size, float a, float beta, float coefficient) {
  Lrn l;
  if (ffi::Error e = LrnShape(x.dimensions(), dx->dimensions(), size, &l); e.failure()) {
    return e;
  }
  if (ffi::Error e = LrnShape(gy.dimensions(), dx->dimensions(), size, &l); e.failure()) {
    return e;
  }
  l.a = a;
  l.beta = beta;
  l.coefficient = coefficient;
  const float* in = x.typed_data();
  const float* g = gy.typed_data();
  float* out = dx->typed_data();
  ByChannels(l.c, [&](auto k) {
    ForImages(pool, l.images, [&l, in, g, out](int64_t p, int64_t q) {
      LrnBackward<decltype(k)::value>(l, in, g, out, p, q);
    });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ClrJaxMaxPoolForward, MaxPoolForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S8>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ClrJaxMaxPoolBackward, MaxPoolBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ClrJaxAvgPoolForward, AvgPoolForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ClrJaxAvgPoolBackward, AvgPoolBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ClrJaxLrnForward, LrnForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("size")
                                  .Attr<float>("a")
                                  .Attr<float>("beta"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ClrJaxLrnBackward, LrnBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("size")
                                  .Attr<float>("a")
                                  .Attr<float>("beta")
                                  .Attr<float>("coefficient"));
