"""The docs: their Python code blocks run (in order, one namespace per page), and the README
quotes the committed results it names."""

import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@pytest.mark.parametrize("page", [p for p in PAGES if BLOCK.search(p.read_text())],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run(page):
    namespace = {"__name__": "__docs__"}
    for index, block in enumerate(BLOCK.findall(page.read_text())):
        code = compile(block, f"{page.name}[block {index}]", "exec")
        exec(code, namespace)  # noqa: S102 - the docs' own examples


def _readme_commands():
    """Every `clr-jax ...` command of the README's shell blocks, continuation lines joined
    and comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("clr-jax "):
                commands.append(line)
            elif "&& clr-jax " in line:
                commands.append("clr-jax " + line.split("&& clr-jax ", 1)[1])
    return commands


def _shortened(argv):
    """The command with long runs cut short: steps (the range test's too), evaluation and
    checkpoint intervals."""
    out, limits = [], {"--steps": 60 if argv[0] == "range-test" else 10,
                       "--eval-every": 5, "--checkpoint-every": 5}
    for flag, value in zip([None, *argv], argv):
        out.append(str(min(int(value), limits[flag])) if flag in limits else value)
    if "--bounds" in argv and "--range-test-steps" not in argv:
        out += ["--range-test-steps", "60"]  # the range test before training, too
    return out + ([] if argv[0] == "schedule" else ["--no-progress"])


@pytest.mark.parametrize("command", _readme_commands())
def test_readme_commands_run_as_written(command, tmp_path):
    """A newcomer's copy of the README's commands runs on a fresh clone: those on the
    bundled sample run here (shortened); those on other data are skipped."""
    import shlex
    import subprocess
    import sys

    argv = shlex.split(command)[1:]
    dataset = argv[argv.index("--dataset") + 1] if "--dataset" in argv else "sample"
    if dataset != "sample":
        pytest.skip(f"needs data a fresh clone does not have: {dataset}")
    if argv[0] == "demo":
        pytest.skip("the demo takes 2 minutes; tests/test_jobs.py runs its job")
    done = subprocess.run([sys.executable, "-m", "clr_jax", *_shortened(argv)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_readme_quotes_the_committed_demo_report():
    """The README's account of `clr-jax demo` is the committed report's, word for word, and
    its account of how much the demo varies is the committed stability study's."""
    import json

    summary = json.loads((ROOT / "experiments/results/demo/summary.json").read_text())
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert summary["headline"] in readme
    assert f"bounds: {summary['bounds_line']}" in readme
    assert f"took {summary['seconds']:.0f} s" in readme
    assert f"{summary['steps']} steps" in readme
    edge = next(b for b in summary["bounds"] if b["method"] == "edge")
    assert f"turns up, {edge['evidence']['lr_loss_turns_up']:.3g};" in readme

    stability = json.loads((ROOT / "experiments/results/demo_stability.json").read_text())
    runs = {r["name"]: r for r in stability["runs"]}
    fresh = [r for name, r in runs.items() if name.startswith("fresh")]
    assert stability["checks"]["fresh_identical"] and stability["checks"]["same_verdict"]
    low = min(r["seconds_own_clock"] for r in fresh)
    high = max(r["seconds_own_clock"] for r in fresh)
    assert f"in {low:.0f} to {high:.0f} s" in readme
    assert (f"read max_lr {runs['range-test seeds 3-5']['max_lr']:.3g} and "
            f"{runs['range-test seeds 6-8']['max_lr']:.3g}") in readme
    assert f"read {runs['perturbed 1e-6']['max_lr']:.3g}:" in readme
    assert f"within a factor {stability['checks']['max_lr_ratio']:.2f} in all six" in readme
    clr = [100 * r["stats"]["clr"]["mean"] for r in runs.values()]
    fixed = [100 * r["stats"]["fixed"]["mean"] for r in runs.values()]
    assert f"(CLR {min(clr):.1f}-{max(clr):.1f}%, fixed {min(fixed):.1f}-{max(fixed):.1f}%)" \
        in readme

    other = json.loads((ROOT / "experiments/results/demo_stability_avx512.json").read_text())
    assert other["isa"] == "AVX-512" and other["checks"]["fresh_identical"]
    runs = {r["name"]: r for r in other["runs"]}
    fresh = [r for name, r in runs.items() if name.startswith("fresh")]
    low = min(r["seconds_own_clock"] for r in fresh)
    high = max(r["seconds_own_clock"] for r in fresh)
    assert (f"read max_lr {runs['fresh 1']['max_lr']:.3g} fresh (identical in all three, "
            f"{low:.0f} to {high:.0f} s), {runs['range-test seeds 3-5']['max_lr']:.3g} and "
            f"{runs['range-test seeds 6-8']['max_lr']:.3g} with the other seeds and "
            f"{runs['perturbed 1e-6']['max_lr']:.3g} perturbed") in readme
    clr = [100 * r["stats"]["clr"]["mean"] for r in runs.values()]
    fixed = [100 * r["stats"]["fixed"]["mean"] for r in runs.values()]
    assert f"(CLR {min(clr):.1f}-{max(clr):.1f}%, fixed {min(fixed):.1f}-{max(fixed):.1f}%)" \
        in readme
    across = other["across_instruction_sets"]
    assert across["same_verdict"] and other["checks"]["same_verdict"]
    assert (f"within a factor {across['max_lr_ratio']:.2f} and one verdict") in readme


def test_readmes_quote_the_committed_table1_at_paper_scale():
    """Every finished paper-scale Table 1 run's final accuracy, as the result file has it, is
    quoted in the README's "Results against the paper" and in experiments/README.md."""
    import json

    result = json.loads((ROOT / "experiments/results/table1_cifar10_1.json").read_text())
    readme = " ".join((ROOT / "README.md").read_text().split())
    experiments = " ".join((ROOT / "experiments/README.md").read_text().split())
    for name, run in result["policies"].items():
        final = f"{100 * run['final_test_accuracy']:.1f}"
        assert f"{final}% after {run['steps']:,} it." in readme, name
        paper = "-" if run["paper_accuracy"] is None else run["paper_accuracy"]
        assert f"**{final}** ({paper})" in experiments, name
        for seed_run in run.get("seeds", {}).get("runs", []):
            assert f"seed 1: {100 * seed_run['final_test_accuracy']:.1f}%" in readme, name
    fixed, tri = result["policies"]["fixed"], result["policies"]["triangular2"]
    assert f"| Fixed at 25,000 iterations | {100 * fixed['accuracy_at_equal_budget']:.1f}%" in readme
    assert f"| {tri['fixed_steps_to_this_final']:,} (both seeds) |" in readme


def test_readmes_quote_the_committed_schedules_at_25k():
    """The schedules study's table is the result file's, and every number the READMEs
    quote from it is the result file's."""
    import json

    result = json.loads((ROOT / "experiments/results/schedules_25k_1.json").read_text())
    table = (ROOT / "experiments/results/schedules_25k_1.md").read_text().split("\n\n", 1)[1]
    experiments_text = (ROOT / "experiments/README.md").read_text()
    assert table.strip() in experiments_text
    experiments = " ".join(experiments_text.split())
    readme = " ".join((ROOT / "README.md").read_text().split())
    bounds = result["range_test_bounds"]
    assert bounds["trusted"]
    assert (f"read base {bounds['base_lr']:.2g}, max_lr {bounds['max_lr']:.3g} "
            f"[{bounds['max_interval'][0]:.3g}, {bounds['max_interval'][1]:.3g}], trusted"
            ) in experiments
    runs = result["runs"]
    pct = lambda value: f"{100 * value:.1f}%"  # noqa: E731
    if "one_cycle" in runs:
        one, tri, tri1 = runs["one_cycle"], runs["triangular2"], runs["triangular2-seed1"]
        assert f"1cycle (peak {bounds['max_lr']:.3g}, seed 0) ends at {pct(one['at_25k'])}" \
            in experiments
        assert (f"behind: {pct(one['at_10k'])} at 10,000 iterations against "
                f"{pct(tri['at_10k'])} and {pct(tri1['at_10k'])}") in experiments
        assert (f"1cycle ends at {pct(one['at_25k'])}, level with triangular2's "
                f"{pct(tri['at_25k'])} and {pct(tri1['at_25k'])} (two seeds)") in readme
        assert f"({pct(one['at_10k'])} against {pct(tri['at_10k'])}" in readme
    if "one_cycle-seed1" in runs:
        again = runs["one_cycle-seed1"]
        assert (f"Its second seed (other initial weights and data order) ends at "
                f"{pct(again['at_25k'])}, {pct(again['at_10k'])} at 10,000") in experiments
        assert f"a second seed: {pct(again['at_25k'])} and {pct(again['at_10k'])});" in readme
        assert again["at_10k"] < min(runs[name]["at_10k"]
                                     for name in ("triangular2", "triangular2-seed1"))
    if "sgdr" in runs:
        sgdr = runs["sgdr"]
        assert (f"warm restarts at 3,571 and 10,714) ends at {pct(sgdr['at_25k'])}"
                in experiments)
        assert (f"it stands at {pct(sgdr['at_10k'])}, the best of the "
                f"{'two three four five six seven eight nine ten eleven twelve'.split()[len(runs) - 2]} there"
                ) in experiments
        assert max(runs, key=lambda name: runs[name]["at_10k"]) == "sgdr"
        assert (f"SGDR with warm restarts ends at {pct(sgdr['at_25k'])}, also level, and leads "
                f"at 10,000 ({pct(sgdr['at_10k'])}") in readme
    if "sgdr-seed1" in runs:
        again = runs["sgdr-seed1"]
        assert (f"A second seed (the same schedule; other initial weights and data order) "
                f"ends at {pct(again['at_25k'])}, {pct(again['at_10k'])} at 10,000") in experiments
        assert (f"a second seed: {pct(again['at_25k'])} and {pct(again['at_10k'])})"
                ) in readme
        if "one_cycle-seed1" in runs and "warmup_cosine-seed1" in runs:
            gaps = [f"{100 * abs(runs[name]['at_25k'] - runs[name + '-seed1']['at_25k']):.1f}"
                    for name in ("sgdr", "one_cycle", "warmup_cosine")]
            assert (f"two of SGDR, 1cycle and warmup-cosine ({gaps[0]}, {gaps[1]} and "
                    f"{gaps[2]} points apart at 25,000)") in experiments
    if "warmup_cosine" in runs:
        warm, one, tri = runs["warmup_cosine"], runs["one_cycle"], runs["triangular2"]
        assert (f"then cosine to 0; resumed once from its checkpoint at 10,000) ends at "
                f"{pct(warm['at_25k'])}") in experiments
        assert f"it stands at {pct(warm['at_10k'])}, between 1cycle and triangular2" \
            in experiments
        assert one["at_10k"] < warm["at_10k"] < tri["at_10k"]
        assert (f"warmup-cosine ends at {pct(warm['at_25k'])} too "
                f"({pct(warm['at_10k'])} at 10,000") in readme
    if "warmup_cosine-seed1" in runs:
        again = runs["warmup_cosine-seed1"]
        gap = 100 * (runs["warmup_cosine"]["at_25k"] - again["at_25k"])
        assert (f"Its second seed ends at {pct(again['at_25k'])}, {pct(again['at_10k'])} at "
                f"10,000: {gap:.1f} points lower, the widest gap between two seeds of one "
                "schedule here") in experiments
        assert all(abs(runs[name]["at_25k"] - runs[f"{name}-seed1"]["at_25k"]) < gap / 100
                   for name in ("sgdr", "one_cycle", "triangular2"))
        assert f"a second seed: {pct(again['at_25k'])} and {pct(again['at_10k'])})" in readme
        ends = [runs[name]["at_25k"] for name in ("one_cycle", "sgdr", "warmup_cosine")]
        assert round(100 * (max(ends) - min(ends)), 1) <= 0.1
        assert (f"{100 * (min(ends) - tri['at_25k']):.1f}-"
                f"{100 * (max(ends) - runs['triangular2-seed1']['at_25k']):.1f} points above "
                "triangular2") in experiments
        decaying = [run["at_25k"] for name, run in runs.items()
                    if name.split("-")[0] in ("one_cycle", "sgdr", "warmup_cosine")]
        assert (f"all {'two three four five six seven'.split()[len(decaying) - 2]} of their "
                f"runs span {100 * (max(decaying) - min(decaying)):.1f} points "
                f"({pct(min(decaying))[:-1]}-{pct(max(decaying))}), against "
                f"{100 * (tri['at_25k'] - runs['triangular2-seed1']['at_25k']):.1f} between "
                "triangular2's two seeds") in experiments
    # the README's results table and the experiments page's lead: every schedule's ending
    labels = {"one_cycle": "1cycle", "sgdr": "SGDR", "warmup_cosine": "warmup-cosine",
              "schedule_free": "schedule-free SGD"}
    endings = []
    for name, label in labels.items():
        if name in runs:
            ending = f"{label} {pct(runs[name]['at_25k'])}"
            if f"{name}-seed1" in runs:
                ending += f" (seed 1: {pct(runs[name + '-seed1']['at_25k'])})"
            if name == "schedule_free" and "schedule_free_matched" in runs:
                ending += (f" (at 10x the rate: "
                           f"{pct(runs['schedule_free_matched']['at_25k'])})")
            endings.append(ending)
    endings = ", ".join(endings)
    assert (f"| Schedules users pick today at 25,000 it., peak from the range test "
            f"(`find_bounds`: {bounds['max_lr']:.3g}) | {endings} |") in readme
    tri, tri1 = runs["triangular2"], runs["triangular2-seed1"]
    assert (f"the peak the range test read: {endings}, against triangular2's "
            f"{pct(tri['at_25k'])} and {pct(tri1['at_25k'])}") in experiments
    if "schedule_free" in runs:
        free = runs["schedule_free"]
        assert (f"then constant; evaluated at its averaged point) ends at {pct(free['at_25k'])}, "
                f"{pct(free['at_10k'])} at 10,000") in experiments
        assert (f"Schedule-free SGD given the same rate ends at {pct(free['at_25k'])} "
                f"({pct(free['at_10k'])} at 10,000)") in readme
        assert min(runs, key=lambda name: runs[name]["at_25k"]) == "schedule_free"
    if "schedule_free_matched" in runs:
        matched, tri, tri1 = (runs[name] for name in (
            "schedule_free_matched", "triangular2", "triangular2-seed1"))
        ends = [runs[name]["at_25k"] for name in ("one_cycle", "sgdr", "warmup_cosine")]
        assert (f"it ends at {pct(matched['at_25k'])}, level with triangular2 "
                f"({pct(tri['at_25k'])} and {pct(tri1['at_25k'])}) and "
                f"{100 * (min(ends) - matched['at_25k']):.1f}-"
                f"{100 * (max(ends) - matched['at_25k']):.1f} points below the decaying "
                "schedules' seed-0 runs") in experiments
        assert min(tri["at_25k"], tri1["at_25k"]) <= matched["at_25k"] + 0.0005
        assert f"it is second only to SGDR ({pct(matched['at_10k'])})" in experiments
        ahead = {name for name, run in runs.items() if run["at_10k"] > matched["at_10k"]}
        assert ahead == {"sgdr", "sgdr-seed1"}
        assert (f"at ten times that rate it ends at {pct(matched['at_25k'])} "
                f"({pct(matched['at_10k'])} at 10,000), level with triangular2") in readme


def test_readmes_quote_the_committed_table3_at_paper_scale():
    """Table 3's finished paper-scale rows, as the result file has them, in both READMEs:
    final and 25k accuracies, the cycle ends, and the numbers the README's paragraph
    derives from the curves."""
    import json

    result = json.loads((ROOT / "experiments/results/table3_optimizers_1.json").read_text())
    readme = " ".join((ROOT / "README.md").read_text().split())
    experiments = " ".join((ROOT / "experiments/README.md").read_text().split())
    table = (ROOT / "experiments/results/table3_optimizers_1.md").read_text()
    assert table.split("\n\n")[1].strip() in (ROOT / "experiments/README.md").read_text()
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    adam = result["rows"]["adam"]
    fixed, tri = adam["fixed"][0], adam["triangular"][0]
    assert f"| {pct(fixed['final_test_accuracy'])}% after 70,000 it. | 81.4% after 70,000" \
        in readme
    end25, end = tri["cycle_end_25k"], tri["cycle_end_last"]
    assert (f"| {pct(tri['at_25k'])}% at 25,000 it., {pct(tri['final_test_accuracy'])}% after "
            f"70,000 it. ({pct(end25['test_accuracy'])}% / {pct(end['test_accuracy'])}% at the "
            f"cycle ends at {end25['step']:,} / {end['step']:,}) |") in readme
    curve = dict(zip(tri["eval_steps"], tri["test_accuracy"]))
    ends = [curve[step] for step in range(12_000, end["step"] + 1, 4_000)]
    fixed_curve = dict(zip(fixed["eval_steps"], fixed["test_accuracy"]))
    assert (f"triangular holds {pct(min(ends))}-{pct(max(ends))}% from 12,000 iterations on, "
            f"level with the fixed rate before its drops ({pct(fixed_curve[24_000])}% at "
            f"24,000), and the drops take fixed to {pct(fixed['final_test_accuracy'])}%, "
            f"{100 * (fixed['final_test_accuracy'] - end['test_accuracy']):.1f} points") in readme
    assert (f"{pct(fixed['final_test_accuracy'])}% after 70,000 iterations; triangular "
            f"{pct(tri['at_25k'])}% at 25,000") in experiments
    nesterov = result["rows"]["nesterov"]["fixed"][0]
    n_curve = dict(zip(nesterov["eval_steps"], nesterov["test_accuracy"]))
    assert (f"| Table 3 Nesterov fixed 0.001 (drops at 60k, 65k), final | "
            f"{pct(nesterov['final_test_accuracy'])}% after 70,000 it. | 82.1% after 70,000 |"
            ) in readme
    gap = 100 * (nesterov["final_test_accuracy"] - fixed["final_test_accuracy"])
    assert (f"fixed rate ends at {pct(nesterov['final_test_accuracy'])}% (the paper: 82.1%), "
            f"{gap:.1f} points above Adam's") in readme
    assert f"at 25,000 iterations, before its drops, it stands at {pct(n_curve[25_000])}%" \
        in readme
    assert (f"{pct(nesterov['final_test_accuracy'])}% after 70,000 iterations (the paper: "
            f"82.1%), {pct(n_curve[25_000])}% at 25,000 and {pct(n_curve[60_000])}% at 60,000"
            ) in experiments
    assert f"{gap:.1f} points above Adam's fixed rate" in experiments
    n_tri = result["rows"]["nesterov"]["triangular"][0]
    n_end = n_tri["cycle_end_25k"]
    reached = next(step for step in sorted(n_curve) if n_curve[step] >= n_end["test_accuracy"])
    lead = 100 * (n_end["test_accuracy"] - n_curve[n_end["step"]])
    assert (f"| Table 3 Nesterov triangular 0.001-0.006 | {pct(n_tri['at_25k'])}% at 25,000 "
            f"it. ({pct(n_end['test_accuracy'])}% at the cycle end at {n_end['step']:,}) | "
            "81.3% at 25,000 |") in readme
    if "adagrad" in result["rows"]:
        ada = result["rows"]["adagrad"]["triangular"][0]
        a_end = ada["cycle_end_25k"]
        assert (f"| Table 3 AdaGrad triangular 0.003-0.035 | {pct(ada['at_25k'])}% at 25,000 "
                f"it. ({pct(a_end['test_accuracy'])}% at the cycle end at {a_end['step']:,}) | "
                "76.0% at 25,000 |") in readme
        assert (f"triangular 0.003-0.035 reads {pct(ada['at_25k'])}% at 25,000 iterations, "
                f"the paper's 76.0%, and {pct(a_end['test_accuracy'])}% at its cycle end at "
                f"{a_end['step']:,}") in readme
        a_curve = dict(zip(ada["eval_steps"], ada["test_accuracy"]))
        cycle_ends = [a_curve[step] for step in range(4_000, a_end["step"] + 1, 4_000)]
        assert cycle_ends == sorted(cycle_ends)  # "climbed at every cycle end"
        assert (f"{pct(ada['at_25k'])}% at 25,000 iterations, part-way up a cycle (the paper: "
                f"76.0%), and {pct(a_end['test_accuracy'])}% at the end of its cycle at "
                f"{a_end['step']:,}, having climbed at every cycle end ({pct(cycle_ends[0])}% at "
                f"4,000, {pct(a_curve[12_000])}% at 12,000)") in experiments
        assert a_end["test_accuracy"] > max(tri["cycle_end_25k"]["test_accuracy"],
                                            n_end["test_accuracy"])
    if "adadelta" in result["rows"]:
        delta = result["rows"]["adadelta"]["triangular"][0]
        d_end = delta["cycle_end_25k"]
        above = f"{100 * delta['at_25k'] - 67.3:.1f}"
        assert (f"| Table 3 AdaDelta triangular 0.01-0.1 | {pct(delta['at_25k'])}% at 25,000 "
                f"it. ({pct(d_end['test_accuracy'])}% at the cycle end at {d_end['step']:,}) | "
                "67.3% at 25,000 |") in readme
        for text in (readme, experiments):
            assert (f"{pct(delta['at_25k'])}% at 25,000 iterations, {above} points above the "
                    f"paper's 67.3%, and {pct(d_end['test_accuracy'])}%") in text
    for text in (readme, experiments):
        assert f"{pct(n_end['test_accuracy'])}%, {lead:.1f} points above the fixed rate" in text
        assert f"({pct(n_curve[n_end['step']])}%)" in text
        assert f"{reached:,} iterations, after its first drop" in text


def test_readmes_quote_the_committed_jpeg_dose():
    """The JPEG dose-response numbers in both READMEs are the committed result files'."""
    import json

    results = ROOT / "experiments/results"
    dose = json.loads((results / "jpeg_dose_triangular2_1.json").read_text())
    copy = json.loads((results / "jpeg_copy.json").read_text())
    readme = " ".join((ROOT / "README.md").read_text().split())
    experiments = " ".join((ROOT / "experiments/README.md").read_text().split())
    changes = []
    for row in dose["runs"].values():
        change = f"{100 * row['change_from_copy_seed0']:.2f}"
        if row["mse_to_copy"]:
            assert (f"| re-encoded at quality {row['quality']} | {row['mse_to_copy']:.1f} "
                    f"({row['psnr_to_copy_db']:.1f} dB) | "
                    f"{100 * row['final_test_accuracy']:.2f} | {change} |") in experiments
            changes.append(change.lstrip("-"))
    assert f"costs triangular2 {changes[0]} and {changes[1]} points" in readme
    cost = f"{100 * dose['copy_compression_cost_estimate']:.1f}"
    assert f"about {cost} point" in readme and f"about **{cost} point**" in experiments
    assert f"seed spread {100 * dose['copy_seed_spread']:.2f}" in readme
    assert (f"MSE of {copy['first_encode_mse_estimate']:.1f} "
            f"({copy['first_encode_psnr_estimate_db']:.1f} dB") in experiments
    assert f"({100 * dose['change_per_unit_mse']:.3f} points per unit of MSE" in experiments
    fixed = json.loads((results / "jpeg_dose_fixed_1.json").read_text())
    dosed = fixed["runs"]["re-encoded at quality 50, seed 0"]
    change = f"{100 * dosed['change_from_copy_seed0']:.2f}"
    assert (f"ends at {100 * dosed['final_test_accuracy']:.2f}% against "
            + " / ".join(f"{100 * r['final_test_accuracy']:.2f}" for r in fixed["runs"].values()
                         if r["mse_to_copy"] == 0)) in experiments
    assert f"{change} points (seed spread {100 * fixed['copy_seed_spread']:.2f})" in experiments
    assert f"({change.lstrip('-')} points;" in readme


def test_readme_quotes_the_committed_figure3_and_scaled_down_table1():
    """The README's Figure 3 bounds (8 epochs) and its x0.02 Table 1 accuracies are the
    committed result files'."""
    import json

    readme = " ".join((ROOT / "README.md").read_text().split())
    figure3 = json.loads((ROOT / "experiments/results/figure3_range_test_paper.json")
                         .read_text())["bounds"]["paper"]
    assert f"base {figure3['base_lr']:.4f}, max {figure3['max_lr']:.4f}" in readme
    small = json.loads((ROOT / "experiments/results/table1_cifar10_0.02.json").read_text())
    final = {name: f"{100 * run['final_test_accuracy']:.1f}%"
             for name, run in small["policies"].items()}
    assert (f"fixed {final['fixed']}, triangular2 {final['triangular2']}, decay "
            f"{final['decay']}, exp {final['exp']}, exp_range {final['exp_range_amplitude']}"
            f" / {final['exp_range_both']}") in readme


def test_readme_quotes_the_committed_benchmarks():
    """The README's speed claims are the committed benchmark results'."""
    import json

    readme = " ".join((ROOT / "README.md").read_text().split())
    results = ROOT / "benchmarks/results"
    overhead = json.loads((results / "range_test_overhead.json").read_text())
    assert (f"median {overhead['ratio_median']:.2f}x of plain training's wall time, range "
            f"{overhead['ratio_min']:.2f}-{overhead['ratio_max']:.2f} over "
            f"{overhead['repeats']} pairs") in readme
    finder = json.loads((results / "range_test_vs_lr_finder_cpu.json").read_text())
    second = finder["ratios_to_torch_lr_finder"]["clr_jax_second_call"]["median"]
    assert f"a second test runs at {second:.2f}x torch-lr-finder's wall time" in readme
    job = json.loads((results / "vs_pytorch_cpu.json").read_text())["lengths"]["1000"]
    first, second = (job["summary"][side] for side in ("clr_jax_first_run",
                                                       "clr_jax_second_run"))
    assert (f"runs at {first['speed_vs_pytorch_whole_job']:.2f}x PyTorch's speed from an "
            f"empty compilation cache and {second['speed_vs_pytorch_whole_job']:.2f}x with a "
            f"warm one, at {first['speed_vs_pytorch_steady']:.2f}x PyTorch's images/s in "
            "steady state") in readme
    avx512 = json.loads((results / "vs_pytorch_avx512_cpu.json").read_text())
    assert "avx512f" in avx512["machine"]["vector_flags"]
    first, second = (avx512["lengths"]["1000"]["summary"][side]
                     for side in ("clr_jax_first_run", "clr_jax_second_run"))
    assert avx512["native_kernels"] == ["max_pool", "avg_pool", "lrn"]
    assert (f"{first['speed_vs_pytorch_whole_job']:.2f}x PyTorch's speed from an empty "
            f"cache, {second['speed_vs_pytorch_whole_job']:.2f}x with a warm one, "
            f"{first['speed_vs_pytorch_steady']:.2f}x in steady state (medians of "
            f"{avx512['rounds']} alternated rounds") in readme
    low, high = avx512["lengths"]["1000"]["summary"]["pytorch"]["wall_seconds_range"]
    assert f"PyTorch's rounds took {low:.1f}-{high:.1f} s" in readme


def test_guides_quote_the_committed_experiments():
    """The guides' numbers from experiment runs are the committed result files'."""
    import json

    def page(name):
        return " ".join((ROOT / "docs/guide" / name).read_text().split())

    results = ROOT / "experiments/results"
    table = (results / "sweep_cifar10_cpu/table.md").read_text()
    assert table.split("\n\n")[0].strip() in (ROOT / "docs/guide/sweeps.md").read_text()

    tests = json.loads((results / "range_test_cifar10_small.json").read_text())["tests"]
    def by_rule(test):
        return {bound["method"]: bound for bound in tests[test]["bounds"]}

    linear = by_rule("linear")
    text = page("range_test.md")
    assert (f"({linear['paper']['base_lr']:.4f} to {linear['paper']['max_lr']:.3f}; "
            f"`\"paper_peak\"` {linear['paper_peak']['base_lr']:.4f} to "
            f"{linear['paper_peak']['max_lr']:.3f})") in text
    for rule, bound in by_rule("exponential").items():  # two significant digits
        max_lr = np.format_float_positional(bound["max_lr"], precision=2, fractional=False,
                                            trim="k")
        assert f"{max_lr} (`\"{rule}\"`)" in text, rule

    rows = [json.loads(line) for line in
            (results / "caffe_cifar10_cpu/metrics.jsonl").read_text().splitlines()]
    accuracy = {row["step"]: row["test_accuracy"] for row in rows if "test_accuracy" in row}
    text = page("training.md")
    assert (f"rose from {100 * accuracy[250]:.1f}% at iteration 250 to "
            f"{100 * accuracy[1000]:.1f}% at 1,000, {100 * accuracy[2000]:.1f}% at 2,000 and "
            f"{100 * accuracy[3000]:.1f}% at 3,000") in text


def test_the_guide_quotes_the_committed_bounds_benchmark():
    """The range-test guide's tables are the bounds benchmark's own (bounds_validation.md,
    row for row), and the README's and the guide's counts are its summary's."""
    import json

    results = ROOT / "benchmarks/results"
    data = json.loads((results / "bounds_validation.json").read_text())
    table = (results / "bounds_validation.md").read_text()
    guide = (ROOT / "docs/guide/range_test.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) >= 2 * len(data["tasks"])
    for row in rows:
        assert row in guide, row
    edge = data["summary"][data["default"]]
    tasks = len(data["tasks"])
    readme = " ".join((ROOT / "README.md").read_text().split())
    prose = " ".join(guide.split())
    for text in (readme, prose):
        assert f"{edge['hits']} of {tasks} tasks" in text
    for rule in ("valley", "steepest"):
        assert f"{rule} {data['summary'][rule]['hits']} of {tasks}" in prose
    assert (f"within a factor 1.5 over seeds on {edge['stable_over_seeds']} of {tasks} and "
            f"under the perturbation on {edge['stable_under_perturbation']} of {tasks}") in prose
    assert f"valley rule: {data['summary']['valley']['hits']}, torch-lr-finder's steepest: " \
        f"{data['summary']['steepest']['hits']}" in readme
    if edge["stable_over_seeds"] == edge["stable_under_perturbation"] == tasks:
        assert "on every task" in readme
    minutes = sum(t["wall_seconds"] for t in data["tasks"].values()) / 60
    cpu = sum(t["cpu_seconds"] for t in data["tasks"].values()) / 60
    assert f"took {minutes:.0f} minutes of wall time here ({cpu:.0f} CPU-minutes" in prose
    assert (ROOT / "docs/images/bounds_validation.png").stat().st_size > 0
