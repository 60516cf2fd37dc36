"""Training throughput of the paper's network: clr_jax's harness against PyTorch, side by side.

    python benchmarks/throughput_cpu.py [--steps 48] [--repeats 5]

One process, alternating the variants of each pair `--repeats` times, so machine noise
hits both; every figure is the median ratio of the pair. The network is the paper's
Caffe "cifar10_full" (conv 5x5x32 - max pool - LRN - conv 5x5x32 - avg pool - LRN -
conv 5x5x64 - avg pool - ip 10), batch 100, float32, momentum SGD with weight decay.

a. images/s of the harness (`Trainer.run_steps`, triangular2 schedule, data on the
   device, the bundled CIFAR-10 sample) against a plain PyTorch CPU loop of the same
   network with `torch.optim.lr_scheduler.CyclicLR(mode="triangular2")` (same threads);
b. the harness with triangular2 against the harness with a constant rate;
d. the harness on the real data set against the same steps fed prepared batches that
   are already on the device (the input pipeline's cost);
e. FLOPs per training image (XLA's cost analysis) and the fraction of the machine's
   peak reached, the peak taken as the best float32 matmul rate measured here.

The letters are those of the performance issue; its item c, the range test's overhead
over plain steps, has its own script (range_test_overhead.py).

Writes benchmarks/results/throughput_<backend>.json and its section of RESULTS.md.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import clr_jax
from _report import machine, update_section, write_result
from clr_jax.harness.data import load_dataset
from clr_jax.harness.train import TrainConfig, Trainer

BATCH = 100


def torch_loop(steps_per_call):
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 32, 5, padding=2), nn.Conv2d(32, 32, 5, padding=2)
            self.c3, self.ip = nn.Conv2d(32, 64, 5, padding=2), nn.Linear(1024, 10)

        @staticmethod
        def lrn(x):  # Caffe WITHIN_CHANNEL, local size 3
            return x * (1 + 5e-5 * F.avg_pool2d(x * x, 3, 1, 1, count_include_pad=True)) ** -0.75

        def forward(self, x):
            x = self.lrn(F.relu(F.max_pool2d(self.c1(x), 3, 2, ceil_mode=True)))
            x = self.lrn(F.avg_pool2d(F.relu(self.c2(x)), 3, 2, ceil_mode=True))
            x = F.avg_pool2d(F.relu(self.c3(x)), 3, 2, ceil_mode=True)
            return self.ip(x.flatten(1))

    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9, weight_decay=0.004)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, 0.001, 0.006, 2000, mode="triangular2",
                                              cycle_momentum=False)
    data = load_dataset("sample")
    images = torch.from_numpy(data.train_images[: 10 * BATCH]).permute(0, 3, 1, 2).float()
    images = images - images.mean(0, keepdim=True)
    labels = torch.from_numpy(data.train_labels[: 10 * BATCH]).long()

    def run():
        for i in range(steps_per_call):
            b = slice((i % 10) * BATCH, (i % 10 + 1) * BATCH)
            opt.zero_grad()
            loss = F.cross_entropy(net(images[b]), labels[b])
            loss.backward()
            opt.step()
            sched.step()
        return loss.item()

    return run, torch.get_num_threads()


def harness(schedule, steps):
    data = load_dataset("sample")
    # A paper-length run (its fixed-rate run has 70,000 steps); the length decides
    # `kernels.compiler_options`. Only `steps` at a time are run here.
    config = TrainConfig(num_steps=70_000, eval_every=steps, log_every=steps,
                         shuffle=False)
    trainer = Trainer(config, data, schedule)
    state = {"state": trainer.initial_state, "step": 0}

    def run():
        state["state"], losses = trainer.run_steps(state["state"], state["step"], steps)
        state["step"] += steps
        return float(losses[-1])

    return run, trainer


def synthetic(trainer, steps):
    """The harness's compiled steps fed device batches that are already prepared: one
    distinct batch per step of a group (the same batch in every step would let XLA
    share the work that depends only on the images across the unrolled steps), passed
    in as arguments (not folded in as constants)."""
    g = trainer.group
    data = trainer.data
    images = data.prepare(data.train_images[:g * BATCH]).reshape(
        g, BATCH, *data.train_images.shape[1:])
    labels = data.train_labels[:g * BATCH].reshape(g, BATCH)

    def group(state, images, labels):
        def body(state, batch):
            (loss, rest), grads = jax.value_and_grad(trainer.loss, has_aux=True)(
                state["params"], state["rest"], *batch)
            updates, opt_state = trainer.tx.update(grads, state["opt_state"], state["params"])
            return {"params": optax.apply_updates(state["params"], updates), "rest": rest,
                    "opt_state": opt_state}, loss
        return jax.lax.scan(body, state, (images, labels), unroll=True)

    group = jax.jit(group, compiler_options=trainer.compiler_options)
    state = {"state": trainer.initial_state}

    def run():
        for _ in range(0, steps, g):
            state["state"], losses = group(state["state"], images, labels)
        return float(losses[-1])

    return run, lambda state: group.lower(state, images, labels)


def pair(a, b, repeats):
    a(), b()  # compile and warm up
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    ratios = [x / y for x, y in zip(times_a, times_b)]
    return {"seconds_a": times_a, "seconds_b": times_b, "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def cost(lowered):
    analysis = lowered.compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def matmul_peak():
    x = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - started)
    return 2 * 2048**3 / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    steps = args.steps
    clr = clr_jax.triangular2(0.001, 0.006, 2000)
    jax_clr, trainer = harness(clr, steps)
    jax_fixed, fixed_trainer = harness(optax.constant_schedule(0.001), steps)
    torch_run, threads = torch_loop(steps)
    jax_synth, lower = synthetic(trainer, steps)

    a = pair(torch_run, jax_clr, args.repeats)  # torch time / jax time = jax speed-up
    b = pair(jax_clr, jax_fixed, args.repeats)
    d = pair(jax_clr, jax_synth, args.repeats)
    flops = cost(lower(trainer.initial_state)) / (trainer.group * BATCH)
    # b's arithmetic: one group of harness steps with each schedule, as XLA counts it
    group_flops = [cost(t._run_group.lower(t.initial_state, jnp.int32(0), t.group))
                   for t in (trainer, fixed_trainer)]
    peak = matmul_peak()
    jax_images = BATCH * steps / statistics.median(a["seconds_b"])
    torch_images = BATCH * steps / statistics.median(a["seconds_a"])
    result = {
        "benchmark": "throughput", "steps_per_timing": steps, "repeats": args.repeats,
        "machine": machine(), "torch_threads": threads, "clr_jax": clr_jax.__version__,
        "a_torch_over_harness": a, "b_clr_over_constant": b, "d_real_over_synthetic": d,
        "b_flops_clr_over_constant": group_flops[0] / group_flops[1],
        "harness_images_per_second": jax_images, "torch_images_per_second": torch_images,
        "flops_per_image": flops, "matmul_peak_flops": peak,
        "fraction_of_peak": flops * jax_images / peak,
    }
    backend = jax.default_backend()
    path = write_result("throughput", result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
    m = result["machine"]
    md = [
        f"## Training throughput of the paper's network ({backend})", "",
        f"`python benchmarks/throughput_cpu.py --steps {steps} --repeats {args.repeats}` "
        f"→ `results/{path.name}`", "",
        f"{m['cpu']} ({m['cores']} cores), {m['devices']} x {m['device_kind']}, jax "
        f"{m['jax']}, torch {threads} threads. Caffe cifar10_full, batch 100, float32; "
        f"medians of {args.repeats} alternated pairs of {steps} steps.", "",
        "| figure | value | target |", "|---|---|---|",
        f"| a. harness (triangular2) speed / PyTorch loop with CyclicLR | "
        f"{a['ratio_median']:.2f}x ({jax_images:.0f} vs {torch_images:.0f} images/s; "
        f"range {a['ratio_min']:.2f}-{a['ratio_max']:.2f}) | >= 1.0x |",
        f"| b. harness time with triangular2 / with a constant rate | "
        f"{b['ratio_median']:.3f} (range {b['ratio_min']:.3f}-{b['ratio_max']:.3f}) | "
        "<= 1.01 |",
        f"| b. the same, XLA's FLOP count of a group of steps | "
        f"{result['b_flops_clr_over_constant']:.6f} | |",
        f"| d. harness time on the data set / on prepared device batches | "
        f"{d['ratio_median']:.3f} (range {d['ratio_min']:.3f}-{d['ratio_max']:.3f}) | "
        "<= 1.05 |",
        f"| e. FLOPs per training image (XLA cost analysis) | {flops / 1e6:.1f} MFLOP | |",
        f"| e. fraction of peak (peak = best 2048² float32 matmul here, "
        f"{peak / 1e9:.0f} GFLOP/s) | {result['fraction_of_peak']:.1%} | |",
    ]
    update_section(f"throughput_{backend}", "\n".join(md))


if __name__ == "__main__":
    main()
