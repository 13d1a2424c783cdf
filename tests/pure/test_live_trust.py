"""What the live commands print of a name a user wrote: nothing a terminal would obey."""

import pytest

from emulator.tools import live

pytestmark = pytest.mark.timeout(10)


def test_names_are_shown_without_what_a_terminal_would_obey():
    assert live.shown("a\x1b[2Jb c\n") == "a?[2Jb?c?"
    assert live.shown("") == "?" and live.shown("bystander") == "bystander"
