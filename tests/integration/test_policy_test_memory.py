"""Issue 30, deliverable 5: ``policy test`` holds bounded memory. rego-cpp compiles a copy of
the policy for every ``with`` expression of every module it is given (~12 MB each for the
shipped policy), so the runner used to peak at 1.4-1.7 GB a worker on the shipped tests; the
workers now compile each file in small batches (``_test_slices``), the rest of the file blanked
out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from sidecar.policy._test_slices import WITH_BUDGET, batches
from sidecar.policy.compat import RegoModule
from tests.conftest import REGO

N_TESTS = 40  # one ``with`` expression each: 40 copies of the shipped policy in one bundle
PKG = "data.agentsidecar.authz_test"


def _tests(n: int) -> str:
    rules = [
        f"test_t{i} if {{\n\tauthz.decision.effect == "
        f'"deny" with input.action as {{"kind": "tool", "name": "t{i}"}}\n}}'
        for i in range(n)
    ]
    helper = "test_helper(x) := x + 1\n\ntest_uses_helper if {\n\ttest_helper(1) == 2\n}"
    raw = 'test_raw if {\n\t`\ntest_fake if {\n` != ""\n}'  # a test at column 0 in a string
    twice = "test_twice if {\n\t1 == 1\n}\n\ntest_twice if {\n\t2 == 2\n}"
    head = "package agentsidecar.authz_test\n\nimport rego.v1\n\nimport data.agentsidecar.authz\n\n"
    return head + "\n\n".join([*rules, helper, raw, twice]) + "\n"


def _write(root: Path, n: int) -> Path:
    shutil.copytree(REGO, root, ignore=shutil.ignore_patterns("*_test.rego", "schemas"))
    (root / "agentsidecar" / "authz" / "gen_test.rego").write_text(_tests(n))
    return root


def test_item5_batches_cover_every_test_once_and_keep_positions():
    module = RegoModule("gen_test.rego", _tests(N_TESTS))
    refs = [f"{PKG}.test_t{i}" for i in range(N_TESTS)]
    refs += [f"{PKG}.test_uses_helper", f"{PKG}.test_raw", f"{PKG}.test_twice"]
    found = batches(module, refs)
    assert sorted(r for b in found for r in b.refs) == sorted(refs)
    assert len(found) > 1
    for batch in found:
        text = batch.module.source
        assert len(text) == len(module.source)  # every character, and line, where it was
        assert text.count("\n") == module.source.count("\n")
        assert "test_helper(x) := x + 1" in text  # a helper named test_* is kept
        assert "`\ntest_fake if {\n`" in text or f"{PKG}.test_raw" not in batch.refs
        assert text.count(" with ") <= WITH_BUDGET
        for ref in batch.refs:
            assert f"{ref.rsplit('.', 1)[1]} if {{" in text
        if f"{PKG}.test_twice" in batch.refs:
            assert text.count("test_twice if {") == 2  # both definitions


_RUNNER = """
import resource, sys
import sidecar
from sidecar.policy.testing import run_tests
results = run_tests(sys.argv[1], jobs=1)
assert len(results) == int(sys.argv[2]) and all(r.outcome == "PASS" for r in results), [
    (r.case.name, r.outcome, r.message) for r in results if r.outcome != "PASS"
]
# the largest waited-for child: the test worker (or OPA's compiler process)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

_ONE_BUNDLE = """
import resource, sys
import sidecar
from sidecar.policy._rego import compile_entrypoints, query_entrypoint
from sidecar.policy.source import load_policy_dir
src = load_policy_dir(sys.argv[1], include_tests=True)
refs = [f"data.agentsidecar.authz_test.test_t{i}" for i in range(int(sys.argv[2]))]
program = compile_entrypoints(src.modules, src.data, refs, vet=False)
assert all(query_entrypoint(program, r)[1] is True for r in refs)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kb(script: str, *args: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return int(out.stdout.split()[-1])


def test_item5_policy_test_peaks_lower_than_one_bundle_and_passes_everything(tmp_path):
    root = _write(tmp_path / "policy", N_TESTS)
    batched = _peak_kb(_RUNNER, str(root), str(N_TESTS + 3))  # every test passes, batched
    whole = _peak_kb(_ONE_BUNDLE, str(root), str(N_TESTS))  # the file in one bundle, as before
    assert batched * 2 < whole, (batched, whole)
