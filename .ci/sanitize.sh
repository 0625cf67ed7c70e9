#!/usr/bin/env bash
# Builds the extension with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option FASTXENT_SANITIZE) into its own virtual environment and runs the
# whole test suite under them, from outside the source tree. Any ASan report or
# UB aborts the run. Usage, from a fresh clone:  bash .ci/sanitize.sh [pytest args]
# (.ci/run calls it last, with FASTXENT_REUSE_VENV=1 inside its own venv).
#
# Why the environment looks like this:
# - LD_PRELOAD=libasan.so: the ASan runtime must be the first library loaded, and
#   python itself is not built with ASan; the runtime comes from the compiler that
#   built the extension (-print-file-name), so the two always match.
# - ... and libstdc++.so: python does not link it, so when ASan starts it cannot
#   find the real __cxa_throw for its interceptor, and the first C++ exception
#   thrown by any extension (torch raising a RuntimeError) dies in a CHECK.
# - detect_leaks=0: CPython keeps interned objects and arenas alive until exit on
#   purpose; LeakSanitizer would report those. Leaks in the binding are tested
#   directly instead (tests/test_long_runs.py).
# - halt_on_error / -fno-sanitize-recover=undefined: the first report fails the run.
# - PYTHONMALLOC=malloc: every Python allocation goes through malloc, so ASan sees
#   (and puts red zones around) all of them, not only NumPy's data buffers.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS

cxx="${CXX:-c++}"
libasan="$("$cxx" -print-file-name=libasan.so)"
libstdcxx="$("$cxx" -print-file-name=libstdc++.so)"
for lib in "$libasan" "$libstdcxx"; do
  if [[ ! -e "$lib" ]]; then
    echo "sanitize.sh: $cxx has no $(basename "$lib") ($lib); install the compiler's ASan runtime" >&2
    exit 2
  fi
done

if [[ -n "${FASTXENT_REUSE_VENV:-}" && -n "${VIRTUAL_ENV:-}" ]]; then
  # Called by .ci/run after its own tests: its venv has the test requirements;
  # the sanitized build replaces the release wheel there.
  echo "== reusing $VIRTUAL_ENV"
else
  python3 -m venv "$work/venv"
  # shellcheck disable=SC1091
  . "$work/venv/bin/activate"
  python -m pip install -q --upgrade pip
  python -m pip install -q -r "$repo/requirements-test.txt"
  echo "== deps installed ($((SECONDS - start))s)"
fi

# -O1 -g: every SIMD variant is still compiled and run (the dispatch is at run
# time, the intrinsics are the same), with line numbers in every sanitizer report;
# -O1 compiles the instrumented kernels in about two thirds of -O2's time, and
# compiling was half of this job.
CXX="$cxx" python -m pip install -q "$repo" --no-deps \
  -Ccmake.define.FASTXENT_SANITIZE=ON -Ccmake.build-type=RelWithDebInfo \
  "-Ccmake.define.CMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g" -Cbuild-dir="$work/build"
# Two test processes (pytest-xdist), one per core: the suite is mostly Python.
python -m pip install -q pytest-xdist
echo "== sanitized extension built ($((SECONDS - start))s)"

cd "$work"
export LD_PRELOAD="$libasan $libstdcxx"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONMALLOC=malloc
# The one test that cannot hold under ASan: resident memory staying flat over 10^5
# calls. ASan keeps freed blocks in a quarantine (256 MiB) to catch use-after-free,
# so RSS grows by design. Leaks are still checked here by tracemalloc and refcounts.
deselect=(--deselect "tests/test_long_runs.py::test_rss_stays_flat_over_100k_calls")  # rootdir-relative node id
# Not here, because they run no native code of their own in this process: the type
# check (mypy), and the tests that start their own Python processes (benchmarks,
# examples, the multi-process vocab-parallel groups; the kernels they call run
# here through tests/test_vocab_shards.py, test_jax_adapter.py and the fuzzer).
for t in test_typing.py test_bench_smoke.py test_examples.py test_vocab_parallel_torch.py test_vocab_parallel_jax.py; do
  deselect+=(--ignore "$repo/tests/$t")
done

# Prove the sanitizers are live in this process before trusting a clean run.
so="$(python -c 'import fastxent._core as c; print(c.__file__)')"
needed="$(readelf -d "$so")"  # (not piped into grep -q: with pipefail, SIGPIPE fails the pipe)
[[ $needed == *libasan* ]] || { echo "sanitize.sh: $so is not linked with ASan" >&2; exit 2; }
[[ $needed == *libubsan* ]] || { echo "sanitize.sh: $so is not linked with UBSan" >&2; exit 2; }
python -c 'import fastxent, sys; i = fastxent.backend_info(); print("==", i); sys.exit(i["backend"] != "cpp")'
# --capture=sys: pytest's default fd capture would swallow a sanitizer report
# written to fd 2 by a process that then aborts, leaving only an exit status.
python -m pytest "$repo/tests" -q -p no:cacheprovider -p no:benchmark --capture=sys -n 2 "${deselect[@]}" "$@"
echo "== sanitizer run clean ($((SECONDS - start))s)"
