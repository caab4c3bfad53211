"""The fuzzing campaign at CI size: every entry point, every case isolated, zero defects allowed.

``tests/robustness/campaign.py`` is the campaign (its docstring has the long-run command); this runs it with
``LATTE_RS_FUZZ_CASES`` cases per target (default 120, a few seconds per target on two cores, about 20 for the
command line's, which trains a tiny model when its config is valid; ``limits`` runs a quarter of them, each case a
fresh Python process) and fails on any signal, panic, hang, unclear
exception or silent non-finite result, listing each with the arguments that caused it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import campaign  # noqa: E402

pytest.importorskip("hypothesis")

CASES = int(os.environ.get("LATTE_RS_FUZZ_CASES", "120"))
# A `limits` case starts its own Python process (the limit is per process): a quarter of the cases keeps it ~15 s.
SHARE = {"limits": 4}


@pytest.mark.parametrize("target", list(campaign.TARGETS))
def test_campaign(target):
    cases = max(1, CASES // SHARE.get(target, 1))
    records = campaign.run_target(target, cases, seed=0, timeout=120.0)
    assert len(records) >= cases // 2, f"{target}: only {len(records)} cases ran"
    defects = [r for r in records if r["outcome"] in campaign.DEFECTS]
    assert not defects, "\n".join(f"#{r['i']} {r['outcome']}: {r['detail']} [{r['args']}]" for r in defects)
    # The campaign must reach the code, not only its argument checks.
    if target not in ("config_json", "i3d_preprocess"):
        assert any(r["outcome"] == "ok" for r in records), f"{target}: no case got past the checks"


def test_the_harness_names_a_crash(tmp_path):
    """A target that kills its process is reported as a crash with its arguments, and the campaign goes on.

    (A restarted worker begins with hypothesis' simplest case, here 0, which does not crash.)"""

    script = tmp_path / "crashing_campaign.py"
    source = Path(campaign.__file__).read_text()
    crash_target = (
        "def t_crash(data, ctx):\n"
        "    st = ctx['st'][0]\n"
        "    if data.draw(st.integers(0, 3)) == 2:\n"
        "        os.abort()\n"
        "    return []\n\n\n"
    )
    head = "TARGETS: dict[str, Callable[[Any, dict], list]] = {"
    source = source.replace(head, crash_target + head + '\n    "crash": t_crash,')
    script.write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        import crashing_campaign

        records = crashing_campaign.run_target("crash", 12, seed=0, timeout=30.0)
    finally:
        sys.path.remove(str(tmp_path))
    crashes = [r for r in records if r["outcome"] == "crash"]
    assert crashes and all("exit status -6" in r["detail"] and r["args"] == "2" for r in crashes)
    assert len(records) == 12 and any(r["outcome"] == "ok" for r in records)
