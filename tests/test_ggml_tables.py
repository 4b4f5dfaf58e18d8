"""autoctx/gguf/ggml_tables.py is generated from the pinned `gguf` package (scripts/gen_ggml_types.py): these fail
when the committed tables and the installed package drift apart (a gguf upgrade, or a hand edit)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import gguf.constants as c

from autoctx.gguf import ggml_tables as t
from autoctx.gguf.ggml_types import type_from_name, type_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gen_ggml_types  # noqa: E402


def test_the_tables_are_what_the_generator_writes_from_the_installed_gguf():
    assert (ROOT / "autoctx" / "gguf" / "ggml_tables.py").read_text() == gen_ggml_types.render(), \
        "run scripts/gen_ggml_types.py (and move the gguf pin in pyproject.toml)"
    assert t.GGUF_PACKAGE_VERSION == version("gguf")


def test_every_type_id_name_and_size_matches_gguf():
    assert {m.name: int(m) for m in t.GGMLType} == {m.name: int(m) for m in c.GGMLQuantizationType}
    assert {m.name: int(m) for m in t.GGUFValueType} == {m.name: int(m) for m in c.GGUFValueType}
    assert t.GGML_QUANT_SIZES == {int(k): tuple(v) for k, v in c.GGML_QUANT_SIZES.items()}
    assert (t.GGUF_MAGIC, t.GGUF_VERSION, t.GGUF_DEFAULT_ALIGNMENT) == \
        (c.GGUF_MAGIC, c.GGUF_VERSION, c.GGUF_DEFAULT_ALIGNMENT) == (0x46554747, 3, 32)
    for m in c.GGMLQuantizationType:
        assert type_name(int(m)) == m.name.lower() and type_from_name(m.name.lower()) == int(m)
    assert type_name(31) == "type31"  # Q4_0_4_4: removed from GGUF files


def test_the_pin_admits_only_the_generating_version():
    text = (ROOT / "pyproject.toml").read_text()
    assert f'"gguf=={t.GGUF_PACKAGE_VERSION}"' in text


def test_the_header_reader_never_imports_gguf_or_numpy():
    code = ("import sys, autoctx.gguf, autoctx.model, autoctx.resolve, autoctx.memory; "
            "bad = [m for m in ('gguf', 'numpy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_check_mode_passes_on_the_committed_file():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_ggml_types.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
