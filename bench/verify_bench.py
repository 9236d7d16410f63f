"""Verification throughput, each row as a ratio to a tight C loop over the same libsodium function.

Run: ``python bench/verify_bench.py`` (``--quick`` for a smoke run, ``--codes N``, ``--repeats R``).

The baseline is ``bench/c_loop.c``, compiled here with ``cc`` and dlopen()ing PyNaCl's bundled libsodium, the
object both verifiers call; without a compiler it falls back to ``engine._verify.verify_loop`` (the same loop
inside the extension). Every figure is the median of ``--repeats`` runs in this one process, so the ratios
compare like with like on whatever machine this runs on; the rows are measured interleaved (one run of each
row per round), so load from other processes spreads over all rows instead of skewing one of them. The
load average is printed before and after: on a busy machine the 2-thread row says little.

Targets (from the design): compiled 1 thread >= 0.95 of the C loop, 2 threads >= 1.7, a cache hit >= 20x a
cold verify, parse + lookup <= 3 us per code.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nacl._sodium
from nacl.signing import SigningKey, VerifyKey

from engine import verify as verify_mod
from engine.cli.info import cpu_model
from engine.codes.payload import DOMAIN, Person, key_id, mint, parse
from engine.codes.trust import TrustedKey, TrustList, TrustTable
from engine.verify.contract import CodeBatch
from engine.verify.reference import PyVerifier

NOW = 1_767_225_600
DAY = 86_400
HERE = Path(__file__).resolve().parent


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process, all threads)


def seconds(fn: Callable[[], object], inner: int = 1) -> Timing:
    """Wall and CPU time of one call of ``fn`` (the mean of ``inner`` back-to-back calls, for very short ones).

    CPU time is what a row costs regardless of other processes competing for the cores; wall time is what
    the 2-thread row needs to show a speed-up. On a quiet machine the two agree for single-threaded rows.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner, (time.process_time() - c0) / inner


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def workload(n: int) -> tuple[TrustTable, bytes, list[bytes], list[bytes], SigningKey]:
    """``n`` distinct genuine codes, and ``n`` well-formed codes from a key the trust list does not hold."""
    key = SigningKey(hashlib.sha256(b"verify_bench:issuer").digest())
    stranger = SigningKey(hashlib.sha256(b"verify_bench:stranger").digest())
    pk = bytes(key.verify_key)
    table = TrustList.build([TrustedKey(key_id(pk), "bench", pk, NOW - 400 * DAY, NOW + 400 * DAY)]).table()

    def person(k: int) -> Person:
        return Person(f"******{k:06d}", "NGUYEN VAN AN", "1990-01-**", f"PCC{k:011d}")

    genuine = [mint(person(k), key, iat=NOW - DAY, exp=NOW + 364 * DAY).encode() for k in range(n)]
    unknown = [mint(person(k), stranger, iat=NOW - DAY, exp=NOW + 364 * DAY).encode() for k in range(n)]
    return table, hashlib.sha256(b"verify_bench:secret").digest(), genuine, unknown, key


def libpython() -> list[str]:
    """libpython's path when Python is built shared: PyNaCl's extension module needs its symbols resolved."""
    name, libdir = sysconfig.get_config_var("INSTSONAME"), sysconfig.get_config_var("LIBDIR")
    path = Path(libdir or "", name or "")
    return [str(path)] if name and path.is_file() else []


def c_loop(sig: bytes, msg: bytes, pk: bytes, iterations: int, tmp: Path) -> tuple[Callable[[], Timing], str]:
    """A function timing one run of the C baseline (``iterations`` verifies), and its description."""
    exe = tmp / "c_loop"
    built = subprocess.run(
        ["cc", "-O2", "-o", str(exe), str(HERE / "c_loop.c"), "-ldl"], capture_output=True, text=True
    )
    cmd = [str(exe), nacl._sodium.__file__, sig.hex(), msg.hex(), pk.hex(), str(iterations), *libpython()]

    def run_c() -> Timing:
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        verified, wall, cpu = done.stdout.split()
        assert int(verified) == iterations, "the baseline's signature must verify"
        return float(wall), float(cpu)

    why = built.stderr.strip()[:80]
    if built.returncode == 0:
        try:
            run_c()
            return run_c, "bench/c_loop.c (cc -O2, dlopen of nacl/_sodium.abi3.so)"
        except subprocess.CalledProcessError as exc:
            why = exc.stderr.strip()[:80]
    from engine._verify import verify_loop

    return (
        lambda: seconds(lambda: verify_loop(sig, msg, pk, iterations)),
        f"engine._verify.verify_loop (bench/c_loop.c unusable: {why})",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small batches, 3 rounds: a smoke run")
    ap.add_argument("--codes", type=int, default=None, help="codes per batch (default 2000, quick 300)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds, the median is reported (default 7)")
    args = ap.parse_args(argv)
    n = args.codes or (300 if args.quick else 2000)
    repeats = args.repeats or (3 if args.quick else 7)

    try:
        from engine._verify import CVerifier
    except ImportError:
        CVerifier = None

    print(f"CPU        : {cpu_model()}")
    print(f"cores      : {os.cpu_count()}")
    print(f"Python     : {platform.python_version()} ({platform.python_implementation()})")
    print(
        f"extension  : {'on' if CVerifier is not None else 'off'} (engine.verify selects {verify_mod.implementation()})"
    )
    print(f"batch      : {n} distinct codes, median of {repeats} interleaved rounds")
    print(f"load avg   : {load_average()} (before)")

    table, secret, genuine, unknown, key = workload(n)
    p = parse(genuine[0])
    msg, sig, pk = p.message(genuine[0]), p.signature, bytes(key.verify_key)
    assert msg.startswith(DOMAIN)
    vk = VerifyKey(pk)
    pairs = [(parse(c).message(c), parse(c).signature) for c in genuine]
    batch, unknown_batch = CodeBatch.from_codes(genuine), CodeBatch.from_codes(unknown)
    py = PyVerifier(table, secret, cache_size=0)

    with tempfile.TemporaryDirectory() as tmp:
        run_c, baseline = c_loop(sig, msg, pk, n, Path(tmp))
        # name -> function timing one batch of n
        rows: dict[str, Callable[[], Timing]] = {
            "C loop: crypto_sign_verify_detached": run_c,
            "PyNaCl VerifyKey.verify per call": lambda: seconds(lambda: [vk.verify(m, s) for m, s in pairs]),
            "PyVerifier batch (reference)": lambda: seconds(lambda: py.verify_batch(batch, NOW)),
        }
        parse_rows = {"PyVerifier": lambda: seconds(lambda: py.verify_batch(unknown_batch, NOW))}
        if CVerifier is not None:
            for threads in (1, 2):
                cv = CVerifier(table, secret, cache_size=0, threads=threads)
                assert (cv.verify_batch(batch, NOW).verdict == 0).all(), "every benchmark code must verify"
                label = f"CVerifier, {threads} thread{'s' if threads > 1 else ''}, cold"
                rows[label] = lambda cv=cv: seconds(lambda: cv.verify_batch(batch, NOW))
            cached = CVerifier(table, secret)
            cached.verify_batch(batch, NOW)  # warm: every later lookup hits
            rows["CVerifier, cache hits (all repeats)"] = lambda: seconds(lambda: cached.verify_batch(batch, NOW), 20)
            cvu = CVerifier(table, secret)
            parse_rows["CVerifier"] = lambda: seconds(lambda: cvu.verify_batch(unknown_batch, NOW), 20)
        samples: dict[str, list[Timing]] = {name: [] for name in [*rows, *parse_rows]}
        for _ in range(repeats):
            for name, fn in [*rows.items(), *parse_rows.items()]:
                samples[name].append(fn())
    if CVerifier is not None:
        assert cached.cache_hits == cached.cache_lookups - n, "the cache-hit row must be all hits"

    def med(name: str, k: int) -> float:
        return statistics.median(t[k] for t in samples[name])

    rate = {name: n / med(name, 0) for name in rows}
    cpu_us = {name: med(name, 1) / n * 1e6 for name in rows}
    c_name = "C loop: crypto_sign_verify_detached"
    c_rate = rate[c_name]
    cold = rate.get("CVerifier, 1 thread, cold")
    print(f"load avg   : {load_average()} (after)")
    print(f"baseline   : {baseline}\n")
    print(f"{'path':<40} {'verifies/s':>11} {'x C loop':>9} {'CPU us/op':>10} {'CPU x C':>8}  note")
    print("-" * 96)
    for name in rows:
        note = f"{rate[name] / cold:.0f}x a cold verify" if "cache" in name and cold else ""
        cpu_ratio = cpu_us[c_name] / cpu_us[name] if cpu_us[name] else float("nan")
        print(
            f"{name:<40} {rate[name]:>11,.0f} {rate[name] / c_rate:>9.3f} "
            f"{cpu_us[name]:>10.2f} {cpu_ratio:>8.3f}  {note}"
        )
    print()
    for name in parse_rows:
        print(
            f"parse + lookup per code, {name} (unknown kid: parses, never verifies): "
            f"{med(name, 0) / n * 1e6:.2f} us wall, {med(name, 1) / n * 1e6:.2f} us CPU"
        )
    print("\ntargets: CVerifier 1 thread >= 0.95 x C loop, 2 threads >= 1.7, cache hit >= 20x cold, parse <= 3 us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
