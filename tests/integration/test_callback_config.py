"""The callback service follows its controller: the address is re-read on every reconnect."""

from __future__ import annotations

import pytest

from support.autoreg_lab import AutoregLab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]


def test_callback_follows_a_changed_controller_address(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    node = alab.node("nc1", "walrus")
    alab.authorize_all()
    clc.start_callback_sshd()
    alab.tunnel(node, clc)
    # The controller "moved": the node's configuration still names an address where
    # nothing answers (an unused address of the lab's own /24).
    moved_from = clc.host.ip.rsplit(".", 1)[0] + ".250"
    node.extra["callback"]["controller"] = moved_from
    proc = node.start_callback(wait=False)
    proc.wait_for_log(rf"calling back to {moved_from}", 30)
    # The admin (or a new medium) corrects the address; the running service picks it
    # up on its next attempt, without a restart.
    node.extra["callback"]["controller"] = clc.host.ip
    node.write_config()
    proc.wait_for_log(rf"calling back to {clc.host.ip}", 30)
    proc.wait_for_log(r"tunnel up", 30)
    assert proc.alive()
