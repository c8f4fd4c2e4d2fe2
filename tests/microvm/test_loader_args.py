"""The host-side loader supervisor builds the command lines its loaders accept."""

from pathlib import Path

import pytest

from plugins.scheduler.sched_ext import LoaderSpec, SupervisedLoader


def test_project_loader_gets_object_and_key_value_parameters() -> None:
    spec = LoaderSpec(Path("/usr/lib/schedcp/scx_loader"), {"slice_us": (100, 100_000)},
                      scheduler=Path("/usr/lib/schedcp/scx/vtime.bpf.o"))
    loader = SupervisedLoader(spec, lambda reason: None)
    assert loader.build_argv({"slice_us": 3000}) == [
        "/usr/lib/schedcp/scx_loader", "/usr/lib/schedcp/scx/vtime.bpf.o", "slice_us=3000"]


def test_external_scx_binary_gets_flags_and_the_allow_list_holds() -> None:
    loader = SupervisedLoader(LoaderSpec(Path("/usr/bin/scx_x"), {"slice-us": (100, 5000)}),
                              lambda reason: None)
    assert loader.build_argv({"slice-us": 200}) == ["/usr/bin/scx_x", "--slice-us", "200"]
    with pytest.raises(ValueError, match="outside"):
        loader.build_argv({"slice-us": 9000})
    with pytest.raises(ValueError, match="not allowed"):
        loader.build_argv({"kconfig": 1})
