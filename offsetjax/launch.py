"""Run one multi-host JAX program as several local CPU processes, over loopback.

What a TPU slice or a SLURM job does across machines, on one machine: ``N`` processes, a
coordinator on a free loopback port, each process told its id (the environment read by
:func:`offsetjax.parallel.initialize_distributed`), gloo for the collectives. Used by the
multi-process tests, and by users who want to check a multi-host run before paying for one:

    python -m offsetjax.launch --processes 2 -- python -m experiments.quickstart --workdir /tmp/q

A process that fails brings the run down with a message naming it; nothing hangs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

__all__ = ["LaunchError", "free_port", "launch_local", "local_process_env"]


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def local_process_env(process_id: int, num_processes: int, port: int, devices_per_process: int = 1) -> dict:
    """Environment variables that make one of ``num_processes`` local CPU processes of a run."""
    env = {
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": str(num_processes),
        "JAX_PROCESS_ID": str(process_id),
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
    }
    if devices_per_process > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
    return env


class LaunchError(RuntimeError):
    """A local multi-process run failed: which processes, with which exit status, and why."""


def launch_local(
    command: list[str],
    num_processes: int,
    *,
    devices_per_process: int = 1,
    timeout_s: float = 600,
    grace_s: float = 10,
    env: dict | None = None,
    cwd: str | os.PathLike | None = None,
) -> list[subprocess.CompletedProcess]:
    """Run ``command`` as ``num_processes`` local processes of one multi-host CPU run.

    Each process gets :func:`local_process_env` (loopback coordinator on a free port, its
    process id, gloo collectives); the command calls :func:`initialize_distributed`. Waits for
    all. When one fails, the others (which would wait for it in a collective forever) get
    ``grace_s`` seconds and are then killed; past ``timeout_s`` all are killed.

    Returns: the finished processes (stdout and stderr as text), in process order.

    Raises:
      LaunchError: a process failed or the run timed out, naming each process's status and the
        last lines of its stderr.
    """
    port = free_port()
    processes = []
    for process_id in range(num_processes):
        child_env = {
            **os.environ,
            **(env or {}),
            **local_process_env(process_id, num_processes, port, devices_per_process),
        }
        processes.append(
            subprocess.Popen(command, env=child_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs: list = [None] * num_processes
    threads = [threading.Thread(target=_collect, args=(p, outputs, i), daemon=True) for i, p in enumerate(processes)]
    for thread in threads:
        thread.start()
    began, failed_at, reason = time.monotonic(), None, None
    while any(p.poll() is None for p in processes):
        now = time.monotonic()
        if failed_at is None and any(p.poll() not in (None, 0) for p in processes):
            failed_at = now
        if failed_at is not None and now - failed_at > grace_s:
            reason = f"a process failed; the others were killed after {grace_s:g} s"
            break
        if now - began > timeout_s:
            reason = f"timed out after {timeout_s:g} s"
            break
        time.sleep(0.05)
    for process in processes:
        if process.poll() is None:
            process.kill()
    for thread in threads:
        thread.join()
    results = [
        subprocess.CompletedProcess(command, p.returncode, *(outputs[i] or ("", ""))) for i, p in enumerate(processes)
    ]
    if reason or any(r.returncode for r in results):
        report = "; ".join(
            f"process {i}: exit {r.returncode}" + (f" ({_tail(r.stderr)})" if r.returncode else "")
            for i, r in enumerate(results)
        )
        raise LaunchError(f"{' '.join(command)}: {reason or 'a process failed'}: {report}")
    return results


def _collect(process: subprocess.Popen, outputs: list, index: int) -> None:
    outputs[index] = process.communicate()


def _tail(text: str, lines: int = 3) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "no output"


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m offsetjax.launch",
        description="Run a command as N local CPU processes of one multi-host run (loopback coordinator).",
    )
    parser.add_argument("--processes", type=int, default=2, help="number of processes")
    parser.add_argument("--devices-per-process", type=int, default=1, help="simulated CPU devices per process")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before every process is killed")
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- then the command, e.g. python -m experiments.quickstart"
    )
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    try:
        results = launch_local(
            command, args.processes, devices_per_process=args.devices_per_process, timeout_s=args.timeout
        )
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for index, result in enumerate(results):
        print(f"--- process {index} ---\n{result.stdout}", end="")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
