"""Coverage of the pinned llama.cpp (issue 13): every architecture name it knows is modelled, refused with one line
as not modelled yet, or named out of scope; the committed list follows the pinned source and the README's table is
the generated one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoctx.errors import UnsupportedModel
from autoctx.gguf import GGUFFile
from autoctx.model import ARCH_RULES, LLAMA_ARCHS, OUT_OF_SCOPE, arch_status, spec_from_gguf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gen_arch_table  # noqa: E402


def test_committed_list_is_the_pinned_builds():
    pinned = gen_arch_table.pinned_arch_names()
    if pinned is None:  # the build script extracts the sdist into the cache; CI builds it before the tests
        pytest.skip(f"no cached llama.cpp source at {gen_arch_table.arch_source()}")
    missing = [a for a in pinned if a not in LLAMA_ARCHS]
    assert not missing, f"the pinned llama.cpp gained {missing}: add them to autoctx.model.LLAMA_ARCHS (and a rule " \
                        "or a refusal), then scripts/gen_arch_table.py --write"
    assert pinned == list(LLAMA_ARCHS)


def test_the_parser_reads_llama_arch_cpp(tmp_path):
    src = tmp_path / "llama-arch.cpp"
    src.write_text('static const std::map<llm_arch, const char *> LLM_ARCH_NAMES = {\n'
                   '    { LLM_ARCH_LLAMA,            "llama"            },\n'
                   '    { LLM_ARCH_NEW_ONE,          "new-one"          },\n'
                   '    { LLM_ARCH_UNKNOWN,          "(unknown)"        },\n};\n')
    assert gen_arch_table.pinned_arch_names(src) == ["llama", "new-one"]
    assert gen_arch_table.pinned_arch_names(tmp_path / "absent.cpp") is None


def test_every_architecture_has_a_status():
    statuses = {a: arch_status(a)[0] for a in LLAMA_ARCHS}
    assert set(statuses.values()) == {"modelled", "not modelled", "out of scope"}
    assert set(ARCH_RULES) <= set(LLAMA_ARCHS) and set(OUT_OF_SCOPE) <= set(LLAMA_ARCHS)
    assert not set(ARCH_RULES) & set(OUT_OF_SCOPE)
    assert statuses["lfm2"] == statuses["lfm2moe"] == "modelled"
    assert statuses["deepseek32"] == statuses["kimi-linear"] == "not modelled"
    assert statuses["bert"] == statuses["qwen3tts"] == statuses["llada"] == "out of scope"
    assert arch_status("frobnet")[0] == "unknown"


def _header(arch: str) -> GGUFFile:
    md = {"general.architecture": arch, f"{arch}.block_count": 2, f"{arch}.context_length": 4096,
          f"{arch}.embedding_length": 256, f"{arch}.attention.head_count": 4}
    return GGUFFile(["m.gguf"], 3, "<", md, [], 32, [0], [0])


@pytest.mark.parametrize("arch", [a for a in LLAMA_ARCHS if a not in ARCH_RULES])
def test_each_unmodelled_architecture_is_one_line(arch):
    with pytest.raises(UnsupportedModel) as e:
        spec_from_gguf(_header(arch))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"m.gguf: architecture '{arch}' is ")
    if arch in OUT_OF_SCOPE:
        assert msg == f"m.gguf: architecture '{arch}' is out of scope: {OUT_OF_SCOPE[arch]}; autoctx plans decoder " \
                      "text generation"
    else:
        assert msg == f"m.gguf: architecture '{arch}' is not modelled yet"


def test_plan_refuses_an_unmodelled_architecture_in_one_line(tmp_path):
    from tests.shapes_writer import write_bare_header

    path = write_bare_header(tmp_path / "dsa.gguf", "deepseek32", 4096)
    r = subprocess.run([sys.executable, "-m", "autoctx.cli", "plan", str(path), "--device", "cpu"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1].endswith("architecture 'deepseek32' is not modelled yet")


def test_readme_table_is_generated():
    text = (ROOT / "README.md").read_text()
    assert gen_arch_table.BEGIN in text and gen_arch_table.END in text
    section = text.split(gen_arch_table.BEGIN, 1)[1].split(gen_arch_table.END, 1)[0]
    assert section == "\n" + gen_arch_table.table(list(LLAMA_ARCHS)), "run scripts/gen_arch_table.py --write"
    for arch in LLAMA_ARCHS:
        assert f"| `{arch}` |" in section
