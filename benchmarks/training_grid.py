"""Run benchmarks/training_step.py over a grid of batch x crop x gradient checkpointing x compile,
each cell in a fresh process with a time limit, and write the figures as a table.

    env/bin/python benchmarks/training_grid.py --size 2b --out grid               # all 24 cells
    env/bin/python benchmarks/training_grid.py --size 2b --cells 8x60:ckpt,8x60:ckpt:compile,1x60:compile \\
        --budget 420 --out grid                                                  # chosen cells, 7 minutes in all
    env/bin/python benchmarks/training_grid.py --size tiny --batches 1 --seconds 1 --compile off   # CPU check

A cell is `BATCHxSECONDS` plus `:ckpt` (gradient checkpointing) and `:compile` (regional compile),
settings of the run (`SETTINGS`: `:cudagraphs` the compiled blocks replayed as CUDA graphs,
`run.cuda_graphs`; `:varied` condition lengths that change from batch to batch as in real data;
`:dropout` the adapter's default dropout; `:nosync` the trainer timed without its per-step
finite-gradient check; `:accum2` the trainer's optimizer stepping every 2 batches), and a variant's
flag to measure one change (benchmarks/variants.py: `:difflayout` diffusers' transposed residual
stream, `:diffnorm` diffusers' RMSNorm, `:diffrope` diffusers' RoPE, `:peftcast` PEFT's input
casts, `:diffckpt` diffusers' checkpointing, `:densewindow` the sliding-window calls with their
dense mask instead of the flash kernel's own window, `:staticcompile` blocks compiled for static shapes,
`:halfckpt` half the blocks checkpointed, `:reentrantckpt` compiled blocks checkpointed
re-entrantly from outside); without `--cells` the grid is every combination of `--batches`,
`--seconds`, `--checkpointing` and `--compile`. Each cell runs in its own process (its own CUDA
context and peak memory), which is stopped with its process group at the cell's time limit, so a
hang or a crash loses only that cell. A cell that runs out of GPU memory is reported as `oom`; one
past its limit as `timeout`; any other failure as `error` with the last line of its log. After
every cell the grid is rewritten to `OUT/grid.json` (every figure, the machine, the commands) and
`OUT/grid.md` (the table); `OUT/cell-*.log` holds each cell's output. With `--budget`, a cell
starts only while at least `--min-cell-seconds` of the budget are left, and its limit is cut to
what is left.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common import SIZES, environment, is_out_of_memory
from variants import VARIANTS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANT_FLAGS = [variant.flag for variant in VARIANTS]
# settings of the run a cell can turn on: its flag, training_step.py's option, the table's note
SETTINGS = {"cudagraphs": ("--cuda-graphs", "CUDA graphs"),
            "varied": ("--varied-conditions", "condition lengths varied"),
            "dropout": ("--adapter-dropout", "adapter dropout"),
            "nosync": ("--no-finite-check", "no finite-gradient sync"),
            "accum2": ("--gradient-accumulation=2", "gradient accumulation 2")}
CELL_FORM = ("BATCHxSECONDS[:ckpt][:compile]" + "".join(f"[:{flag}]" for flag in SETTINGS)
             + "".join(f"[:{flag}]" for flag in VARIANT_FLAGS))
CELL_PATTERN = re.compile(r"^(\d+)x(\d+(?:\.\d+)?)((?::(?:" + "|".join(["ckpt", "compile", *SETTINGS,
                                                                         *VARIANT_FLAGS])
                          + r"))*)$")


@dataclass(frozen=True)
class Cell:
    batch: int
    seconds: float
    checkpointing: bool
    compile: bool
    variants: tuple[str, ...] = ()  # flags of benchmarks/variants.py's VARIANTS, in that order
    settings: tuple[str, ...] = ()  # flags of SETTINGS, in that order

    @property
    def flags(self) -> list[str]:
        return ((["ckpt"] if self.checkpointing else []) + (["compile"] if self.compile else [])
                + list(self.settings) + list(self.variants))

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.seconds:g}" + "".join(f":{flag}" for flag in self.flags)

    @property
    def key(self) -> str:
        return f"b{self.batch}-{self.seconds:g}s" + "".join(f"-{flag}" for flag in self.flags)


def parse_cell(text: str) -> Cell:
    """`8x60:ckpt:compile` -> Cell(8, 60.0, True, True). Raises ValueError on another form."""
    match = CELL_PATTERN.match(text.strip())
    if not match:
        raise ValueError(f"cell {text!r} is not {CELL_FORM}, e.g. 8x60:ckpt:compile")
    flags = match.group(3).split(":")
    return Cell(int(match.group(1)), float(match.group(2)), "ckpt" in flags, "compile" in flags,
                tuple(flag for flag in VARIANT_FLAGS if flag in flags),
                tuple(flag for flag in SETTINGS if flag in flags))


def grid_cells(batches: list[int], seconds: list[float], checkpointing: list[bool], compiles: list[bool]) -> list[Cell]:
    return [Cell(b, s, c, k) for b in batches for s in seconds for c in checkpointing for k in compiles]


def cell_command(cell: Cell, args, json_path: Path) -> list[str]:
    command = [args.python, str(HERE / "training_step.py"), "--size", args.size, "--batch", str(cell.batch),
               "--seconds", f"{cell.seconds:g}", "--steps", str(args.steps), "--rounds", str(args.rounds),
               "--warmup", str(args.warmup), "--json", str(json_path)]
    command += ["--gradient-checkpointing"] if cell.checkpointing else []
    command += ["--compile"] if cell.compile else []
    command += [SETTINGS[flag][0] for flag in cell.settings]
    command += [variant.option for variant in VARIANTS if variant.flag in cell.variants]
    command += ["--bare"] if args.bare else []
    command += ["--no-reference"] if args.no_reference else []
    command += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
    return command


def _last_line(text: str, wanted=None) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and (wanted is None or wanted(line))]
    return lines[-1][:300] if lines else ""


def stop_cell(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a cell's process group: SIGTERM first (training_step.py then prints what torch.compile
    was doing), SIGKILL to what is left of the group once the cell has ended or after `grace`
    seconds. The cell is reaped only after that: until then its pid, the group's id, cannot be
    given to another process, whose group the SIGKILL would hit."""
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not _has_ended(process.pid):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # an ended, unreaped leader keeps the group's id taken
    process.wait()


def _has_ended(pid: int) -> bool:
    """Whether the child `pid` has exited, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def run_cell(command: list[str], log_path: Path, json_path: Path, timeout: float) -> dict:
    """Run one cell's command with its output in `log_path`; its figures (the JSON it wrote, if
    any) with `status` ok | oom | timeout | error, `message`, `exit_code` and `wall_seconds`. At
    the time limit, or when this process is stopped, the cell's whole process group is killed."""
    json_path.unlink(missing_ok=True)
    began = time.monotonic()
    exit_code = None
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            exit_code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if process.poll() is None:  # past its limit, or the grid itself is being stopped
                stop_cell(process)
    text = log_path.read_text(errors="replace")
    result = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if exit_code is None:
        status, message = "timeout", f"no result within {timeout:.0f} s"
    elif result.get("status") in ("ok", "oom"):
        status, message = result["status"], result.get("message", "")
    elif is_out_of_memory(text):
        status, message = "oom", _last_line(text, is_out_of_memory)
    else:
        status, message = "error", _last_line(text) or f"exit status {exit_code}"
    return {**result, "status": status, "message": message, "exit_code": exit_code,
            "wall_seconds": round(time.monotonic() - began, 1), "log": log_path.name}


def _number(value, scale: float = 1.0, digits: int = 1) -> str:
    return f"{value * scale:.{digits}f}" if isinstance(value, (int, float)) else "–"


VARIANT_NOTES = {variant.flag: f" ({variant.note})" for variant in VARIANTS}
SETTING_NOTES = {flag: f" ({note})" for flag, (_, note) in SETTINGS.items()}


def markdown_table(rows: list[dict]) -> str:
    """One line per cell: our trainer's figures, then the reference loop's step time and our speed-up,
    then our warm-up (its steps together, compiling included) and the most GPU memory the cell's
    process reserved (all its loops, CUDA graph pools included: what the peak columns miss). A
    `:cudagraphs` cell in which inductor ran graphs without CUDA graphs says so in its status."""
    lines = ["| batch x crop | ckpt | compile | status | step ms | samples/s | tokens/s | TFLOP/s | MFU % | peak GiB "
             "| reference ms | reference peak GiB | speed-up | warm-up s | reserved GiB |", "|---" * 15 + "|"]
    for row in rows:
        cell, result = row["cell"], row["result"]
        ours, ref = result.get("loops", {}).get("trainer", {}), result.get("loops", {}).get("reference", {})
        status = result["status"] if result["status"] in ("ok", "skipped") else f"**{result['status']}**"
        skips = result.get("compile_report", {}).get("cudagraph_skips")
        if result["status"] == "ok" and skips and "cudagraphs" in cell.get("settings", ()):  # less than it says
            status = f"**ok, {skips} without CUDA graphs**"
        speedup = result.get("speedup_over_reference")
        lines.append(
            f"| {cell['batch']} x {cell['seconds']:g} s{''.join(SETTING_NOTES[s] for s in cell.get('settings', ()))}"
            f"{''.join(VARIANT_NOTES[v] for v in cell.get('variants', ()))} | "
            f"{'on' if cell['checkpointing'] else 'off'} | "
            f"{'on' if cell['compile'] else 'off'} | {status} | {_number(ours.get('seconds_per_step'), 1000)} | "
            f"{_number(ours.get('samples_per_second'), digits=2)} | {_number(ours.get('tokens_per_second'), digits=0)} "
            f"| {_number(ours.get('tflops'))} | {_number(ours.get('mfu'), 100)} | "
            f"{_number(ours.get('peak_memory_gib'))} | {_number(ref.get('seconds_per_step'), 1000)} | "
            f"{_number(ref.get('peak_memory_gib'))} | "
            f"{_number(speedup, digits=2) + 'x' if speedup else '–'} | {_number(ours.get('warmup_seconds'))} | "
            f"{_number(result.get('reserved_gib'))} |")
    return "\n".join(lines)


def write_results(out: Path, header: dict, rows: list[dict]) -> None:
    """grid.json and grid.md, each written whole and renamed into place."""
    env = header["environment"]
    device = next((r["result"]["device"] for r in rows if r["result"].get("device")), ", ".join(env["gpus"]) or "cpu")
    notes = [r for r in rows if r["result"]["status"] not in ("ok", "skipped")]
    text = (f"# Training-step grid, {env['date']}\n\n{device}; driver {env['driver'] or 'n/a'}; torch {env['torch']} "
            f"(CUDA {env['torch_cuda'] or 'n/a'}); model {header['size']}\n\n`{header['command']}`\n\n"
            + markdown_table(rows) + "\n"
            + "".join(f"\n- {r['cell']['label']}: {r['result']['status']}: {r['result']['message']}" for r in notes)
            + ("\n" if notes else ""))
    for name, content in (("grid.json", json.dumps({**header, "cells": rows}, indent=2) + "\n"), ("grid.md", text)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content)
        tmp.replace(out / name)


def _stop(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    on_off = {"off": False, "on": True}
    parser.add_argument("--size", choices=sorted(SIZES), default="2b")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--seconds", default="30,60", help="crop lengths")
    parser.add_argument("--checkpointing", default="off,on")
    parser.add_argument("--compile", default="off,on")
    parser.add_argument("--cells", default="", help="explicit cells, e.g. 8x60:ckpt,1x60:compile (overrides the grid)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bare", action="store_true", help="also time the bare PyTorch loop")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="limit of a cell without compile (s)")
    parser.add_argument("--compile-timeout", type=float, default=600.0, help="limit of a cell with compile (s)")
    parser.add_argument("--budget", type=float, default=0.0, help="seconds for the whole grid (0: no limit)")
    parser.add_argument("--min-cell-seconds", type=float, default=45.0)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--out", type=Path, default=Path("grid-results"))
    args = parser.parse_args(argv)
    try:
        cells = [parse_cell(c) for c in args.cells.split(",") if c.strip()] or grid_cells(
            [int(b) for b in args.batches.split(",")], [float(s) for s in args.seconds.split(",")],
            [on_off[c.strip()] for c in args.checkpointing.split(",")],
            [on_off[c.strip()] for c in args.compile.split(",")])
    except (ValueError, KeyError) as error:
        parser.error(f"bad cell list: {error}")
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _stop)  # `timeout` stops the grid: kill the running cell, keep the rest
    header = {"environment": environment(), "size": args.size, "command": " ".join([Path(sys.argv[0]).name, *(
        argv if argv is not None else sys.argv[1:])])}
    rows = [{"cell": {**asdict(cell), "label": cell.label}, "result": {"status": "skipped", "message": "not run yet"}}
            for cell in cells]
    began = time.monotonic()
    try:
        for cell, row in zip(cells, rows, strict=True):
            limit = args.compile_timeout if cell.compile else args.timeout
            if args.budget:
                left = args.budget - (time.monotonic() - began)
                if left < args.min_cell_seconds:
                    row["result"]["message"] = f"budget of {args.budget:.0f} s spent"
                    continue
                limit = min(limit, left)
            json_path = args.out / f"cell-{cell.key}.json"
            command = cell_command(cell, args, json_path)
            print(f"== {cell.label} (limit {limit:.0f} s): {' '.join(command)}", flush=True)
            row["command"] = command
            row["result"] = {"status": "timeout", "message": "the grid was stopped while this cell ran"}
            row["result"] = run_cell(command, args.out / f"cell-{cell.key}.log", json_path, limit)
            print(markdown_table([row]).splitlines()[-1], f"({row['result']['wall_seconds']} s)", flush=True)
            if row["result"]["message"]:
                print(f"   {row['result']['status']}: {row['result']['message']}", flush=True)
            write_results(args.out, header, rows)
    except KeyboardInterrupt as stop:
        print(f"grid stopped ({stop}); the cells done so far are in {args.out}", flush=True)
    write_results(args.out, header, rows)
    print(markdown_table(rows))
    failed = [r for r in rows if r["result"]["status"] in ("error", "timeout")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
