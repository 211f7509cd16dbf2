"""The glibc tunable that puts argon2's memory on huge pages is added once, beside an operator's own tunables."""

from __future__ import annotations

from prognet.huge_pages import TUNABLE, enabled, with_huge_pages


def test_the_tunable_is_added_beside_others_and_an_operators_choice_stands() -> None:
    assert with_huge_pages({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": TUNABLE}
    assert with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"] == (
        f"glibc.malloc.arena_max=2:{TUNABLE}"
    )
    chosen = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert with_huge_pages(chosen) == chosen and enabled(chosen)
    assert not enabled({}) and enabled(with_huge_pages({}))


def test_the_dev_stack_starts_its_processes_with_it(tmp_path) -> None:
    from prognet_dev import EmbeddedStack, stack_settings

    assert TUNABLE in EmbeddedStack(stack_settings(tmp_path / "data")).env()["GLIBC_TUNABLES"]
