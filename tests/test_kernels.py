"""The CPU kernels and compiler options change speed, not numerics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clr_jax import _backend
from clr_jax.harness import kernels, native
from clr_jax.harness.data import load_dataset
from clr_jax.harness.train import TrainConfig, Trainer


def _equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs nested in it."""
    import jax.extend.core

    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _equations(getattr(sub, "jaxpr", sub))


def conv_same(x, kernel):
    """The plain "same" convolution of `kernels.conv_spectral`."""
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((ph, ph), (pw, pw)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_spectral(x, kernel):
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    return kernels.conv_spectral(x, kernel, (1, 1), ((ph, ph), (pw, pw)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))


def use_native(on: bool, names, monkeypatch) -> None:
    """The fast kernels ``names`` as native CPU kernels (skipped where they cannot be
    built), or none of them."""
    if on and not native.available():
        pytest.skip("the native kernels cannot be built here (no C++ compiler)")
    monkeypatch.setattr(kernels, "native_kernel", lambda name: on and name in names)


def calls_native(f, x) -> bool:
    """Whether f's gradient calls a native kernel."""
    return any(e.primitive.name == "ffi_call" for e in _equations(
        jax.make_jaxpr(jax.grad(lambda x: f(x).sum()))(x).jaxpr))


class TestFastKernels:
    """The CPU kernels of the Caffe net change speed, not numerics."""

    @pytest.mark.parametrize("route", ["masked", "separable", "native"])
    @pytest.mark.parametrize("h, w", [(32, 32), (16, 16), (7, 9), (8, 5), (3, 4), (4, 3), (2, 3)])
    def test_max_pool_gradient_is_caffes_first_max(self, h, w, route, monkeypatch):
        # the three routings (AVX-512 CPUs run the native kernels where they build, else
        # the separable one) against a loop
        separable = route == "separable"
        use_native(route == "native", "max_pool", monkeypatch)
        monkeypatch.setattr(_backend, "cpu_has_avx512", lambda: separable)
        assert kernels.separable_max_pool_gradient() == separable
        rng = np.random.default_rng(h * w)
        x0 = jnp.zeros((1, h, w, 1))  # the separable routing keeps the column maxima too
        assert len(kernels._max_pool_fwd(x0)[1]) == (3 if separable else 2)
        assert calls_native(kernels.max_pool_ceil_fast, x0) == (route == "native")
        x = rng.integers(0, 4, (2, h, w, 3)).astype(np.float32)  # many ties
        y = np.asarray(kernels.max_pool_ceil(jnp.asarray(x)))
        g = rng.normal(size=y.shape).astype(np.float32)
        dx = np.asarray(jax.vjp(kernels.max_pool_ceil_fast, jnp.asarray(x))[1](jnp.asarray(g))[0])
        want = np.zeros_like(x)
        for n, a, b, c in np.ndindex(*y.shape):
            cells = [(2 * a + i, 2 * b + j) for i in range(3) for j in range(3)
                     if 2 * a + i < h and 2 * b + j < w]
            values = [x[n, r, s, c] for r, s in cells]
            r, s = cells[int(np.argmax(values))]  # argmax: the first maximum
            want[n, r, s, c] += g[n, a, b, c]
            assert y[n, a, b, c] == max(values)
        np.testing.assert_allclose(dx, want, atol=1e-6)

    @pytest.mark.parametrize("alpha, beta", [(0.3, 0.75), (0.5, 0.6), (5e-5, 0.75)])
    def test_lrn_written_gradient_is_autodiffs(self, alpha, beta, monkeypatch):
        # float64, against JAX's derivative of the reduce_window form; alphas large
        # enough that the window term of the gradient is not negligible
        monkeypatch.setattr(kernels, "lrn_custom_gradient", lambda: True)
        with jax.enable_x64(True):
            x = jax.random.normal(jax.random.key(5), (2, 7, 9, 3), jnp.float64) * 3
            g = jax.random.normal(jax.random.key(6), x.shape, jnp.float64)
            written = jax.vjp(lambda x: kernels.lrn_within_channel(x, alpha, beta, fast=True), x)
            derived = jax.vjp(lambda x: kernels.lrn_within_channel(x, alpha, beta), x)
            window_term = derived[1](g)[0] - g * (derived[0] / x)
            assert float(jnp.abs(window_term).max()) > 1e-2 * float(jnp.abs(g).max()) or \
                alpha < 1e-3
            np.testing.assert_allclose(written[0], derived[0], rtol=1e-13)
            np.testing.assert_allclose(written[1](g)[0], derived[1](g)[0], rtol=1e-12,
                                       atol=1e-14)

    @pytest.mark.parametrize("form", ["derived", "written", "native"])
    def test_lrn_square_roots_equal_the_power(self, form, monkeypatch):
        use_native(form == "native", "lrn", monkeypatch)
        monkeypatch.setattr(kernels, "lrn_custom_gradient", lambda: form == "written")
        x = jax.random.normal(jax.random.key(3), (2, 9, 7, 5)) * 30
        g = jax.random.normal(jax.random.key(4), x.shape)
        fast = jax.vjp(lambda x: kernels.lrn_within_channel(x, fast=True), x)
        assert calls_native(lambda x: kernels.lrn_within_channel(x, fast=True), x) == (
            form == "native")
        plain = jax.vjp(kernels.lrn_within_channel, x)
        np.testing.assert_allclose(fast[0], plain[0], rtol=2e-6)
        np.testing.assert_allclose(fast[1](g)[0], plain[1](g)[0], rtol=1e-5, atol=1e-6)
        # an independent float64 reference of the forward pass
        x64 = np.asarray(x, np.float64)
        padded = np.pad(x64 ** 2, ((0, 0), (1, 1), (1, 1), (0, 0)))
        sums = sum(padded[:, i:i + 9, j:j + 7] for i in range(3) for j in range(3))
        np.testing.assert_allclose(fast[0], x64 * (1 + 5e-5 / 9 * sums) ** -0.75, rtol=2e-6)

    @pytest.mark.parametrize("native_form", [False, True])
    @pytest.mark.parametrize("h, w", [(16, 16), (8, 8), (7, 9), (4, 3)])
    def test_fast_avg_pool_equals_reduce_window(self, h, w, native_form, monkeypatch):
        use_native(native_form, "avg_pool", monkeypatch)
        x = jax.random.normal(jax.random.key(7), (2, h, w, 3))
        fast = jax.vjp(lambda x: kernels.avg_pool_ceil(x, fast=True), x)
        plain = jax.vjp(kernels.avg_pool_ceil, x)
        assert calls_native(lambda x: kernels.avg_pool_ceil(x, fast=True), x) == native_form
        g = jax.random.normal(jax.random.key(8), plain[0].shape)
        np.testing.assert_allclose(fast[0], plain[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(fast[1](g)[0], plain[1](g)[0], rtol=1e-6, atol=1e-6)

    @pytest.mark.parametrize("shape, kernel_shape", [
        ((3, 16, 16, 32), (5, 5, 32, 32)), ((2, 8, 8, 32), (5, 5, 32, 64)),
        ((2, 7, 10, 6), (3, 5, 6, 4)), ((1, 5, 4, 8), (5, 5, 8, 3)),
    ])
    def test_spectral_convolution_equals_lax_conv(self, shape, kernel_shape):
        kx, kk, kg = jax.random.split(jax.random.key(1), 3)
        x = jax.random.normal(kx, shape)
        kernel = jax.random.normal(kk, kernel_shape)
        g = jax.random.normal(kg, shape[:3] + kernel_shape[3:])
        fast = jax.vjp(conv_spectral, x, kernel)
        plain = jax.vjp(conv_same, x, kernel)
        scale = float(jnp.abs(plain[0]).max())
        np.testing.assert_allclose(fast[0], plain[0], atol=2e-6 * scale)
        for a, b in zip(fast[1](g), plain[1](g)):
            np.testing.assert_allclose(a, b, atol=2e-6 * float(jnp.abs(b).max()))

    def test_spectral_convolution_is_exact_on_an_impulse(self):
        """A unit impulse returns the kernel, flipped as a correlation places it."""
        x = jnp.zeros((1, 9, 9, 1)).at[0, 4, 4, 0].set(1.0)
        kernel = jnp.arange(25.0).reshape(5, 5, 1, 1)
        y = conv_spectral(x, kernel)[0, 2:7, 2:7, 0]
        np.testing.assert_allclose(y, kernel[::-1, ::-1, 0, 0], atol=1e-5)

    @pytest.mark.parametrize("name, padding", [("conv_spectral", ((0, 0), (0, 0))),
                                               ("conv_nhwc", ((3, 3), (1, 1)))])
    def test_other_convolutions_go_to_lax(self, name, padding):
        """Strides, dilation, groups or a padding not their own (the spectral form's is
        "same"; conv_nhwc's at most the kernel's size - 1) go to lax unchanged."""
        x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
        kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 4))
        numbers = ("NHWC", "HWIO", "NHWC")
        for args, extra in [(((2, 2), ((1, 1), (1, 1))), {}), (((1, 1), "SAME"), {}),
                            (((1, 1), padding), {}),
                            (((1, 1), ((1, 1), (1, 1))), {"rhs_dilation": (2, 2)}),
                            (((1, 1), ((1, 1), (1, 1))), {"feature_group_count": 2})]:
            kernel_used = kernel[:, :, :2] if "feature_group_count" in extra else kernel
            want = jax.lax.conv_general_dilated(x, kernel_used, *args,
                                                dimension_numbers=numbers, **extra)
            got = getattr(kernels, name)(x, kernel_used, *args, dimension_numbers=numbers,
                                         **extra)
            np.testing.assert_array_equal(got, want)

    @pytest.mark.parametrize("avx512", [False, True])
    @pytest.mark.parametrize("shape, kernel_shape, padding", [
        ((3, 12, 12, 3), (5, 5, 3, 8), ((2, 2), (2, 2))),
        ((2, 7, 9, 4), (3, 3, 4, 5), ((0, 2), (1, 0))),
        ((2, 6, 5, 2), (3, 1, 2, 3), ((1, 1), (0, 0))),
    ])
    def test_conv_nhwc_and_its_gradients_equal_a_numpy_correlation(
            self, shape, kernel_shape, padding, avx512, monkeypatch):
        """Forward, input and kernel gradients against a float64 NumPy correlation and
        its adjoints written out from the definition, on a machine with AVX-512 (where
        the forward pads the input channels to a multiple of 4) and without."""
        monkeypatch.setattr(_backend, "cpu_has_avx512", lambda: avx512)
        assert kernels.forward_channel_multiple() == (4 if avx512 else 1)
        rng = np.random.default_rng(0)
        x, kernel = rng.normal(size=shape), rng.normal(size=kernel_shape)
        kh, kw = kernel_shape[:2]
        xp = np.pad(x, ((0, 0), *padding, (0, 0)))
        ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
        windows = np.stack([np.stack([xp[:, i:i + ho, j:j + wo] for j in range(kw)], 1)
                            for i in range(kh)], 1)  # (n, kh, kw, ho, wo, c)
        want = np.einsum("nijhwc,ijco->nhwo", windows, kernel)
        g = rng.normal(size=want.shape)
        want_dkernel = np.einsum("nijhwc,nhwo->ijco", windows, g)
        dwindows = np.einsum("nhwo,ijco->nijhwc", g, kernel)
        dxp = np.zeros_like(xp)
        for i in range(kh):
            for j in range(kw):
                dxp[:, i:i + ho, j:j + wo] += dwindows[:, i, j]
        want_dx = dxp[:, padding[0][0]:padding[0][0] + shape[1],
                      padding[1][0]:padding[1][0] + shape[2]]
        got, vjp = jax.vjp(lambda a, b: kernels.conv_nhwc(
            a, b, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")),
            jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32))
        dx, dkernel = vjp(jnp.asarray(g, jnp.float32))
        for a, b in [(got, want), (dx, want_dx), (dkernel, want_dkernel)]:
            np.testing.assert_allclose(a, b, atol=1e-5 * float(np.abs(b).max()))

    @pytest.mark.parametrize("avx512", [False, True])
    def test_conv_nhwc_pads_input_channels_only_on_avx512(self, avx512, monkeypatch):
        """The forward convolution's operands, as traced: 3 input channels padded to 4 on
        an AVX-512 CPU, none elsewhere nor on other backends; 8 channels never padded."""
        monkeypatch.setattr(_backend, "cpu_has_avx512", lambda: avx512)

        def lhs_channels(channels):
            x, w = jnp.ones((2, 6, 6, channels)), jnp.ones((3, 3, channels, 5))
            jaxpr = jax.make_jaxpr(lambda a, b: jax.vjp(lambda a, b: kernels.conv_nhwc(
                a, b, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")),
                a, b)[0])(x, w)
            convs = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name
                     == "conv_general_dilated"]
            return [(e.invars[0].aval.shape[-1], e.invars[1].aval.shape[2]) for e in convs]

        assert lhs_channels(3) == ([(4, 4)] if avx512 else [(3, 3)])
        assert lhs_channels(8) == [(8, 8)]
        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
        assert kernels.forward_channel_multiple() == 1

    def test_compiler_options_per_model_on_cpu(self, monkeypatch):
        long = kernels.LOOP_EMITTERS_MIN_STEPS
        fusions = kernels.YNN_REDUCE_ELTWISE
        assert kernels.compiler_options("caffe_cifar10", "fast", long) == fusions
        assert kernels.compiler_options("caffe_cifar10", "auto", long - 1) == fusions
        assert kernels.compiler_options("resnet20", "fast", long) == fusions
        assert kernels.compiler_options("mlp", "fast", long) is None
        assert kernels.compiler_options("caffe_cifar10", "lax", long) is None
        data = load_dataset("sample")
        caffe = Trainer(TrainConfig(num_steps=long, batch_size=48), data,
                        optax.constant_schedule(0.001))
        assert caffe.compiler_options == fusions
        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
        assert kernels.resolve("auto") == "lax"
        assert kernels.compiler_options("caffe_cifar10", "fast", long) is None

    def test_convolutions_leave_ynnpack_and_the_rest_goes_there(self):
        """The options reach XLA: the compiled convolution is XLA's own; the reduction
        is a YNNPACK fusion, and with elementwise fusions also the pooling-like
        elementwise work after it (this jaxlib's names)."""
        x, kernel = jnp.ones((16, 32, 32, 3)), jnp.ones((5, 5, 3, 32))

        def conv_and_sum(x, kernel):
            y = conv_same(x, kernel)
            return y, y.sum((0, 1, 2))

        def pool_relu(x):  # elementwise only: shifted maxima and a ReLU
            return jax.nn.relu(kernels.separable_window3x3(
                x, 2, kernels.ceil_padding(x), jnp.maximum, -jnp.inf))

        def entry(f, options, *args):  # the compiled program's top-level instructions
            text = jax.jit(f, compiler_options=options).lower(*args).compile().as_text()
            return text[text.index("ENTRY"):].split("\n}")[0]

        default = entry(conv_and_sum, None, x, kernel)
        assert "convolution(" not in default and "__ynn_fusion" in default
        for options in (kernels.YNN_REDUCTIONS_ONLY, kernels.YNN_REDUCE_ELTWISE):
            program = entry(conv_and_sum, options, x, kernel)
            assert "convolution(" in program and "__ynn_fusion" in program
        y = jnp.linspace(-1, 1, 16 * 32 * 32 * 32).reshape(16, 32, 32, 32)
        assert "__ynn_fusion" not in entry(pool_relu, kernels.YNN_REDUCTIONS_ONLY, y)
        assert "__ynn_fusion" in entry(pool_relu, kernels.YNN_REDUCE_ELTWISE, y)
        np.testing.assert_array_equal(  # and computes the same maxima
            jax.jit(pool_relu, compiler_options=kernels.YNN_REDUCE_ELTWISE)(y),
            jax.nn.relu(kernels.max_pool_ceil(y)))

    @pytest.mark.parametrize("native_form", [False, True])
    def test_training_curve_matches_the_plain_kernels(self, native_form, monkeypatch):
        use_native(native_form, kernels.NATIVE, monkeypatch)
        data = load_dataset("sample")
        schedule = {"policy": "triangular", "base_lr": 0.001, "max_lr": 0.006, "step_size": 4}

        def losses(kernels):
            config = TrainConfig(num_steps=8, eval_every=8, log_every=8, batch_size=48,
                                 shuffle=False, kernels=kernels, schedule=schedule)
            trainer = Trainer(config, data)
            return np.asarray(trainer.run_steps(trainer.initial_state, 0, 8)[1])

        monkeypatch.setattr(kernels, "LOOP_EMITTERS_MIN_STEPS", 0)  # every option on
        np.testing.assert_allclose(losses("fast"), losses("lax"), rtol=1e-5)

    def test_a_resnet_under_the_resnets_options_matches_xlas_defaults(self, monkeypatch):
        """The ResNets' options (`YNN_REDUCE_ELTWISE`: BatchNorm, ReLU, the residual adds
        and the update in YNNPACK) against XLA's defaults, on ResNet-8 given ResNet-20's
        options (the same blocks, cheaper to compile): the same 4-step training curve up
        to rounding."""
        monkeypatch.setitem(kernels._CPU_OPTIONS, "resnet8", kernels._CPU_OPTIONS["resnet20"])
        data = load_dataset("sample")

        def losses(kernel_choice):
            config = TrainConfig(model="resnet8", optimizer="momentum", num_steps=4,
                                 eval_every=4, log_every=4, batch_size=16, shuffle=False,
                                 kernels=kernel_choice, preprocess="standard",
                                 schedule={"policy": "fixed", "base_lr": 0.05})
            trainer = Trainer(config, data)
            assert trainer.compiler_options == (kernels.YNN_REDUCE_ELTWISE
                                                if kernel_choice == "fast" else None)
            return np.asarray(trainer.run_steps(trainer.initial_state, 0, 4)[1])

        np.testing.assert_allclose(losses("fast"), losses("lax"), rtol=1e-5)
